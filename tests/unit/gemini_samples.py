"""Sample images and Gemini JSON bodies shared by the Gemini client's unit tests."""

from __future__ import annotations

import base64
import io
from typing import Any

from PIL import Image

MODEL = "gemini-3-pro-image-preview"


def make_image(fmt: str, size: tuple[int, int] = (8, 6), mode: str = "RGB", **save: Any) -> bytes:
    """Encode a small solid image in ``fmt`` (Pillow format name)."""
    buf = io.BytesIO()
    Image.new(mode, size, (200, 30, 60) if mode == "RGB" else (200, 30, 60, 128)).save(buf, fmt, **save)
    return buf.getvalue()


PNG = make_image("PNG", (64, 48))
DRAFT_PNG = make_image("PNG", (16, 12))
JPEG = make_image("JPEG", (40, 30))
JPEG_PROGRESSIVE = make_image("JPEG", (33, 17), progressive=True)
WEBP_LOSSY = make_image("WEBP", (20, 10), quality=50)
WEBP_LOSSLESS = make_image("WEBP", (21, 11), lossless=True)
WEBP_ALPHA = make_image("WEBP", (22, 12), mode="RGBA", quality=50)
GIF = make_image("GIF", (9, 7))
BMP = make_image("BMP", (5, 3))
SIG_A = bytes(range(256))
SIG_B = b"\x00\xff sig B \xfe\x01"


def b64(data: bytes) -> str:
    """Standard base64, as Gemini sends bytes in JSON."""
    return base64.b64encode(data).decode()


def inline(data: bytes, mime: str = "image/png", **extra: Any) -> dict[str, Any]:
    """An ``inlineData`` part."""
    return {"inlineData": {"mimeType": mime, "data": b64(data)}, **extra}


def ok_body(parts: list[dict[str, Any]], finish: str = "STOP", **extra: Any) -> dict[str, Any]:
    """A successful GenerateContentResponse with ``parts``."""
    return {
        "candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": finish, "index": 0}],
        "usageMetadata": {
            "promptTokenCount": 266,
            "candidatesTokenCount": 1120,
            "totalTokenCount": 1650,
            "thoughtsTokenCount": 264,
        },
        "modelVersion": MODEL,
        "responseId": "Il0taoSYJ5Cez7",
        **extra,
    }
