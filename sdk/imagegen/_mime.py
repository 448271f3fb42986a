"""Image formats recognised from their leading bytes: the one sniffer of the SDK and the server."""

from __future__ import annotations

__all__ = ["sniff_mime_type"]

# ISO-BMFF major brands (bytes 8-12, after ``ftyp``) of HEIC and of other HEIF images.
_HEIC_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx"})
_HEIF_BRANDS = frozenset({b"mif1", b"msf1", b"heif"})


def sniff_mime_type(data: bytes) -> str:
    """The media type of PNG, JPEG, WebP, HEIC, HEIF or GIF bytes, or ``""`` when unrecognised.

    An empty type is valid on input: the server detects the type from the bytes
    itself and rejects what it cannot read.
    """
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        if brand in _HEIC_BRANDS:
            return "image/heic"
        if brand in _HEIF_BRANDS:
            return "image/heif"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    return ""
