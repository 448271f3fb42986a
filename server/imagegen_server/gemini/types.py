"""Plain typed values exchanged with the Gemini client.

The client turns an :class:`UpstreamRequest` into Gemini's JSON and Gemini's
answer into an :class:`UpstreamResult` or an
:class:`~imagegen_server.gemini.errors.UpstreamError`. Nothing here knows about
gRPC or protobuf.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Role = Literal["user", "model"]


@dataclass(frozen=True, slots=True)
class InlineImage:
    """Encoded image bytes and their media type, as in Gemini's ``inlineData``."""

    data: bytes
    mime_type: str


@dataclass(frozen=True, slots=True)
class Part:
    """One Gemini content part: text or an image, with its thought flags.

    ``thought_signature`` is the raw (base64-decoded) signature; it must be
    echoed byte for byte in later turns.
    """

    text: str | None = None
    image: InlineImage | None = None
    thought: bool = False
    thought_signature: bytes | None = None


@dataclass(frozen=True, slots=True)
class Content:
    """One conversation turn."""

    role: Role
    parts: tuple[Part, ...]


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    """Everything needed to build one ``generateContent`` call."""

    model: str
    contents: tuple[Content, ...]
    seed: int | None = None
    aspect_ratio: str | None = None
    image_size: str | None = None
    response_modalities: tuple[str, ...] = ("TEXT", "IMAGE")
    #: Sent as ``systemInstruction`` (the server's constraint text), if any.
    system_instruction: str | None = None
    #: Ask for thought parts (draft images) too; used by streaming previews.
    include_thoughts: bool = False


@dataclass(frozen=True, slots=True)
class Usage:
    """Token accounting from Gemini's ``usageMetadata``.

    The upstream layer's own value, free of protobuf: the service copies it field
    for field into ``imagegen.v1.Usage``, which the SDK reads as ``imagegen.Usage``
    (a test keeps the three field lists equal).
    """

    #: ``promptTokenCount``.
    prompt_tokens: int = 0
    #: ``candidatesTokenCount``.
    output_tokens: int = 0
    #: ``thoughtsTokenCount``.
    thoughts_tokens: int = 0
    #: ``totalTokenCount``.
    total_tokens: int = 0


@dataclass(frozen=True, slots=True)
class UpstreamResult:
    """A successful answer: the final (non-thought) image and its context."""

    image: InlineImage
    width: int
    height: int
    #: Signature on the final image part.
    thought_signature: bytes | None
    #: Non-thought text parts, joined with newlines.
    text: str
    #: Gemini's ``finishReason`` string, e.g. ``"STOP"``.
    finish_reason: str
    usage: Usage
    model_version: str
    response_id: str
    #: The model turn to echo in later history: non-thought parts, in order,
    #: each with its signature.
    parts: tuple[Part, ...]
    #: Interim ``thought: true`` images, in arrival order (never the result).
    drafts: tuple[InlineImage, ...] = field(default=())
