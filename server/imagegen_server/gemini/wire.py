"""Gemini's JSON wire format: request building and response/error classification.

Pure functions, no I/O, so every response shape can be unit-tested without a
server. :mod:`imagegen_server.gemini.client` does the HTTP around them.

Gemini accepts and may return both camelCase and snake_case field names
(proto3 JSON); every reader here accepts both. Requests are written in
camelCase, as the REST reference does.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import functools
import json
import re
import struct
import time
import urllib.parse
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from imagegen_server.gemini.errors import ErrorKind, FieldViolation, QuotaViolation, UpstreamError
from imagegen_server.gemini.types import InlineImage, Part, UpstreamRequest, UpstreamResult, Usage
from imagegen_server.imagetypes import sniff_mime_type

__all__ = [
    "BLOCK_FINISH_REASONS",
    "ErrorEnvelope",
    "ResponseAccumulator",
    "build_request_body",
    "build_url",
    "classify_error_envelope",
    "classify_http_error",
    "decode_base64",
    "encode_request",
    "parse_duration",
    "parse_error_envelope",
    "parse_response",
    "parse_retry_after",
    "probe_image",
]

#: finishReasons that mean the output was filtered (side "output").
BLOCK_FINISH_REASONS = frozenset(
    {
        "SAFETY",
        "IMAGE_SAFETY",
        "PROHIBITED_CONTENT",
        "IMAGE_PROHIBITED_CONTENT",
        "BLOCKLIST",
        "SPII",
        "RECITATION",
        "IMAGE_RECITATION",
    }
)

#: Upstream text quoted in our messages is cut to this many characters: a
#: 429's message alone runs to ~500 characters of links and metric names.
MAX_QUOTED_CHARS = 300

_VERSION_RE = re.compile(r"v\d+[a-z0-9]*")
#: "Image part is missing a thought_signature in content position 2, part
#: position 1", the Text variant, and function-call wordings without positions.
_MISSING_SIGNATURE_RE = re.compile(r"is missing an? `?thought_signature", re.IGNORECASE)
_SIGNATURE_POSITION_RE = re.compile(r"content position (\d+), part position (\d+)", re.IGNORECASE)
_API_KEY_MESSAGE_RE = re.compile(r"API key (?:not valid|not found|expired|invalid)", re.IGNORECASE)
_RETRY_IN_MESSAGE_RE = re.compile(r"retry in (\d+(?:\.\d+)?)(ms|s)\b", re.IGNORECASE)
_DURATION_RE = re.compile(r"\s*(-?\d+(?:\.\d*)?)s\s*")
_TAG_RE = re.compile(r"<[^>]*>")
_SPACE_RE = re.compile(r"\s+")


# ---------------------------------------------------------------------------
# Requests
# ---------------------------------------------------------------------------


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
    return base64.b64encode(data).decode("ascii")


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
    return json.dumps(build_request_body(request), separators=(",", ":"), ensure_ascii=False).encode()


# ---------------------------------------------------------------------------
# Field access tolerant of camelCase and snake_case
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _snake(name: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


def _get(obj: Mapping[str, Any], name: str) -> Any:
    """``obj[name]`` under its camelCase or snake_case spelling, else None."""
    value = obj.get(name)
    if value is None:
        value = obj.get(_snake(name))
    return value


def _malformed(message: str, model: str = "") -> UpstreamError:
    return UpstreamError(ErrorKind.MALFORMED, f"malformed Gemini answer: {message}", model=model)


def _as_mapping(value: Any, where: str, model: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _malformed(f"{where} is {type(value).__name__}, not an object", model)
    return value


def _as_list(value: Any, where: str, model: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _malformed(f"{where} is {type(value).__name__}, not a list", model)
    return value


def _as_str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _as_int(value: Any) -> int:
    # int64 fields arrive as JSON strings in proto3 JSON; int32 as numbers.
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return 0
    return 0


def _quote(text: str, limit: int = MAX_QUOTED_CHARS) -> str:
    text = _SPACE_RE.sub(" ", text).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---------------------------------------------------------------------------
# Base64 and image probing
# ---------------------------------------------------------------------------


def decode_base64(value: Any, what: str = "data", *, model: str = "") -> bytes:
    """Decode a proto3-JSON ``bytes`` field.

    Standard base64 is what Gemini sends; URL-safe and unpadded forms are also
    accepted because proto3 JSON parsers accept them. Anything else raises a
    MALFORMED :class:`UpstreamError`.
    """
    if not isinstance(value, str):
        raise _malformed(f"{what} is {type(value).__name__}, not a base64 string", model)
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        pass
    trimmed = value.rstrip("=")
    padded = trimmed + "=" * (-len(trimmed) % 4)
    try:
        return base64.b64decode(padded, altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise _malformed(f"{what} is not valid base64", model) from None


_CANONICAL_MIME = {
    "image/png": "image/png",
    "image/jpeg": "image/jpeg",
    "image/jpg": "image/jpeg",
    "image/pjpeg": "image/jpeg",
    "image/webp": "image/webp",
    "image/gif": "image/gif",
}

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"IEND\xaeB`\x82"
# SOFn markers carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) do not.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _sniff(data: bytes) -> str:
    return sniff_mime_type(data) or ""


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
    import io

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
    sniffed = _sniff(data)
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


# ---------------------------------------------------------------------------
# Successful answers (unary body or SSE chunks)
# ---------------------------------------------------------------------------


class ResponseAccumulator:
    """Builds one :class:`UpstreamResult` from one or more ``GenerateContentResponse`` objects.

    A unary body is a single response; a stream is many, each carrying only
    its new parts, the last one the ``finishReason`` and ``usageMetadata``.
    :meth:`add` merges one and returns the draft images it carried, so a
    streaming caller can forward them at once; :meth:`result` classifies the
    whole answer.
    """

    def __init__(self, *, model: str = "", streaming: bool = False) -> None:
        self._model = model
        self._streaming = streaming
        self._chunks = 0
        self._saw_candidate = False
        self._parts: list[Part] = []
        self._drafts: list[InlineImage] = []
        self._finish_reason = ""
        self._finish_message = ""
        self._block_reason = ""
        self._block_message = ""
        self._usage = Usage()
        self._model_version = ""
        self._response_id = ""

    @property
    def chunks(self) -> int:
        """How many responses were merged so far."""
        return self._chunks

    def add_json(self, text: str | bytes) -> list[InlineImage]:
        """Parse one JSON response text and :meth:`add` it."""
        try:
            obj = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise _malformed(f"invalid JSON ({_quote(str(exc), 120)})", self._model) from None
        return self.add(obj)

    def add(self, response: Any) -> list[InlineImage]:
        """Merge one decoded response; return the ``thought: true`` images in it.

        An ``error`` envelope (a proxy's 200 with an error body, or an error
        written into a stream) raises its classified :class:`UpstreamError`.
        """
        resp = _as_mapping(response, "response", self._model)
        if "error" in resp:
            envelope = parse_error_envelope(resp)
            if envelope is None:
                raise _malformed("error field is not an error envelope", self._model)
            raise classify_error_envelope(envelope, http_status=envelope.code, model=self._model)
        self._chunks += 1
        if (version := _get(resp, "modelVersion")) is not None:
            self._model_version = _as_str(version)
        if (response_id := _get(resp, "responseId")) is not None:
            self._response_id = _as_str(response_id)
        if (usage := _get(resp, "usageMetadata")) is not None:
            self._usage = _parse_usage(_as_mapping(usage, "usageMetadata", self._model))
        if (feedback := _get(resp, "promptFeedback")) is not None:
            feedback = _as_mapping(feedback, "promptFeedback", self._model)
            reason = _as_str(_get(feedback, "blockReason"))
            if reason and reason != "BLOCKED_REASON_UNSPECIFIED":
                self._block_reason = reason
                self._block_message = _as_str(_get(feedback, "blockReasonMessage"))
        candidates = _as_list(_get(resp, "candidates"), "candidates", self._model)
        if not candidates:
            return []
        # Image models fix candidateCount at 1; anything else is ignored.
        candidate = _as_mapping(candidates[0], "candidates[0]", self._model)
        self._saw_candidate = True
        if (finish := _get(candidate, "finishReason")) is not None:
            self._finish_reason = _as_str(finish)
        if (finish_message := _get(candidate, "finishMessage")) is not None:
            self._finish_message = _as_str(finish_message)
        content = _get(candidate, "content")
        if content is None:
            return []
        content = _as_mapping(content, "candidates[0].content", self._model)
        drafts: list[InlineImage] = []
        for index, raw_part in enumerate(_as_list(_get(content, "parts"), "content.parts", self._model)):
            raw = _as_mapping(raw_part, f"parts[{index}]", self._model)
            if _get(raw, "thought") is True:
                draft = self._draft(raw)
                if draft is not None:
                    drafts.append(draft)
                # Thought parts never carry signatures and must not be echoed
                # back as plain parts, so they stay out of the model turn.
                continue
            part = self._part(raw, index)
            if part is not None:
                self._parts.append(part)
        self._drafts.extend(drafts)
        return drafts

    def _draft(self, raw: Mapping[str, Any]) -> InlineImage | None:
        inline = _get(raw, "inlineData")
        if not isinstance(inline, Mapping):
            return None
        # A broken preview is not worth failing (and re-running) a whole
        # generation for: drop it and let the final image decide.
        try:
            data = decode_base64(_get(inline, "data"), "draft image data")
            mime, _, _ = probe_image(data, _as_str(_get(inline, "mimeType")))
        except (UpstreamError, ValueError):
            return None
        return InlineImage(data=data, mime_type=mime)

    def _part(self, raw: Mapping[str, Any], index: int) -> Part | None:
        signature_raw = _get(raw, "thoughtSignature")
        signature = (
            None
            if signature_raw is None
            else decode_base64(signature_raw, f"parts[{index}].thoughtSignature", model=self._model)
        )
        image: InlineImage | None = None
        inline = _get(raw, "inlineData")
        if inline is not None:
            inline = _as_mapping(inline, f"parts[{index}].inlineData", self._model)
            data = decode_base64(_get(inline, "data"), f"parts[{index}].inlineData.data", model=self._model)
            image = InlineImage(data=data, mime_type=_as_str(_get(inline, "mimeType")))
        text = _get(raw, "text")
        if text is not None and not isinstance(text, str):
            raise _malformed(f"parts[{index}].text is not a string", self._model)
        if image is None and text is None and signature is None:
            # functionCall, executableCode and the like: nothing an image
            # caller can use or that needs echoing for signature checks.
            return None
        return Part(text=text if image is None else None, image=image, thought_signature=signature)

    def result(self) -> UpstreamResult:
        """The classified answer: an :class:`UpstreamResult`, or raises :class:`UpstreamError`."""
        model = self._model
        text = "\n".join(p.text for p in self._parts if p.image is None and p.text)
        if self._block_reason:
            detail = f": {_quote(self._block_message)}" if self._block_message else ""
            raise UpstreamError(
                ErrorKind.CONTENT_BLOCKED,
                f"Gemini blocked the prompt ({self._block_reason}){detail}",
                block_reason=self._block_reason,
                block_side="prompt",
                finish_reason=self._finish_reason,
                model_text=text,
                model=model,
            )
        if not self._saw_candidate:
            what = "stream had no events" if self._chunks == 0 else "answer has no candidates"
            raise _malformed(f"{what} and no promptFeedback.blockReason", model)
        finish = self._finish_reason
        finish_detail = f": {_quote(self._finish_message)}" if self._finish_message else ""
        if finish in BLOCK_FINISH_REASONS:
            raise UpstreamError(
                ErrorKind.CONTENT_BLOCKED,
                f"Gemini blocked the output (finishReason {finish}){finish_detail}",
                block_reason=finish,
                block_side="output",
                finish_reason=finish,
                model_text=text,
                model=model,
            )
        if finish == "MISSING_THOUGHT_SIGNATURE":
            raise UpstreamError(
                ErrorKind.MISSING_THOUGHT_SIGNATURE,
                f"Gemini rejected the history: a part is missing its thought signature{finish_detail}",
                finish_reason=finish,
                model_text=text,
                model=model,
            )
        images = [p for p in self._parts if p.image is not None]
        if not images:
            if self._streaming and not finish:
                raise UpstreamError(
                    ErrorKind.UNAVAILABLE,
                    "Gemini's stream ended before a finishReason or an image",
                    model=model,
                )
            said = f"; it said: {_quote(text)}" if text else ""
            raise UpstreamError(
                ErrorKind.NO_IMAGE,
                f"Gemini answered without an image (finishReason {finish or 'unset'}){finish_detail}{said}",
                finish_reason=finish,
                model_text=text,
                model=model,
            )
        # "The last image within Thinking is also the final rendered image":
        # when several non-thought images come back, the last one is the result.
        final = images[-1]
        assert final.image is not None
        try:
            mime, width, height = probe_image(final.image.data, final.image.mime_type)
        except ValueError as exc:
            raise _malformed(f"final image: {exc}", model) from None
        image = InlineImage(data=final.image.data, mime_type=mime)
        return UpstreamResult(
            image=image,
            width=width,
            height=height,
            thought_signature=final.thought_signature,
            text=text,
            finish_reason=finish,
            usage=self._usage,
            model_version=self._model_version,
            response_id=self._response_id,
            parts=tuple(self._parts),
            drafts=tuple(self._drafts),
        )


def _parse_usage(usage: Mapping[str, Any]) -> Usage:
    return Usage(
        prompt_tokens=_as_int(_get(usage, "promptTokenCount")),
        output_tokens=_as_int(_get(usage, "candidatesTokenCount")),
        thoughts_tokens=_as_int(_get(usage, "thoughtsTokenCount")),
        total_tokens=_as_int(_get(usage, "totalTokenCount")),
    )


def parse_response(body: str | bytes | Mapping[str, Any], *, model: str = "") -> UpstreamResult:
    """Classify a unary ``generateContent`` 2xx body.

    Returns the result or raises one :class:`UpstreamError` (CONTENT_BLOCKED,
    NO_IMAGE, MISSING_THOUGHT_SIGNATURE, MALFORMED, or the kind of an error
    envelope found in the body).
    """
    acc = ResponseAccumulator(model=model)
    if isinstance(body, Mapping):
        acc.add(body)
    else:
        acc.add_json(body)
    return acc.result()


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ErrorEnvelope:
    """A decoded ``{"error": google.rpc.Status}`` body with its known details."""

    code: int | None
    message: str
    status: str
    reason: str = ""
    domain: str = ""
    metadata: tuple[tuple[str, str], ...] = ()
    retry_delay: float | None = None
    quota_violations: tuple[QuotaViolation, ...] = ()
    field_violations: tuple[FieldViolation, ...] = ()
    help_links: tuple[tuple[str, str], ...] = ()
    localized_message: str = ""


def parse_duration(value: Any) -> float | None:
    """Seconds in a protobuf ``Duration`` (``"22s"``, ``"45.837906927s"`` or ``{seconds, nanos}``)."""
    if isinstance(value, str):
        match = _DURATION_RE.fullmatch(value)
        return max(0.0, float(match.group(1))) if match else None
    if isinstance(value, Mapping):
        seconds = _as_int(_get(value, "seconds"))
        nanos = _as_int(_get(value, "nanos"))
        return max(0.0, seconds + nanos / 1e9)
    return None


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from an HTTP ``Retry-After`` header (delta-seconds or HTTP-date).

    ``now`` is the current Unix time (for tests). A date in the past gives 0;
    an unreadable value gives None.
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000" dates parse naive; HTTP-dates are GMT.
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def _details(raw: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    quota: list[QuotaViolation] = []
    fields: list[FieldViolation] = []
    links: list[tuple[str, str]] = []
    for item in raw if isinstance(raw, list) else []:
        if not isinstance(item, Mapping):
            continue
        kind = _as_str(item.get("@type")).rsplit("/", 1)[-1]
        if kind == "google.rpc.ErrorInfo":
            out.setdefault("reason", _as_str(item.get("reason")))
            out.setdefault("domain", _as_str(item.get("domain")))
            metadata = item.get("metadata")
            if isinstance(metadata, Mapping):
                out.setdefault("metadata", tuple((str(k), str(v)) for k, v in metadata.items()))
        elif kind == "google.rpc.RetryInfo":
            delay = parse_duration(_get(item, "retryDelay"))
            if delay is not None:
                out.setdefault("retry_delay", delay)
        elif kind == "google.rpc.QuotaFailure":
            for v in _get(item, "violations") or ():
                if isinstance(v, Mapping):
                    quota.append(
                        QuotaViolation(
                            quota_metric=_as_str(_get(v, "quotaMetric")),
                            quota_id=_as_str(_get(v, "quotaId")),
                            quota_value=str(_get(v, "quotaValue") or ""),
                            description=_as_str(_get(v, "description")),
                        )
                    )
        elif kind == "google.rpc.BadRequest":
            for v in _get(item, "fieldViolations") or ():
                if isinstance(v, Mapping):
                    fields.append(
                        FieldViolation(field=_as_str(_get(v, "field")), description=_as_str(_get(v, "description")))
                    )
        elif kind == "google.rpc.Help":
            for link in _get(item, "links") or ():
                if isinstance(link, Mapping):
                    links.append((_as_str(link.get("description")), _as_str(link.get("url"))))
        elif kind == "google.rpc.LocalizedMessage":
            out.setdefault("localized_message", _as_str(item.get("message")))
    out["quota_violations"] = tuple(quota)
    out["field_violations"] = tuple(fields)
    out["help_links"] = tuple(links)
    return out


def parse_error_envelope(body: Any) -> ErrorEnvelope | None:
    """Decode ``{"error": {code, message, status, details}}``; None if ``body`` is not one.

    ``body`` may be the JSON text or the decoded object. Some proxies send the
    Status bare (no ``error`` wrapper) or wrap it in a one-element list; both
    are accepted.
    """
    if isinstance(body, bytes | str):
        try:
            body = json.loads(body)
        except (ValueError, RecursionError):
            return None
    if isinstance(body, list) and len(body) == 1:
        body = body[0]
    if not isinstance(body, Mapping):
        return None
    error = body.get("error", body)
    if not isinstance(error, Mapping) or not ({"code", "status", "message"} & error.keys()):
        return None
    code = error.get("code")
    return ErrorEnvelope(
        code=code if isinstance(code, int) and not isinstance(code, bool) else None,
        message=_as_str(error.get("message")),
        status=_as_str(error.get("status")).upper(),
        **_details(error.get("details")),
    )


def _header(headers: Mapping[str, str] | None, name: str) -> str | None:
    if not headers:
        return None
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    for key, val in headers.items():
        if key.lower() == lowered:
            return val
    return None


def _body_snippet(body: bytes) -> str:
    text = body[:4096].decode("utf-8", "replace")
    return _quote(_TAG_RE.sub(" ", text), 200)


def classify_http_error(
    http_status: int,
    body: bytes,
    headers: Mapping[str, str] | None = None,
    *,
    model: str = "",
    reason_phrase: str = "",
    now: float | None = None,
) -> UpstreamError:
    """Classify a non-2xx answer into exactly one :class:`UpstreamError`.

    A JSON error envelope is decoded; any other body (a proxy's HTML page, an
    empty body) is classified by HTTP status alone. ``Retry-After`` is honoured
    when the body carries no ``RetryInfo``.
    """
    header_delay = parse_retry_after(_header(headers, "Retry-After"), now)
    envelope = parse_error_envelope(body)
    if envelope is None:
        snippet = _body_snippet(body)
        phrase = reason_phrase or "error"
        envelope = ErrorEnvelope(code=http_status, message=f"{phrase}: {snippet}" if snippet else phrase, status="")
    return classify_error_envelope(envelope, http_status=http_status, retry_after_header=header_delay, model=model)


def _error_kind(code: int | None, envelope: ErrorEnvelope) -> ErrorKind:
    status, reason, message = envelope.status, envelope.reason, envelope.message
    if (
        reason.startswith("API_KEY_")
        or code in (401, 403)
        or status in ("UNAUTHENTICATED", "PERMISSION_DENIED")
        or (code == 400 and _API_KEY_MESSAGE_RE.search(message))
    ):
        return ErrorKind.AUTH
    if _MISSING_SIGNATURE_RE.search(message):
        return ErrorKind.MISSING_THOUGHT_SIGNATURE
    if code == 404 or (code is None and status == "NOT_FOUND"):
        return ErrorKind.NOT_FOUND
    if code == 429 or (code is None and status == "RESOURCE_EXHAUSTED"):
        if any(v.per_day for v in envelope.quota_violations):
            return ErrorKind.QUOTA_EXHAUSTED
        return ErrorKind.RATE_LIMITED
    if code in (408, 504) or (code is None and status == "DEADLINE_EXCEEDED"):
        return ErrorKind.DEADLINE_EXCEEDED
    if code is not None and code >= 500:
        return ErrorKind.UNAVAILABLE
    if status == "FAILED_PRECONDITION":
        return ErrorKind.FAILED_PRECONDITION
    if code is None:
        if status in ("UNAVAILABLE", "INTERNAL", "UNKNOWN", "ABORTED", "CANCELLED"):
            return ErrorKind.UNAVAILABLE
        if status in ("INVALID_ARGUMENT", "OUT_OF_RANGE"):
            return ErrorKind.INVALID_ARGUMENT
        return ErrorKind.MALFORMED
    if code in (409, 499):  # ABORTED / CANCELLED on Google's side: transient
        return ErrorKind.UNAVAILABLE
    if 300 <= code < 400:
        # Gemini never redirects; a redirect means a wrong base URL or a
        # captive proxy, which retrying will not fix.
        return ErrorKind.FAILED_PRECONDITION
    if 400 <= code < 500:
        return ErrorKind.INVALID_ARGUMENT
    return ErrorKind.MALFORMED


def classify_error_envelope(
    envelope: ErrorEnvelope,
    *,
    http_status: int | None,
    retry_after_header: float | None = None,
    model: str = "",
) -> UpstreamError:
    """Turn a decoded error envelope into one :class:`UpstreamError`.

    ``http_status`` decides first (it is what Gemini's front end chose);
    ``envelope.status`` decides when there is none (an error inside a stream
    or a proxy's 200). ``retry_after`` comes from ``RetryInfo``, then the
    ``Retry-After`` header, then the "Please retry in Xs" text of the message.
    """
    code = http_status if http_status is not None else envelope.code
    kind = _error_kind(code, envelope)
    retry_after = envelope.retry_delay
    if retry_after is None:
        retry_after = retry_after_header
    if retry_after is None and kind in (ErrorKind.RATE_LIMITED, ErrorKind.QUOTA_EXHAUSTED):
        match = _RETRY_IN_MESSAGE_RE.search(envelope.message)
        if match:
            retry_after = float(match.group(1)) / (1000.0 if match.group(2).lower() == "ms" else 1.0)
    content_index = part_index = None
    position = _SIGNATURE_POSITION_RE.search(envelope.message)
    if kind is ErrorKind.MISSING_THOUGHT_SIGNATURE and position:
        # Gemini counts from 1 ("content position 2" is the model turn of
        # [user, model, user]); we report 0-based indices.
        content_index = max(0, int(position.group(1)) - 1)
        part_index = max(0, int(position.group(2)) - 1)
    label = " ".join(x for x in (str(code) if code is not None else "", envelope.status) if x)
    upstream = _quote(envelope.message) if envelope.message else "(no message)"
    prefix = {
        ErrorKind.AUTH: "Gemini rejected our API key or its permissions",
        ErrorKind.NOT_FOUND: f"Gemini does not know model {model!r}" if model else "Gemini: not found",
        ErrorKind.QUOTA_EXHAUSTED: "Gemini daily quota exhausted",
        ErrorKind.RATE_LIMITED: "Gemini rate limit",
        ErrorKind.MISSING_THOUGHT_SIGNATURE: "Gemini rejected the history (missing thought signature)",
    }.get(kind, "Gemini error")
    message = f"{prefix} [{label}]: {upstream}" if label else f"{prefix}: {upstream}"
    return UpstreamError(
        kind,
        message,
        http_status=code,
        upstream_status=envelope.status,
        upstream_reason=envelope.reason,
        retry_after=retry_after,
        quota_violations=envelope.quota_violations,
        field_violations=envelope.field_violations,
        signature_content_index=content_index,
        signature_part_index=part_index,
        model=model,
    )
