"""Thought signatures the emulator issues, and the check that they came back intact.

Real signatures are opaque bytes; ours are derived from the digest of the part
they sign (the image bytes, or the text), so the emulator can verify a
signature in a later request's history without remembering anything: a
signature that does not match its part was corrupted, moved or invented.
The derivation uses a fixed label, not a per-process secret, so signatures
stay valid across emulator restarts.
"""

from __future__ import annotations

import hashlib

#: Community code sends this to skip Gemini's validation of foreign history.
SKIP_SENTINEL = "skip_thought_signature_validator"
_SKIP_SENTINEL_BYTES = SKIP_SENTINEL.encode()

_LABEL = b"imagegen-emulator thought signature v1\x00"
#: A recognisable prefix, so a human reading a dump can tell where it came from.
_PREFIX = b"EMU1"


def _derive(kind: bytes, payload: bytes) -> bytes:
    digest = hashlib.sha256(payload).digest()
    return _PREFIX + hashlib.sha256(_LABEL + kind + b"\x00" + digest).digest()


def image_signature(image: bytes) -> bytes:
    """The signature the emulator puts on a final image part carrying ``image``."""
    return _derive(b"image", image)


def text_signature(text: str) -> bytes:
    """The signature the emulator puts on the first text part after the thoughts."""
    return _derive(b"text", text.encode())


def is_skip_sentinel(raw: str, decoded: bytes | None) -> bool:
    """True for the bypass sentinel, sent raw or base64-encoded."""
    return raw == SKIP_SENTINEL or decoded == _SKIP_SENTINEL_BYTES
