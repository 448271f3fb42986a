"""Image-format knowledge: recognise formats from their leading bytes and read their pixel size.

:func:`sniff_mime_type` (the SDK's, :mod:`imagegen.types`) names the format from its magic number;
:func:`probe_image` checks bytes against a stated media type and reads the
width and height from the header (PNG, JPEG, WebP, GIF parsed here, other
``image/*`` types through Pillow).
"""

from __future__ import annotations

import io
import struct
import zlib

from imagegen.types import sniff_mime_type

__all__ = ["SUPPORTED_INPUT_TYPES", "probe_image", "same_type", "sniff_mime_type", "verify_image"]

#: Media types Gemini accepts as input images.
SUPPORTED_INPUT_TYPES = frozenset({"image/png", "image/jpeg", "image/webp", "image/heic", "image/heif"})


def same_type(declared: str, detected: str) -> bool:
    """True when a declared media type agrees with the detected one.

    HEIC is a HEIF profile, so either name is accepted for either brand; the
    ``image/jpg`` misspelling is common enough to tolerate.
    """
    norm = {"image/jpg": "image/jpeg", "image/heic": "image/heif"}
    declared = declared.strip().lower()
    return norm.get(declared, declared) == norm.get(detected, detected)


#: Stated media types whose headers probe_image reads itself, by alias -> canonical name.
_CANONICAL_MIME = {
    "image/png": "image/png",
    "image/jpeg": "image/jpeg",
    "image/jpg": "image/jpeg",
    "image/pjpeg": "image/jpeg",
    "image/webp": "image/webp",
    "image/gif": "image/gif",
}

_PNG_IEND = b"IEND\xaeB`\x82"
# SOFn markers carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) do not.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _png_size(data: bytes) -> tuple[int, int]:
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise ValueError("PNG without an IHDR chunk")
    (length,) = struct.unpack(">I", data[8:12])
    if length != 13:
        raise ValueError("PNG IHDR has the wrong length")
    (crc,) = struct.unpack(">I", data[29:33])
    if zlib.crc32(data[12:29]) != crc:
        raise ValueError("PNG IHDR checksum mismatch")
    # A PNG cut short loses its IEND trailer; allow a little trailing junk.
    if _PNG_IEND not in data[-64:]:
        raise ValueError("PNG is truncated (no IEND chunk)")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _jpeg_size(data: bytes) -> tuple[int, int]:
    pos, end = 2, len(data)
    while pos < end:
        if data[pos] != 0xFF:
            raise ValueError("JPEG segment does not start with a marker")
        while pos < end and data[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= end:
            break
        marker = data[pos]
        pos += 1
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # standalone markers
            continue
        if marker in (0xD9, 0xDA):
            raise ValueError("JPEG has no frame header before its scan")
        if pos + 2 > end:
            break
        (length,) = struct.unpack(">H", data[pos : pos + 2])
        if length < 2:
            raise ValueError("JPEG segment length is invalid")
        if marker in _JPEG_SOF:
            if pos + 7 > end:
                break
            height, width = struct.unpack(">HH", data[pos + 3 : pos + 7])
            return width, height
        pos += length
    raise ValueError("JPEG is truncated before its frame header")


def _webp_size(data: bytes) -> tuple[int, int]:
    if len(data) < 30:
        raise ValueError("WebP too short")
    (riff_size,) = struct.unpack("<I", data[4:8])
    if riff_size + 8 > len(data):
        raise ValueError("WebP is truncated")
    chunk, payload = data[12:16], data[20:]
    if chunk == b"VP8 ":
        if payload[3:6] != b"\x9d\x01\x2a":
            raise ValueError("WebP VP8 frame has no start code")
        width, height = struct.unpack("<HH", payload[6:10])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":
        if payload[0] != 0x2F:
            raise ValueError("WebP VP8L has no signature")
        (bits,) = struct.unpack("<I", payload[1:5])
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        width = int.from_bytes(payload[4:7], "little") + 1
        height = int.from_bytes(payload[7:10], "little") + 1
        return width, height
    raise ValueError(f"WebP with unknown first chunk {chunk!r}")


def _gif_size(data: bytes) -> tuple[int, int]:
    if len(data) < 10:
        raise ValueError("GIF too short")
    width, height = struct.unpack("<HH", data[6:10])
    return width, height


def _pillow_size(data: bytes, mime_type: str) -> tuple[int, int]:
    # Only for types we do not parse ourselves; Image.open reads the header
    # only, so this is cheap enough for the event loop.
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            found = Image.MIME.get(img.format or "", "")
            size: tuple[int, int] = img.size
    except Exception as exc:  # Pillow raises many types for unreadable data
        raise ValueError(f"bytes are not a readable {mime_type} image ({type(exc).__name__})") from None
    if found and found != mime_type:
        raise ValueError(f"stated {mime_type} but the bytes are {found}")
    return size


_PROBES = {
    "image/png": _png_size,
    "image/jpeg": _jpeg_size,
    "image/webp": _webp_size,
    "image/gif": _gif_size,
}


def probe_image(data: bytes, mime_type: str) -> tuple[str, int, int]:
    """Check ``data`` is an image of ``mime_type``; return (canonical type, width, height).

    PNG, JPEG, WebP and GIF headers are read directly (no decoding, so it is
    fast on a 4K image); other ``image/*`` types go through Pillow. An empty
    ``mime_type`` means "whatever the bytes are". Raises ``ValueError`` when
    the bytes are not an image of the stated type.
    """
    stated = mime_type.split(";", 1)[0].strip().lower()
    sniffed = sniff_mime_type(data)
    if not stated:
        if not sniffed:
            raise ValueError("no mimeType and the bytes are not a known image format")
        stated = sniffed
    if not stated.startswith("image/"):
        raise ValueError(f"mimeType {mime_type!r} is not an image type")
    canonical = _CANONICAL_MIME.get(stated, stated)
    probe = _PROBES.get(canonical)
    if probe is None:
        if sniffed:
            raise ValueError(f"stated {canonical} but the bytes are {sniffed}")
        width, height = _pillow_size(data, canonical)
    else:
        if sniffed != canonical:
            raise ValueError(f"stated {canonical} but the bytes are {sniffed or 'not a known image format'}")
        try:
            width, height = probe(data)
        except (struct.error, IndexError) as exc:
            raise ValueError(f"{canonical} header is truncated ({exc})") from None
    if width <= 0 or height <= 0:
        raise ValueError(f"{canonical} has an empty size {width}x{height}")
    return canonical, width, height


#: Pillow's names for the input formats it verifies; HEIC/HEIF need a plugin Pillow does not ship.
_PILLOW_FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP"}
_LABELS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WebP", "image/heic": "HEIC", "image/heif": "HEIF"}


def verify_image(data: bytes, mime_type: str, *, max_pixels: int) -> tuple[int, int] | None:
    """Check ``data`` (already sniffed as ``mime_type``) is a sound image of at most ``max_pixels``.

    The size comes from the format's header and is bounded before Pillow sees the bytes (no
    decompression bomb is ever decoded, and no global Pillow limit is touched); then Pillow
    opens them as that format, must agree on the size, and verifies the structure (PNG:
    every chunk and its CRC; JPEG: every segment up to the end-of-image marker; WebP: the
    RIFF length). Pixels are not decoded, so a 1.5 MB image costs about a millisecond.
    Returns (width, height), or None for HEIC/HEIF, which only their header vouches for.
    Raises ``ValueError`` saying what is wrong.
    """
    label = _LABELS.get(mime_type, mime_type)
    pillow_format = _PILLOW_FORMATS.get(mime_type)
    if pillow_format is None:
        return None
    try:
        width, height = _PROBES[mime_type](data)
    except (struct.error, IndexError):
        raise ValueError(f"{label} header is truncated") from None
    if width <= 0 or height <= 0:
        raise ValueError(f"{label} declares an empty size {width}x{height}")
    if width * height > max_pixels:
        raise ValueError(f"{label} declares {width}x{height} pixels, more than {max_pixels / 1e6:g} megapixels")
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data), formats=[pillow_format]) as img:
            size = img.size
            img.verify()
    except Exception as exc:  # Pillow raises SyntaxError, OSError, ValueError, struct.error... for bad data
        raise ValueError(f"{label} is corrupt ({_pillow_reason(exc)})") from None
    if size != (width, height):
        raise ValueError(f"{label} header declares {width}x{height} but the image is {size[0]}x{size[1]}")
    if mime_type == "image/jpeg":
        # Pillow's JPEG verify checks nothing past the header: a cut upload would pass.
        _jpeg_end(data)
    return width, height


def _jpeg_end(data: bytes) -> int:
    """Offset just past the end-of-image marker of the JPEG at the start of ``data``.

    Walks the segments from SOI by their lengths (so an EXIF thumbnail's own markers are
    skipped) and each scan's entropy-coded data to the next real marker (``FF00`` is a
    stuffed byte, ``FFD0``-``FFD7`` restart markers); bytes after EOI (a motion photo's
    video) are allowed. Raises ``ValueError`` when the data ends first.
    """
    truncated = ValueError("JPEG is truncated (no end-of-image marker)")
    pos, end = 2, len(data)
    while True:
        if pos + 1 >= end:
            raise truncated
        if data[pos] != 0xFF:
            raise ValueError("JPEG segment does not start with a marker")
        marker = data[pos + 1]
        if marker == 0xFF:  # a fill byte before the marker
            pos += 1
            continue
        pos += 2
        if marker == 0xD9:
            return pos
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # standalone markers
            continue
        if pos + 2 > end:
            raise truncated
        length = int.from_bytes(data[pos : pos + 2], "big")
        if length < 2:
            raise ValueError("JPEG segment length is invalid")
        pos += length
        if marker == 0xDA:  # start of scan: skip the entropy-coded data
            while True:
                pos = data.find(b"\xff", pos)
                if pos < 0 or pos + 1 >= end:
                    raise truncated
                following = data[pos + 1]
                if following == 0x00 or 0xD0 <= following <= 0xD7:
                    pos += 2
                elif following == 0xFF:
                    pos += 1
                else:
                    break


def _pillow_reason(exc: Exception) -> str:
    text = str(exc)
    if not text or "BytesIO" in text:  # "cannot identify image file <_io.BytesIO object at 0x...>"
        return "not readable as that format"
    return text if len(text) <= 120 else text[:119] + "…"
