"""Tests of image-format knowledge: probing bytes against a stated media type and reading their size."""

from __future__ import annotations

import pytest

import imagegen.types
from imagegen_server import imagetypes
from imagegen_server.imagetypes import probe_image
from tests.unit.gemini_samples import (
    BMP,
    GIF,
    JPEG,
    JPEG_PROGRESSIVE,
    PNG,
    WEBP_ALPHA,
    WEBP_LOSSLESS,
    WEBP_LOSSY,
)


def test_server_sniffs_with_the_sdk_function() -> None:
    # One sniffer: the server's validation, prober and emulator use the SDK's.
    assert imagetypes.sniff_mime_type is imagegen.types.sniff_mime_type


@pytest.mark.parametrize(
    ("data", "sniffed"),
    [(PNG, "image/png"), (JPEG, "image/jpeg"), (WEBP_LOSSY, "image/webp"), (GIF, "image/gif"), (BMP, "")],
    ids=["png", "jpeg", "webp", "gif", "bmp-unknown"],
)
def test_sniff_sample_images(data: bytes, sniffed: str) -> None:
    assert imagetypes.sniff_mime_type(data) == sniffed


def test_probe_image_rejects_non_images() -> None:
    with pytest.raises(ValueError):
        probe_image(b"hello", "")
    with pytest.raises(ValueError):
        probe_image(PNG, "text/plain")
    with pytest.raises(ValueError, match="image/png"):
        probe_image(PNG, "image/webp")


@pytest.mark.parametrize(
    ("data", "mime", "canonical", "size"),
    [
        (PNG, "image/png", "image/png", (64, 48)),
        (PNG, "", "image/png", (64, 48)),
        (PNG, " IMAGE/PNG; foo=bar", "image/png", (64, 48)),
        (JPEG, "image/jpeg", "image/jpeg", (40, 30)),
        (JPEG, "image/pjpeg", "image/jpeg", (40, 30)),
        (JPEG_PROGRESSIVE, "image/jpg", "image/jpeg", (33, 17)),
        (WEBP_LOSSY, "image/webp", "image/webp", (20, 10)),
        (WEBP_LOSSLESS, "", "image/webp", (21, 11)),
        (WEBP_ALPHA, "image/webp", "image/webp", (22, 12)),
        (GIF, "image/gif", "image/gif", (9, 7)),
        (BMP, "image/bmp", "image/bmp", (5, 3)),
    ],
    ids=[
        "png",
        "png-unstated",
        "png-params",
        "jpeg",
        "pjpeg",
        "jpg-progressive",
        "webp-lossy",
        "webp-lossless-unstated",
        "webp-alpha",
        "gif",
        "bmp-via-pillow",
    ],
)
def test_probe_image_reads_canonical_type_and_size(
    data: bytes, mime: str, canonical: str, size: tuple[int, int]
) -> None:
    assert probe_image(data, mime) == (canonical, *size)


@pytest.mark.parametrize(
    ("data", "mime"),
    [
        (PNG[:-20], "image/png"),
        (PNG[:20], "image/png"),
        (JPEG[:40], "image/jpeg"),
        (WEBP_LOSSY[:20], "image/webp"),
        (GIF[:8], "image/gif"),
        (BMP, ""),
        (b"\x00" * 50, "image/heic"),
    ],
    ids=["png-no-iend", "png-no-ihdr", "jpeg-no-frame", "webp-short", "gif-short", "bmp-unstated", "heic-garbage"],
)
def test_probe_image_rejects_truncated_or_unknown_bytes(data: bytes, mime: str) -> None:
    with pytest.raises(ValueError):
        probe_image(data, mime)
