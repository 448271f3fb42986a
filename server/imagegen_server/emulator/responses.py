"""Building ``GenerateContentResponse`` JSON: parts, signatures, usage, chunks.

Answers are built as the list of chunks ``streamGenerateContent`` sends
(drafts first, then any text, then the final image with ``finishReason`` and
``usageMetadata``); the unary answer is those chunks merged. One builder for
both keeps the two shapes consistent, as they are on the real API.
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..models import ModelSpec
from .render import RenderedImage
from .signatures import text_signature
from .wire import GenerateCall

JsonObject = dict[str, Any]

#: Gemini's finishMessage texts for filtered images.
IMAGE_SAFETY_MESSAGE = (
    "Unable to show the generated image. The image was filtered out because it violated Google's "
    "Generative AI Prohibited Use policy. You will not be charged for blocked images. Try rephrasing the "
    "prompt. If you think this was an error, send feedback."
)
IMAGE_OTHER_MESSAGE = (
    "Unable to show the generated image. The model could not generate the image based on the prompt "
    "provided. You will not be charged for blocked images. Try rephrasing the prompt. If you think this "
    "was an error, send feedback."
)
REFUSAL_TEXT = (
    "I can't create that image. Could you tell me more about what you would like to see, or describe a different scene?"
)
THOUGHT_TEXT = (
    "**Planning the composition**\n\nI'm sketching the layout and the main shapes first, "
    "then refining colours and details for the final render."
)
#: Bytes the ``not_image`` step sends as a "PNG".
NOT_AN_IMAGE = b"this is definitely not a PNG file, just some bytes pretending to be one\n" * 4


def b64(data: bytes) -> str:
    """Standard base64, as Gemini sends bytes."""
    return base64.b64encode(data).decode("ascii")


def new_response_id() -> str:
    """An opaque id in the style of Gemini's ``responseId``."""
    return secrets.token_urlsafe(16)


@dataclass(slots=True)
class Answer:
    """One answer as stream chunks; ``merged()`` gives the unary body."""

    model_version: str
    response_id: str = field(default_factory=new_response_id)
    chunks: list[JsonObject] = field(default_factory=list)

    def add(self, parts: list[JsonObject] | None = None, /, **extra: Any) -> None:
        """Append a chunk with these candidate ``parts`` and response-level ``extra`` fields."""
        chunk: JsonObject = {}
        candidate: JsonObject = {}
        if parts:
            candidate["content"] = {"parts": parts, "role": "model"}
        if "finishReason" in extra:
            candidate["finishReason"] = extra.pop("finishReason")
        if "finishMessage" in extra:
            candidate["finishMessage"] = extra.pop("finishMessage")
        if candidate:
            candidate["index"] = 0
            chunk["candidates"] = [candidate]
        chunk.update(extra)
        chunk["modelVersion"] = self.model_version
        chunk["responseId"] = self.response_id
        self.chunks.append(chunk)

    def merged(self) -> JsonObject:
        """The unary ``generateContent`` body: all parts in one candidate, last chunk's metadata."""
        parts: list[JsonObject] = []
        candidate: JsonObject = {}
        merged: JsonObject = {}
        for chunk in self.chunks:
            for cand in chunk.get("candidates", []):
                parts.extend(cand.get("content", {}).get("parts", []))
                candidate.update({k: v for k, v in cand.items() if k != "content"})
            merged.update({k: v for k, v in chunk.items() if k != "candidates"})
        if candidate or parts:
            if parts:
                candidate = {"content": {"parts": parts, "role": "model"}, **candidate}
            candidate.setdefault("index", 0)
            return {"candidates": [candidate], **merged}
        return merged


def image_part(
    image: RenderedImage, *, thought: bool = False, signed: bool = False, corruption: str = ""
) -> JsonObject:
    """An ``inlineData`` part; ``signed`` final images carry a signature derived from their bytes.

    Only thinking models (Gemini 3) issue signatures; thought parts never carry one.
    """
    data = image.base64
    if corruption == "bad_base64":
        data = "%%not*base64%%" + data[:48]
    elif corruption == "not_image":
        data = b64(NOT_AN_IMAGE)
    part: JsonObject = {"inlineData": {"mimeType": "image/png", "data": data}}
    if thought:
        part["thought"] = True
    elif signed:
        # Signed over the real bytes even when corrupted: the corruption is in transit.
        part["thoughtSignature"] = b64(image.signature)
    return part


def text_part(text: str, *, signed: bool) -> JsonObject:
    """A text part; ``signed`` for the first text right after the thoughts (section 3)."""
    part: JsonObject = {"text": text}
    if signed:
        part["thoughtSignature"] = b64(text_signature(text))
    return part


#: Output tokens Gemini bills per image, per model and size tier (gemini-api.md
#: section 2, "Output tokens per image"). 2.5 Flash has no tiers; the 3.1 Flash
#: Lite row has no published figures and reuses 3.1 Flash's 1K count.
OUTPUT_TOKENS_PER_IMAGE: dict[str, dict[str, int]] = {
    "gemini-2.5-flash-image": {"": 1290},
    "gemini-3-pro-image": {"1K": 1120, "2K": 1120, "4K": 2000},
    "gemini-3.1-flash-image": {"512": 747, "1K": 1120, "2K": 1680, "4K": 2520},
    "gemini-3.1-flash-lite-image": {"1K": 1120},
}


def output_tokens(spec: ModelSpec, image_size: str) -> int:
    """Tokens billed per output image by ``spec``'s model at this size tier."""
    tier = (image_size or spec.default_image_size) if spec.image_sizes else ""
    return OUTPUT_TOKENS_PER_IMAGE[spec.name][tier]


def prompt_details(call: GenerateCall) -> list[JsonObject]:
    """``promptTokensDetails``: the prompt's tokens per modality."""
    details: list[JsonObject] = [{"modality": "TEXT", "tokenCount": call.text_tokens}]
    if call.image_tokens:
        details.append({"modality": "IMAGE", "tokenCount": call.image_tokens})
    return details


def count_tokens_body(call: GenerateCall) -> JsonObject:
    """A ``CountTokensResponse``: the same prompt count ``usageMetadata`` reports for this request."""
    return {"totalTokens": call.text_tokens + call.image_tokens, "promptTokensDetails": prompt_details(call)}


def usage(
    call: GenerateCall,
    *,
    image_tokens: int = 0,
    text_tokens: int = 0,
    thoughts_tokens: int = 0,
) -> JsonObject:
    """``usageMetadata`` with per-modality details."""
    prompt = call.text_tokens + call.image_tokens
    candidates = image_tokens + text_tokens
    out: JsonObject = {"promptTokenCount": prompt}
    if candidates:
        out["candidatesTokenCount"] = candidates
    out["totalTokenCount"] = prompt + candidates + thoughts_tokens
    out["promptTokensDetails"] = prompt_details(call)
    candidate_details = []
    if text_tokens:
        candidate_details.append({"modality": "TEXT", "tokenCount": text_tokens})
    if image_tokens:
        candidate_details.append({"modality": "IMAGE", "tokenCount": image_tokens})
    if candidate_details:
        out["candidatesTokensDetails"] = candidate_details
    if thoughts_tokens:
        out["thoughtsTokenCount"] = thoughts_tokens
    return out


# orjson, not json: a realistic 4K answer carries 29 MB of base64, which the
# stdlib's indenting encoder takes hundreds of milliseconds to write and orjson
# a few; the emulator must not be what a benchmark measures.


def _half(data: bytes, corrupt: bool) -> bytes:
    return data[: len(data) // 2] if corrupt else data


def encode_chunk(chunk: JsonObject, *, corrupt: bool = False) -> bytes:
    """One SSE event: ``data: <one-line JSON>\\r\\n\\r\\n``."""
    return b"data: " + _half(orjson.dumps(chunk), corrupt) + b"\r\n\r\n"


def encode_unary(body: JsonObject, *, corrupt: bool = False) -> bytes:
    """A unary body, pretty-printed as Google does."""
    return _half(orjson.dumps(body, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE), corrupt)


def encode_json_array(chunks: list[JsonObject], *, corrupt: bool = False) -> bytes:
    """``streamGenerateContent`` without ``alt=sse``: a JSON array of the chunks."""
    text = b"[" + b",\r\n".join(orjson.dumps(c, option=orjson.OPT_INDENT_2) for c in chunks) + b"]"
    return _half(text, corrupt)
