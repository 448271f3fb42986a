"""Deterministic stand-in images: same inputs, same PNG bytes.

Two profiles:

* ``realistic`` (the default): PNGs as large as Gemini's, because a
  photograph's pixels barely compress (1K about 1.6 MB, 2K about 6 MB, 4K
  about 22 MB). The image is a strip with the prompt written on it, then bands
  of photographic-entropy noise. The noise bands are deflate-compressed once
  per emulator (per width and size tier) and stacked in an order drawn from
  the request's digest, so each image costs a byte join and no pixel work:
  a 4K image takes milliseconds, and the emulator is never the bottleneck.
* ``small``: a gradient with a few flat shapes and the prompt, tens of KB even
  at 4K. For tests that want speed more than realistic sizes.

Rendering runs in a worker thread so a large image does not stall the event
loop (which must keep noticing clients that hang up).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import math
import os
import random
import struct
import textwrap
import threading
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

from PIL import Image, ImageDraw, ImageFont

from .signatures import image_signature

#: Long side of a draft (thought) image: drafts are previews, so keep them cheap.
DRAFT_LONG_SIDE = 512

#: ``realistic``: Gemini-sized PNGs; ``small``: tiny gradients, for fast tests.
ImageProfile = Literal["realistic", "small"]
IMAGE_PROFILES: tuple[ImageProfile, ...] = ("realistic", "small")
DEFAULT_IMAGE_PROFILE: ImageProfile = "realistic"
#: Environment variable naming the profile when the code does not choose one.
IMAGE_PROFILE_ENV = "IMAGEGEN_EMULATOR_IMAGE_PROFILE"


def resolve_image_profile(profile: str | None = None) -> ImageProfile:
    """``profile``, else ``$IMAGEGEN_EMULATOR_IMAGE_PROFILE``, else ``realistic``.

    Raises :class:`ValueError` for an unknown name.
    """
    chosen = profile or os.environ.get(IMAGE_PROFILE_ENV, "").strip() or DEFAULT_IMAGE_PROFILE
    if chosen not in IMAGE_PROFILES:
        raise ValueError(f"unknown emulator image profile {chosen!r} (expected one of {', '.join(IMAGE_PROFILES)})")
    return chosen


@dataclass(frozen=True, slots=True)
class RenderKey:
    """Everything an image depends on. Equal keys give byte-identical PNGs."""

    model: str
    prompt: str
    seed: int
    aspect_ratio: str
    image_size: str
    width: int
    height: int
    #: SHA-256 hex digests of the input and history images, in request order.
    image_digests: tuple[str, ...] = ()
    #: 0 for the final image; n >= 1 for the n-th draft.
    draft: int = 0

    def digest(self) -> bytes:
        """A stable digest of the key, used as the cache key and the RNG seed."""
        fields = [
            self.model,
            self.prompt,
            self.seed,
            self.aspect_ratio,
            self.image_size,
            self.width,
            self.height,
            list(self.image_digests),
            self.draft,
        ]
        return hashlib.sha256(json.dumps(fields).encode()).digest()

    def output_size(self) -> tuple[int, int]:
        """Pixel size of the PNG: the model's size, or a smaller one for drafts."""
        if not self.draft:
            return self.width, self.height
        scale = min(1.0, DRAFT_LONG_SIDE / max(self.width, self.height))
        return max(1, round(self.width * scale)), max(1, round(self.height * scale))


def _color(rng: random.Random) -> tuple[int, int, int]:
    return rng.randrange(256), rng.randrange(256), rng.randrange(256)


def _label(key: RenderKey) -> str:
    return f"draft {key.draft}: {key.prompt}" if key.draft else key.prompt


# --------------------------------------------------------------------------------------- small


def render_png(key: RenderKey) -> bytes:
    """Draw the ``small`` image for ``key`` and encode it as PNG (blocking; call in a thread)."""
    rng = random.Random(key.digest())
    width, height = key.output_size()
    top, bottom = _color(rng), _color(rng)
    # A 1-pixel-wide column resized with NEAREST gives rows of one colour each,
    # which PNG's filters turn into near-zero bytes: fast to encode, small output.
    ramp = Image.linear_gradient("L").resize((1, height))
    channels = [ramp.point(lambda v, a=a, b=b: a + (b - a) * v // 255) for a, b in zip(top, bottom, strict=True)]
    image = Image.merge("RGB", channels).resize((width, height), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(image)
    for _ in range(3 if key.draft else 7):
        x0, y0 = rng.randrange(width), rng.randrange(height)
        x1 = x0 + rng.randrange(width // 8 + 1, width // 2 + 2)
        y1 = y0 + rng.randrange(height // 8 + 1, height // 2 + 2)
        if rng.random() < 0.5:
            draw.ellipse((x0, y0, x1, y1), fill=_color(rng))
        else:
            draw.rectangle((x0, y0, x1, y1), fill=_color(rng))
    lines = textwrap.wrap(_label(key), 48)[:3] or [""]
    font_size = max(10, min(width, height) // 24)
    font = ImageFont.load_default(size=font_size)
    draw.multiline_text(
        (font_size, font_size), "\n".join(lines), fill=(255, 255, 255), font=font, stroke_width=2, stroke_fill=0
    )
    out = io.BytesIO()
    image.save(out, "PNG", compress_level=1)
    return out.getvalue()


# ----------------------------------------------------------------------------------- realistic

#: Spread of the per-byte prediction residuals, by size tier. A photograph's
#: PNG filters leave residuals that deflate to about half the raw size, a bit
#: less at 4K (finer detail per pixel is smoother): these give 1K ~1.6 MB,
#: 2K ~6.3 MB, 4K ~22 MB, as Gemini's PNGs measure.
_RESIDUAL_SPREAD = {"512": 3.5, "1K": 3.5, "2K": 3.2, "4K": 2.4}
#: Rows per precomputed band, and distinct bands per (width, tier).
_BAND_ROWS = 32
_BANDS = 16
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: zlib stream header for "deflate, 32 KiB window, fastest" (what level 1 writes).
_ZLIB_HEADER = b"\x78\x01"
#: A final, empty deflate block: it closes the stream after the bands.
_DEFLATE_END = zlib.compressobj(wbits=-15).flush()
#: PNG's Average filter: it turns the noise into soft diagonal strokes, where Paeth gives static.
_AVERAGE = 3
_ADLER_BASE = 65521


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def adler32_combine(first: int, second: int, second_length: int) -> int:
    """Adler-32 of ``a + b`` from ``adler32(a)``, ``adler32(b)`` and ``len(b)`` (zlib's adler32_combine)."""
    rem = second_length % _ADLER_BASE
    sum1 = first & 0xFFFF
    sum2 = (rem * sum1) % _ADLER_BASE
    sum1 = (sum1 + (second & 0xFFFF) + _ADLER_BASE - 1) % _ADLER_BASE
    sum2 = (sum2 + (first >> 16) + (second >> 16) + _ADLER_BASE - rem) % _ADLER_BASE
    return (sum2 << 16) | sum1


def _residual_table(spread: float) -> bytes:
    """Maps a uniform random byte to a Laplace-distributed residual (mod 256).

    Photographs' filtered residuals are roughly Laplacian around zero, which is
    what gives their PNGs the size they have.
    """
    table = bytearray()
    for b in range(256):
        u = (b + 0.5) / 256 - 0.5
        table.append(round(-spread * math.copysign(math.log(1 - 2 * abs(u)), u)) % 256)
    return bytes(table)


def _deflate_segment(raw: bytes, *, level: int, strategy: int) -> bytes:
    """``raw`` as a self-contained, byte-aligned, non-final run of deflate blocks.

    No back-references leave the segment, so segments concatenate into one
    valid stream in any order.
    """
    compressor = zlib.compressobj(level, zlib.DEFLATED, -15, 9, strategy)
    return compressor.compress(raw) + compressor.flush(zlib.Z_SYNC_FLUSH)


@dataclass(frozen=True, slots=True)
class _BandPool:
    """Interchangeable bands of ``_BAND_ROWS`` noise scanlines for one width and tier."""

    #: Each band as a complete ``IDAT`` chunk (length, type, deflate data, CRC).
    chunks: tuple[bytes, ...]
    #: Adler-32 of each band's uncompressed scanlines.
    adlers: tuple[int, ...]
    #: Uncompressed bytes per band (the same for all).
    raw_length: int


def _build_pool(width: int, tier: str) -> _BandPool:
    """Draw and compress the bands (about 5 ms per band at 4K width)."""
    # Seeded by width and tier only, so every emulator draws the same bands.
    rng = random.Random(f"imagegen-emulator-bands:{width}:{tier}")
    table = _residual_table(_RESIDUAL_SPREAD.get(tier, _RESIDUAL_SPREAD["1K"]))
    row_bytes = 3 * width
    chunks, adlers = [], []
    raw_length = 0
    for _ in range(_BANDS):
        noise = rng.randbytes(row_bytes * _BAND_ROWS).translate(table)
        # Every scanline uses the Average filter: the residuals are the noise, and
        # the decoded pixels depend on the rows above, whichever band they came from.
        raw = b"".join(bytes((_AVERAGE,)) + noise[row * row_bytes : (row + 1) * row_bytes] for row in range(_BAND_ROWS))
        raw_length = len(raw)
        # Noise has no repeats to find: Huffman coding alone compresses it as well, much faster.
        chunks.append(_chunk(b"IDAT", _deflate_segment(raw, level=1, strategy=zlib.Z_HUFFMAN_ONLY)))
        adlers.append(zlib.adler32(raw))
    return _BandPool(tuple(chunks), tuple(adlers), raw_length)


def _label_strip(key: RenderKey, width: int, rows: int, rng: random.Random) -> bytes:
    """Filtered scanlines of a dark strip with the prompt written on it."""
    strip = Image.new("RGB", (width, rows), tuple(c // 4 for c in _color(rng)))
    font_size = max(8, min(width, key.output_size()[1]) // 40)
    lines = textwrap.wrap(_label(key), 64)[:2] or [""]
    if rows >= font_size:
        ImageDraw.Draw(strip).multiline_text(
            (font_size // 2, font_size // 4),
            "\n".join(lines),
            fill=(255, 255, 255),
            font=ImageFont.load_default(size=font_size),
        )
    pixels = strip.tobytes()
    row_bytes = 3 * width
    return b"".join(b"\x00" + pixels[row * row_bytes : (row + 1) * row_bytes] for row in range(rows))


def _strip_rows(width: int, height: int) -> int:
    """Rows of the label strip: room for two lines of text, plus what the bands leave over."""
    wanted = min(height, 3 * max(8, min(width, height) // 40))
    return wanted + (height - wanted) % _BAND_ROWS


def realistic_png(key: RenderKey, pool: _BandPool) -> bytes:
    """Assemble the ``realistic`` PNG for ``key`` from ``pool`` (blocking; call in a thread)."""
    rng = random.Random(key.digest())
    width, height = key.output_size()
    strip_rows = _strip_rows(width, height)
    strip = _label_strip(key, width, strip_rows, rng)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    parts = [
        _PNG_SIGNATURE,
        _chunk(b"IHDR", ihdr),
        _chunk(b"IDAT", _ZLIB_HEADER + _deflate_segment(strip, level=1, strategy=zlib.Z_DEFAULT_STRATEGY)),
    ]
    adler = zlib.adler32(strip)
    for _ in range((height - strip_rows) // _BAND_ROWS):
        band = rng.randrange(len(pool.chunks))
        parts.append(pool.chunks[band])
        adler = adler32_combine(adler, pool.adlers[band], pool.raw_length)
    parts.append(_chunk(b"IDAT", _DEFLATE_END + struct.pack(">I", adler)))
    parts.append(_chunk(b"IEND", b""))
    return b"".join(parts)


# ------------------------------------------------------------------------------------ renderer


@dataclass(frozen=True, slots=True)
class RenderedImage:
    """A PNG with what its answer part needs, computed once off the event loop."""

    png: bytes
    #: ``png`` in standard base64, as the ``inlineData.data`` of the answer.
    base64: str
    #: The thought signature of a final image carrying ``png``.
    signature: bytes

    @property
    def size(self) -> int:
        """Bytes held (PNG and base64 text)."""
        return len(self.png) + len(self.base64)


class Renderer:
    """Renders PNGs off the event loop, with an LRU cache of recent results.

    Retries, repeated seeds and the draft-then-final sequence ask for the same
    image again, so a few entries remove most repeated work. The cache is
    bounded in bytes because a realistic 4K image is over 20 MB (50 MB with its
    base64). The realistic profile's band pools live here too, one per renderer
    (so per emulator), built on first use.
    """

    def __init__(self, profile: str | None = None, *, cache_bytes: int = 128 * 1024 * 1024) -> None:
        #: ``realistic`` or ``small`` (see :func:`resolve_image_profile`).
        self.profile: ImageProfile = resolve_image_profile(profile)
        self._cache: OrderedDict[bytes, RenderedImage] = OrderedDict()
        self._cache_bytes = cache_bytes
        self._cached_bytes = 0
        self._pools: dict[tuple[int, str], _BandPool] = {}
        # Renders run in worker threads; one pool is built once even when many want it.
        self._pool_lock = threading.Lock()

    def _pool(self, width: int, tier: str) -> _BandPool:
        with self._pool_lock:
            pool = self._pools.get((width, tier))
            if pool is None:
                pool = self._pools[(width, tier)] = _build_pool(width, tier)
            return pool

    def render_sync(self, key: RenderKey) -> bytes:
        """The PNG for ``key`` without the cache (blocking)."""
        if self.profile == "small":
            return render_png(key)
        width, _ = key.output_size()
        # Drafts are previews at 512 px, so they take the 1K tier's entropy.
        tier = key.image_size if key.image_size in _RESIDUAL_SPREAD and not key.draft else "1K"
        return realistic_png(key, self._pool(width, tier))

    def _encoded(self, key: RenderKey) -> RenderedImage:
        png = self.render_sync(key)
        return RenderedImage(png, base64.b64encode(png).decode("ascii"), image_signature(png))

    async def render_encoded(self, key: RenderKey) -> RenderedImage:
        """The PNG for ``key`` with its base64 text and signature."""
        cache_key = key.digest()
        cached = self._cache.get(cache_key)
        if cached is not None:
            self._cache.move_to_end(cache_key)
            return cached
        image = await asyncio.to_thread(self._encoded, key)
        if cache_key not in self._cache and image.size <= self._cache_bytes:
            self._cache[cache_key] = image
            self._cached_bytes += image.size
            while self._cached_bytes > self._cache_bytes:
                _, evicted = self._cache.popitem(last=False)
                self._cached_bytes -= evicted.size
        return image

    async def render(self, key: RenderKey) -> bytes:
        """The PNG bytes for ``key``."""
        return (await self.render_encoded(key)).png
