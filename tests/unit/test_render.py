"""The emulator's images: realistic (Gemini-sized) and small profiles, rendered directly."""

from __future__ import annotations

import io
import random
import zlib
from typing import Any

import pytest
from PIL import Image

from imagegen_server.emulator import Emulator
from imagegen_server.emulator.render import (
    IMAGE_PROFILE_ENV,
    Renderer,
    RenderKey,
    adler32_combine,
    resolve_image_profile,
)
from imagegen_server.models import find_model

MB = 1_000_000


def key(size: str, ratio: str = "1:1", *, model: str = "gemini-3-pro-image", seed: int = 7, **extra: Any) -> RenderKey:
    spec = find_model(model)
    assert spec is not None
    width, height = spec.pixel_size(ratio, size)
    return RenderKey(model, "a lighthouse at dusk", seed, ratio, size, width, height, **extra)


def decoded(png: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(png))
    image.load()  # decode every pixel: checks the deflate stream, Adler-32 and CRCs
    return image


def test_adler32_combine_matches_zlib() -> None:
    rng = random.Random(1)
    for first_len, second_len in ((0, 0), (0, 5), (1000, 1), (70_000, 123_457)):
        first, second = rng.randbytes(first_len), rng.randbytes(second_len)
        combined = adler32_combine(zlib.adler32(first), zlib.adler32(second), len(second))
        assert combined == zlib.adler32(first + second)


@pytest.mark.parametrize(
    ("size", "ratio", "low", "high"),
    [
        ("1K", "21:9", 1.2 * MB, 2 * MB),
        ("2K", "1:1", 5 * MB, 8 * MB),
    ],
)
def test_realistic_images_are_as_large_as_geminis(size: str, ratio: str, low: float, high: float) -> None:
    wanted = key(size, ratio)
    png = Renderer("realistic").render_sync(wanted)
    assert low <= len(png) <= high
    image = decoded(png)
    assert (image.format, image.mode, image.size) == ("PNG", "RGB", (wanted.width, wanted.height))


def test_realistic_images_are_deterministic_and_differ_by_input() -> None:
    renderer = Renderer("realistic")
    first = renderer.render_sync(key("1K"))
    # A second emulator draws the same bands, so the same key gives the same bytes anywhere.
    assert Renderer("realistic").render_sync(key("1K")) == first
    assert renderer.render_sync(key("1K", seed=8)) != first
    assert renderer.render_sync(key("1K", image_digests=("ab",))) != first
    draft = renderer.render_sync(key("1K", draft=1))
    assert draft != first and decoded(draft).size == (512, 512)


@pytest.mark.parametrize(
    ("model", "size", "ratio"),
    [
        ("gemini-2.5-flash-image", "", "21:9"),
        ("gemini-3.1-flash-image", "512", "1:1"),
        ("gemini-3.1-flash-image", "1K", "1:8"),
    ],
)
def test_realistic_odd_shapes_decode(model: str, size: str, ratio: str) -> None:
    wanted = key(size, ratio, model=model)
    assert decoded(Renderer("realistic").render_sync(wanted)).size == (wanted.width, wanted.height)


def test_small_profile_stays_small() -> None:
    png = Renderer("small").render_sync(key("2K"))
    assert len(png) < MB / 4 and decoded(png).size == (2048, 2048)


def test_profile_comes_from_the_argument_then_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(IMAGE_PROFILE_ENV, raising=False)
    assert resolve_image_profile() == "realistic"
    assert resolve_image_profile("small") == "small"
    monkeypatch.setenv(IMAGE_PROFILE_ENV, "small")
    assert resolve_image_profile() == "small"
    assert resolve_image_profile("realistic") == "realistic"
    assert Emulator().image_profile == "small"
    with pytest.raises(ValueError, match="bogus"):
        Emulator(image_profile="bogus")


async def test_render_caches_recent_images_within_its_byte_budget() -> None:
    renderer = Renderer("realistic", cache_bytes=4 * MB)
    first = await renderer.render(key("1K"))
    assert await renderer.render(key("1K")) is first
    await renderer.render(key("1K", seed=8))
    await renderer.render(key("1K", seed=9))  # over budget: the oldest goes
    assert await renderer.render(key("1K")) is not first
    assert await renderer.render(key("2K")) is not await renderer.render(key("2K"))  # larger than the budget
