"""Gemini's request JSON: the ``generateContent`` URL and the ``GenerateContentRequest`` body.

Pure functions, no I/O; :mod:`imagegen_server.gemini.client` sends what they
build. Requests are written in camelCase, as the REST reference does.
"""

from __future__ import annotations

import re
import urllib.parse
from typing import Any

import orjson
import pybase64

from imagegen_server.gemini.types import Part, UpstreamRequest

__all__ = ["build_request_body", "build_url", "encode_request"]

_VERSION_RE = re.compile(r"v\d+[a-z0-9]*")


def build_url(base_url: str, api_version: str, model: str, *, stream: bool) -> str:
    """The ``generateContent`` (or SSE ``streamGenerateContent``) URL for ``model``.

    ``model`` may be a bare id or already carry a ``models/`` or
    ``tunedModels/`` prefix. The API key never goes into the URL.
    """
    version = api_version.strip("/")
    if not _VERSION_RE.fullmatch(version):
        raise ValueError(f"API version must look like 'v1' or 'v1beta', not {api_version!r}")
    if not model:
        raise ValueError("model must not be empty")
    name = model if model.startswith(("models/", "tunedModels/")) else f"models/{model}"
    method = "streamGenerateContent?alt=sse" if stream else "generateContent"
    return f"{base_url.rstrip('/')}/{version}/{urllib.parse.quote(name, safe='/-._~')}:{method}"


def _b64(data: bytes) -> str:
    return pybase64.b64encode_as_string(data)


def _part_json(part: Part) -> dict[str, Any]:
    if part.text is not None and part.image is not None:
        raise ValueError("a Gemini part holds text or an image, not both")
    out: dict[str, Any] = {}
    if part.image is not None:
        out["inlineData"] = {"mimeType": part.image.mime_type, "data": _b64(part.image.data)}
    else:
        # A signature-only part still needs its data field; "" is what Gemini
        # itself sends for such parts.
        out["text"] = part.text if part.text is not None else ""
    if part.thought:
        out["thought"] = True
    if part.thought_signature is not None:
        out["thoughtSignature"] = _b64(part.thought_signature)
    return out


def build_request_body(request: UpstreamRequest) -> dict[str, Any]:
    """The ``GenerateContentRequest`` JSON object for ``request``.

    Parts are echoed in order with their ``thought`` flags and signatures
    unchanged. ``candidateCount`` is omitted (image models fix it at 1) and
    ``seed`` is sent whenever it is not ``None``, 0 included.

    Raises ``ValueError`` for a part holding both text and an image, which
    Gemini cannot represent (a caller bug, not an upstream failure).
    """
    body: dict[str, Any] = {
        "contents": [
            {"role": content.role, "parts": [_part_json(p) for p in content.parts]} for content in request.contents
        ]
    }
    if request.system_instruction:
        body["systemInstruction"] = {"role": "user", "parts": [{"text": request.system_instruction}]}
    config: dict[str, Any] = {}
    if request.response_modalities:
        config["responseModalities"] = list(request.response_modalities)
    if request.seed is not None:
        config["seed"] = request.seed
    image_config: dict[str, Any] = {}
    if request.aspect_ratio:
        image_config["aspectRatio"] = request.aspect_ratio
    if request.image_size:
        image_config["imageSize"] = request.image_size
    if image_config:
        config["imageConfig"] = image_config
    if request.include_thoughts:
        config["thinkingConfig"] = {"includeThoughts": True}
    body["generationConfig"] = config
    return body


def encode_request(request: UpstreamRequest) -> bytes:
    """:func:`build_request_body` serialised as compact UTF-8 JSON."""
    return orjson.dumps(build_request_body(request))
