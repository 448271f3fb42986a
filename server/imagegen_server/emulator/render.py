"""Deterministic stand-in images: same inputs, same PNG bytes.

The picture is a vertical gradient with a few flat shapes and the prompt
written on it, all chosen from a digest of the inputs. Flat regions and
row-constant gradients compress well, so even a 4K image encodes in a fraction
of a second at ``compress_level=1``. Rendering runs in a worker thread so a
large image does not stall the event loop (which must keep noticing clients
that hang up).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import random
import textwrap
from collections import OrderedDict
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

#: Long side of a draft (thought) image: drafts are previews, so keep them cheap.
DRAFT_LONG_SIDE = 512


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


def render_png(key: RenderKey) -> bytes:
    """Draw the image for ``key`` and encode it as PNG (blocking; call in a thread)."""
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
    label = f"draft {key.draft}: {key.prompt}" if key.draft else key.prompt
    lines = textwrap.wrap(label, 48)[:3] or [""]
    font_size = max(10, min(width, height) // 24)
    font = ImageFont.load_default(size=font_size)
    draw.multiline_text(
        (font_size, font_size), "\n".join(lines), fill=(255, 255, 255), font=font, stroke_width=2, stroke_fill=0
    )
    out = io.BytesIO()
    image.save(out, "PNG", compress_level=1)
    return out.getvalue()


class Renderer:
    """Renders PNGs off the event loop, with a small LRU cache of recent results.

    Retries and the draft-then-final sequence ask for the same image again, so
    a handful of entries removes most repeated work.
    """

    def __init__(self, cache_size: int = 16) -> None:
        self._cache: OrderedDict[bytes, bytes] = OrderedDict()
        self._cache_size = cache_size

    async def render(self, key: RenderKey) -> bytes:
        """The PNG bytes for ``key``."""
        cache_key = key.digest()
        cached = self._cache.get(cache_key)
        if cached is not None:
            self._cache.move_to_end(cache_key)
            return cached
        png = await asyncio.to_thread(render_png, key)
        self._cache[cache_key] = png
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return png
