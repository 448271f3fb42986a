"""The model catalogue: pixel sizes and the width x height mapping."""

from __future__ import annotations

import pytest

from imagegen_server.models import DEFAULT_MODEL, find_model


def test_default_model_is_a_ga_gemini_3_image_model() -> None:
    spec = find_model(DEFAULT_MODEL)
    assert spec is not None and spec.name == "gemini-3.1-flash-image"
    assert spec.requires_thought_signatures


@pytest.mark.parametrize(
    ("model", "ratio", "size", "pixels"),
    [
        ("gemini-3.1-flash-image", "16:9", "2K", (2752, 1536)),
        ("gemini-3.1-flash-image", "16:9", "4K", (5504, 3072)),
        ("gemini-3.1-flash-image", "1:1", "512", (512, 512)),
        ("gemini-3.1-flash-image", "1:4", "1K", (512, 2048)),
        ("gemini-3-pro-image", "2:3", "1K", (848, 1264)),
        ("gemini-2.5-flash-image", "21:9", "", (1536, 672)),
    ],
)
def test_pixel_sizes_match_gemini_tables(model: str, ratio: str, size: str, pixels: tuple[int, int]) -> None:
    spec = find_model(model)
    assert spec is not None
    assert spec.pixel_size(ratio, size) == pixels


@pytest.mark.parametrize(
    ("width", "height", "expected"),
    [
        (1024, 1024, ("1:1", "1K")),
        (1920, 1080, ("16:9", "2K")),
        (1376, 768, ("16:9", "1K")),
        (500, 500, ("1:1", "512")),
        (768, 1376, ("9:16", "1K")),
        (8000, 8000, ("1:1", "4K")),
    ],
)
def test_nearest_ratio_and_tier(width: int, height: int, expected: tuple[str, str]) -> None:
    spec = find_model("gemini-3.1-flash-image")
    assert spec is not None
    assert spec.nearest(width, height) == expected


def test_preview_aliases_and_prefixes_resolve() -> None:
    spec = find_model("models/gemini-3-pro-image-preview")
    assert spec is not None and spec.name == "gemini-3-pro-image"
    assert find_model("gemini-2.0-flash-exp") is None
