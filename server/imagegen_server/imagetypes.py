"""Recognise image formats from their leading bytes (magic numbers)."""

from __future__ import annotations

#: Media types Gemini accepts as input images.
SUPPORTED_INPUT_TYPES = frozenset({"image/png", "image/jpeg", "image/webp", "image/heic", "image/heif"})

_HEIC_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx"})
_HEIF_BRANDS = frozenset({b"mif1", b"msf1", b"heif"})


def sniff_mime_type(data: bytes) -> str | None:
    """The media type the bytes really are, or None when unrecognised."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if len(data) >= 12 and data[4:8] == b"ftyp":
        brand = data[8:12]
        if brand in _HEIC_BRANDS:
            return "image/heic"
        if brand in _HEIF_BRANDS:
            return "image/heif"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    return None


def same_type(declared: str, detected: str) -> bool:
    """True when a declared media type agrees with the detected one.

    HEIC is a HEIF profile, so either name is accepted for either brand; the
    ``image/jpg`` misspelling is common enough to tolerate.
    """
    norm = {"image/jpg": "image/jpeg", "image/heic": "image/heif"}
    declared = declared.strip().lower()
    return norm.get(declared, declared) == norm.get(detected, detected)
