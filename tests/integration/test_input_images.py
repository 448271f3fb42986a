"""Input images are verified before any upstream call: real format, bounded pixel count, sound structure."""

from __future__ import annotations

import io
import random
import struct
import time
import zlib

import grpc
import pytest
from PIL import Image

from imagegen.v1 import image_generation_service_pb2 as pb
from imagegen.v1 import image_generation_service_pb2_grpc as pb_grpc
from imagegen.v1 import image_pb2
from imagegen_server.emulator import Emulator
from imagegen_server.imagetypes import verify_image
from imagegen_server.validation import MAX_INPUT_PIXELS
from tests.integration.status_helpers import details_of

Stub = pb_grpc.ImageGenerationServiceStub


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_declaring(width: int, height: int, *, extra: bytes = b"") -> bytes:
    """A structurally valid PNG (good CRCs, IEND) whose header declares ``width`` x ``height``."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + extra + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def real_image(fmt: str = "PNG", size: tuple[int, int] = (64, 64)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 80, 40)).save(out, fmt)
    return out.getvalue()


def corrupt_png() -> bytes:
    data = bytearray(real_image())
    idat = data.index(b"IDAT")
    data[idat + 6] ^= 0xFF  # a byte of compressed pixels: the chunk's CRC no longer matches
    return bytes(data)


def text_bomb_png() -> bytes:
    """64x64, but a zTXt chunk inflating to 64 MB (Pillow's text limit is 1 MB)."""
    ztxt = b"Comment\x00\x00" + zlib.compress(b"\x00" * (64 << 20), 9)
    return png_declaring(64, 64, extra=_chunk(b"zTXt", ztxt))


def jpeg_declaring(width: int, height: int) -> bytes:
    data = bytearray(real_image("JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


HOSTILE = {
    "corrupt-png": (corrupt_png, "PNG is corrupt"),
    "truncated-png": (lambda: real_image()[:-40], "PNG is truncated"),
    "png-20000x20000": (
        lambda: png_declaring(20000, 20000),
        "PNG declares 20000x20000 pixels, more than 50 megapixels",
    ),
    "png-2^32-1-pixels": (lambda: png_declaring(65535, 65537), "PNG declares 65535x65537 pixels, more than 50"),
    "png-text-bomb": (text_bomb_png, "PNG is corrupt"),
    "png-bad-ihdr-crc": (
        lambda: png_declaring(64, 64)[:29] + b"\x00\x00\x00\x00" + png_declaring(64, 64)[33:],
        "checksum",
    ),
    "jpeg-30000x30000": (lambda: jpeg_declaring(30000, 30000), "JPEG declares 30000x30000 pixels"),
    "webp-truncated": (lambda: real_image("WEBP")[:-10], "WebP is truncated"),
    "jpeg-truncated": (lambda: real_image("JPEG", (256, 256))[:-300], "JPEG is truncated"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
async def test_hostile_images_are_rejected_before_upstream(stub: Stub, name: str) -> None:
    make, expected = HOSTILE[name]
    history = [
        image_pb2.Turn(role=image_pb2.ROLE_USER, parts=[image_pb2.Part(text="a cat")]),
        image_pb2.Turn(
            role=image_pb2.ROLE_MODEL,
            parts=[image_pb2.Part(image=image_pb2.Image(data=make()), thought_signature=b"sig")],
        ),
    ]
    request = pb.RefineRequest(prompt="night", history=history)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Refine(request, timeout=20)
    d = details_of(info.value)
    assert d.code is grpc.StatusCode.INVALID_ARGUMENT, (d.code, d.message)
    assert d.reason == "INVALID_REQUEST"
    description = d.fields.get("history[1].parts[0].image.data", "")
    assert expected in description, d.fields


async def test_hostile_input_image_on_generate(stub: Stub) -> None:
    image = image_pb2.Image(data=png_declaring(20000, 20000), mime_type="image/png")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Generate(pb.GenerateRequest(prompt="a cat", input_images=[image]), timeout=20)
    d = details_of(info.value)
    assert d.fields == {"input_images[0].data": "PNG declares 20000x20000 pixels, more than 50 megapixels"}


async def test_nothing_reaches_upstream_for_a_rejected_image(stub: Stub, emulator: Emulator) -> None:
    scenario = emulator.scenario("ok")
    image = image_pb2.Image(data=corrupt_png())
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.Generate(pb.GenerateRequest(prompt=f"a cat {scenario.marker}", input_images=[image]), timeout=20)
    assert scenario.stats.received == 0


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
async def test_sound_images_pass(stub: Stub, fmt: str) -> None:
    image = image_pb2.Image(data=real_image(fmt, (96, 64)))
    response = await stub.Generate(pb.GenerateRequest(prompt="a cat like this", input_images=[image]), timeout=30)
    assert response.generation.image.data


def _noise_jpeg(**options: object) -> bytes:
    img = Image.frombytes("RGB", (320, 240), random.Random(1).randbytes(320 * 240 * 3))
    out = io.BytesIO()
    img.save(out, "JPEG", **options)
    return out.getvalue()


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(_noise_jpeg(), id="baseline"),
        pytest.param(_noise_jpeg(progressive=True), id="progressive"),
        pytest.param(_noise_jpeg(restart_marker_blocks=4), id="restart-markers"),
        pytest.param(_noise_jpeg() + b"ftypmp42 a motion photo's video after the image", id="trailing-data"),
    ],
)
def test_sound_jpegs_pass_the_segment_walk(data: bytes) -> None:
    assert verify_image(data, "image/jpeg", max_pixels=MAX_INPUT_PIXELS) == (320, 240)


@pytest.mark.parametrize("cut", [1, 2, 100, 5000])
def test_cut_jpegs_are_truncated(cut: int) -> None:
    data = _noise_jpeg(progressive=True)
    with pytest.raises(ValueError, match="JPEG is truncated"):
        verify_image(data[:-cut], "image/jpeg", max_pixels=MAX_INPUT_PIXELS)


def test_declared_mime_type_must_match_the_real_format() -> None:
    with pytest.raises(ValueError, match="PNG without an IHDR chunk"):
        verify_image(real_image("JPEG"), "image/png", max_pixels=MAX_INPUT_PIXELS)


def test_verify_cost_on_a_1_5_mb_png_is_small_next_to_a_decode() -> None:
    """Verification reads headers and CRCs, no pixels: a fraction of one full decode."""
    img = Image.frombytes("RGB", (724, 724), random.Random(0).randbytes(724 * 724 * 3))  # noise: ~1.5 MB as PNG
    out = io.BytesIO()
    img.save(out, "PNG")
    data = out.getvalue()
    assert 1_400_000 < len(data) < 1_700_000

    def best_of(fn) -> float:  # type: ignore[no-untyped-def]
        times = []
        for _ in range(5):
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
        return min(times)

    def decode() -> None:
        with Image.open(io.BytesIO(data)) as im:
            im.load()

    verify = best_of(lambda: verify_image(data, "image/png", max_pixels=MAX_INPUT_PIXELS))
    full = best_of(decode)
    assert verify < full / 3, (verify, full)
