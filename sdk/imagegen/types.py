"""Typed results and stream events returned by :class:`imagegen.Client` and :class:`imagegen.AsyncClient`.

Every type here is a frozen dataclass built from an ``imagegen.v1`` protobuf
message. Result types keep the message they came from as ``.raw`` (excluded
from equality and ``repr``), so callers who need a field the wrapper does not
expose can still reach it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeAlias

import grpc

from imagegen._mime import sniff_mime_type
from imagegen.v1 import image_generation_service_pb2 as service_pb2
from imagegen.v1 import image_pb2

__all__ = [
    "Accepted",
    "AttemptFailed",
    "AttemptStarted",
    "Completed",
    "GenerationResult",
    "Heartbeat",
    "Image",
    "ImageInput",
    "ModelFallback",
    "ModelInfo",
    "Part",
    "Preview",
    "Role",
    "StreamEvent",
    "Turn",
    "Usage",
    "sniff_mime_type",
]

#: Who authored a conversation turn.
Role: TypeAlias = Literal["user", "model"]

_ROLE_TO_PROTO: dict[str, image_pb2.Role.ValueType] = {
    "user": image_pb2.ROLE_USER,
    "model": image_pb2.ROLE_MODEL,
}
_ROLE_FROM_PROTO: dict[int, Role] = {image_pb2.ROLE_USER: "user", image_pb2.ROLE_MODEL: "model"}

_EXTENSIONS: dict[str, str] = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/webp": ".webp",
    "image/heic": ".heic",
    "image/heif": ".heif",
    "image/gif": ".gif",
}


@dataclass(frozen=True, slots=True)
class Image:
    """An encoded image: bytes, media type and (for server output) its pixel size.

    Build input images with :meth:`from_path` or :meth:`from_bytes`, or pass raw
    bytes or a path straight to ``input_images=``. Width and height are 0 when
    unknown (the server reads the real size from the bytes).
    """

    #: The encoded image bytes (PNG, JPEG, WebP, HEIC or HEIF).
    data: bytes = field(repr=False)
    #: IANA media type such as ``image/png``; ``""`` lets the server detect it.
    mime_type: str = ""
    #: Width in pixels (0 when unknown).
    width: int = 0
    #: Height in pixels (0 when unknown).
    height: int = 0

    @classmethod
    def from_bytes(cls, data: bytes, mime_type: str | None = None) -> Image:
        """Wrap encoded bytes; the media type is sniffed when not given."""
        return cls(data=bytes(data), mime_type=mime_type if mime_type is not None else sniff_mime_type(data))

    @classmethod
    def from_path(cls, path: str | os.PathLike[str]) -> Image:
        """Read an image file; the media type is sniffed from its leading bytes."""
        return cls.from_bytes(Path(path).read_bytes())

    @classmethod
    def from_proto(cls, message: image_pb2.Image) -> Image:
        """Build from an ``imagegen.v1.Image`` message (bytes copied as they are)."""
        return cls(data=message.data, mime_type=message.mime_type, width=message.width, height=message.height)

    def to_proto(self) -> image_pb2.Image:
        """Return the ``imagegen.v1.Image`` message (width and height are output-only and not sent)."""
        return image_pb2.Image(data=self.data, mime_type=self.mime_type)

    @property
    def extension(self) -> str:
        """A file extension matching :attr:`mime_type` (``.png`` when unknown)."""
        return _EXTENSIONS.get(self.mime_type, ".png")

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` in pixels."""
        return (self.width, self.height)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the encoded bytes to ``path`` (parents must exist) and return it as a :class:`Path`."""
        target = Path(path)
        target.write_bytes(self.data)
        return target

    def __repr__(self) -> str:
        return f"Image(mime_type={self.mime_type!r}, width={self.width}, height={self.height}, {len(self.data)} bytes)"


#: Anything accepted where an input image is expected: raw bytes, a file path,
#: an :class:`Image` or an ``imagegen.v1.Image`` message.
ImageInput: TypeAlias = bytes | str | os.PathLike[str] | Image | image_pb2.Image


@dataclass(frozen=True, slots=True)
class Part:
    """One part of a conversation turn: text or an image, with its opaque thought signature.

    Signatures are kept byte for byte; Gemini 3 image models reject a model
    image part sent back without its signature.
    """

    #: The text, when this is a text part.
    text: str | None = None
    #: The image, when this is an image part.
    image: Image | None = None
    #: The opaque signature Gemini attached to this part (``b""`` when none).
    thought_signature: bytes = field(default=b"", repr=False)
    #: True for interim "thought" parts.
    thought: bool = False

    @classmethod
    def from_proto(cls, message: image_pb2.Part) -> Part:
        """Build from an ``imagegen.v1.Part`` message."""
        which = message.WhichOneof("data")
        return cls(
            text=message.text if which == "text" else None,
            image=Image.from_proto(message.image) if which == "image" else None,
            thought_signature=message.thought_signature,
            thought=message.thought,
        )

    def to_proto(self) -> image_pb2.Part:
        """Return the ``imagegen.v1.Part`` message."""
        part = image_pb2.Part(thought_signature=self.thought_signature, thought=self.thought)
        if self.image is not None:
            part.image.CopyFrom(
                image_pb2.Image(
                    data=self.image.data,
                    mime_type=self.image.mime_type,
                    width=self.image.width,
                    height=self.image.height,
                )
            )
        elif self.text is not None:
            part.text = self.text
        return part


@dataclass(frozen=True, slots=True)
class Turn:
    """One turn of a multi-turn conversation: a role and its parts, in order."""

    #: ``"user"`` or ``"model"``.
    role: Role
    #: The parts of the turn, in order.
    parts: tuple[Part, ...] = ()

    @classmethod
    def from_proto(cls, message: image_pb2.Turn, *, default_role: Role | None = None) -> Turn:
        """Build from an ``imagegen.v1.Turn`` message; ``default_role`` applies when its role is unset."""
        role = _ROLE_FROM_PROTO.get(message.role, default_role)
        if role is None:
            raise ValueError(f"turn has no valid role: {message.role}")
        return cls(role=role, parts=tuple(Part.from_proto(p) for p in message.parts))

    def to_proto(self) -> image_pb2.Turn:
        """Return the ``imagegen.v1.Turn`` message."""
        return image_pb2.Turn(role=_ROLE_TO_PROTO[self.role], parts=[p.to_proto() for p in self.parts])

    @property
    def text(self) -> str:
        """The text parts (not thoughts), concatenated."""
        return "".join(p.text for p in self.parts if p.text is not None and not p.thought)

    @property
    def images(self) -> tuple[Image, ...]:
        """The image parts (not thoughts), in order."""
        return tuple(p.image for p in self.parts if p.image is not None and not p.thought)


def image_turn(turn: Turn, image: Image) -> Turn:
    """``turn`` with the final image's bytes put back into its byte-less image part.

    The server sends the final image once, in ``Generation.image``; the model
    turn's part for it has the mime type and size only. A turn that already has
    its bytes (e.g. restored from JSON) is returned unchanged.
    """
    if not any(p.image is not None and not p.image.data and not p.thought for p in turn.parts):
        return turn
    parts = tuple(
        Part(image=image, thought_signature=p.thought_signature, thought=p.thought)
        if p.image is not None and not p.image.data and not p.thought
        else p
        for p in turn.parts
    )
    return Turn(role=turn.role, parts=parts)


@dataclass(frozen=True, slots=True)
class Usage:
    """Token accounting reported by the upstream model: the SDK's view of ``imagegen.v1.Usage``.

    The server copies Gemini's ``usageMetadata`` into that message field for field.
    """

    #: Tokens in the prompt, images included.
    prompt_tokens: int = 0
    #: Tokens in the answer.
    output_tokens: int = 0
    #: Tokens spent thinking.
    thoughts_tokens: int = 0
    #: All tokens billed for the call.
    total_tokens: int = 0

    @classmethod
    def from_proto(cls, message: image_pb2.Usage) -> Usage:
        """Build from an ``imagegen.v1.Usage`` message."""
        return cls(
            prompt_tokens=message.prompt_tokens,
            output_tokens=message.output_tokens,
            thoughts_tokens=message.thoughts_tokens,
            total_tokens=message.total_tokens,
        )


def finish_reason_name(value: int) -> str:
    """The short name of a ``FinishReason`` value: ``"STOP"``, ``"IMAGE_SAFETY"``, ``"UNSPECIFIED"``..."""
    try:
        name = image_pb2.FinishReason.Name(value)  # type: ignore[arg-type]
    except ValueError:
        return str(value)
    return name.removeprefix("FINISH_REASON_")


def fallback_reason_name(value: int) -> str:
    """A ``FallbackReason`` value as ``"unavailable"``, ``"rate_limited"``, ``"circuit_open"``; ``""`` for none."""
    if value == image_pb2.FALLBACK_REASON_UNSPECIFIED:
        return ""
    try:
        return image_pb2.FallbackReason.Name(value).removeprefix("FALLBACK_REASON_").lower()  # type: ignore[arg-type]
    except ValueError:
        return str(value)


def stop_reason_name(value: int) -> str:
    """A ``RetryStopReason`` value as ``"retry_budget"`` and the like; ``""`` for none."""
    if value == service_pb2.RETRY_STOP_REASON_UNSPECIFIED:
        return ""
    try:
        return service_pb2.RetryStopReason.Name(value).removeprefix("RETRY_STOP_REASON_").lower()  # type: ignore[arg-type]
    except ValueError:
        return str(value)


@dataclass(frozen=True, slots=True)
class GenerationResult:
    """The result of one successful Generate or Refine: the image and how it was made."""

    #: The final image, with its real pixel size.
    image: Image
    #: Server-assigned id of this generation (also in the server's logs).
    generation_id: str
    #: The seed sent upstream: yours or the one the server picked.
    seed: int
    #: The model id the request was served with.
    model: str
    #: The model version the upstream reported.
    model_version: str
    #: Upstream attempts made, the successful one included.
    attempts: int
    #: Server-side wall time from acceptance to the final image, in seconds.
    inference_time: float
    #: The thought signature of the final image (also inside :attr:`model_turn`).
    thought_signature: bytes = field(repr=False)
    #: The model's text parts, concatenated (often empty).
    text: str
    #: Why the model stopped, e.g. ``"STOP"`` (see :func:`finish_reason_name`).
    finish_reason: str
    #: Token accounting.
    usage: Usage
    #: The aspect ratio requested upstream, e.g. ``"16:9"``.
    aspect_ratio: str
    #: The size tier requested upstream (``""`` for models without tiers).
    image_size: str
    #: The model's turn exactly as a later Refine needs it (signatures included).
    model_turn: Turn = field(repr=False)
    #: Your request id, echoed when you gave one.
    request_id: str
    #: The upstream response id.
    response_id: str
    #: The model you asked for (or the server's default); differs from :attr:`model`
    #: only when a fallback model answered.
    requested_model: str
    #: Why a fallback model answered: ``"unavailable"``, ``"rate_limited"`` or
    #: ``"circuit_open"``; ``""`` when the requested model did.
    fallback_reason: str
    #: The ``imagegen.v1.Generation`` message this was built from.
    raw: image_pb2.Generation = field(repr=False, compare=False)

    @classmethod
    def from_proto(cls, message: image_pb2.Generation) -> GenerationResult:
        """Build from an ``imagegen.v1.Generation`` message; the model turn comes back complete."""
        image = Image.from_proto(message.image)
        return cls(
            image=image,
            generation_id=message.generation_id,
            seed=message.seed,
            model=message.model,
            model_version=message.model_version,
            attempts=message.attempts,
            inference_time=message.inference_time.ToTimedelta().total_seconds(),
            thought_signature=message.thought_signature,
            text=message.text,
            finish_reason=finish_reason_name(message.finish_reason),
            usage=Usage.from_proto(message.usage),
            aspect_ratio=message.aspect_ratio,
            image_size=message.image_size,
            model_turn=image_turn(Turn.from_proto(message.model_turn, default_role="model"), image),
            request_id=message.request_id,
            response_id=message.response_id,
            requested_model=message.requested_model or message.model,
            fallback_reason=fallback_reason_name(message.fallback_reason),
            raw=message,
        )

    @property
    def width(self) -> int:
        """Width of the image in pixels."""
        return self.image.width

    @property
    def height(self) -> int:
        """Height of the image in pixels."""
        return self.image.height

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the image bytes to ``path`` and return it."""
        return self.image.save(path)


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What one model served by the gateway supports (from ``ListModels``)."""

    #: The model id to pass as ``model=``.
    name: str
    #: Supported aspect ratios, e.g. ``("1:1", "16:9")``.
    aspect_ratios: tuple[str, ...]
    #: Supported size tiers, e.g. ``("1K", "2K")`` (empty: one fixed size).
    image_sizes: tuple[str, ...]
    #: Maximum number of input images per request.
    max_input_images: int
    #: True when Refine history must carry the model's thought signatures.
    requires_thought_signatures: bool
    #: True for the server's default model.
    is_default: bool
    #: The ``imagegen.v1.ModelInfo`` message.
    raw: image_pb2.ModelInfo = field(repr=False, compare=False)

    @classmethod
    def from_proto(cls, message: image_pb2.ModelInfo) -> ModelInfo:
        """Build from an ``imagegen.v1.ModelInfo`` message."""
        return cls(
            name=message.name,
            aspect_ratios=tuple(message.aspect_ratios),
            image_sizes=tuple(message.image_sizes),
            max_input_images=message.max_input_images,
            requires_thought_signatures=message.requires_thought_signatures,
            is_default=message.is_default,
            raw=message,
        )


# --------------------------------------------------------------------------------------------- events

_CODES: dict[int, grpc.StatusCode] = {c.value[0]: c for c in grpc.StatusCode}


def status_code_from_int(value: int) -> grpc.StatusCode:
    """Map a numeric ``google.rpc.Code`` to :class:`grpc.StatusCode` (``UNKNOWN`` when out of range)."""
    return _CODES.get(value, grpc.StatusCode.UNKNOWN)


@dataclass(frozen=True, slots=True)
class Accepted:
    """First stream event: the server accepted the request and is about to call upstream."""

    #: Server-assigned id of this generation.
    generation_id: str
    #: The seed that will be sent upstream.
    seed: int
    #: The model that will be called.
    model: str
    #: The most upstream attempts this request may make.
    max_attempts: int
    #: The aspect ratio that will be requested.
    aspect_ratio: str
    #: The size tier that will be requested.
    image_size: str
    #: The model you asked for; differs from :attr:`model` when the request starts on
    #: a fallback model (the requested model's circuit is open).
    requested_model: str
    #: Why :attr:`model` is not :attr:`requested_model` (see :attr:`GenerationResult.fallback_reason`).
    fallback_reason: str
    #: The models that may serve the request, in order, if :attr:`model` is overloaded.
    fallback_models: tuple[str, ...]
    #: The ``imagegen.v1.Accepted`` message.
    raw: service_pb2.Accepted = field(repr=False, compare=False)
    #: Event name used in JSON output.
    kind: Literal["accepted"] = field(default="accepted", init=False)


@dataclass(frozen=True, slots=True)
class AttemptStarted:
    """An upstream attempt is starting."""

    #: 1-based attempt number.
    attempt: int
    #: The most attempts this request may make.
    max_attempts: int
    #: The ``imagegen.v1.AttemptStarted`` message.
    raw: service_pb2.AttemptStarted = field(repr=False, compare=False)
    #: Event name used in JSON output.
    kind: Literal["attempt_started"] = field(default="attempt_started", init=False)


@dataclass(frozen=True, slots=True)
class AttemptFailed:
    """An upstream attempt failed; :attr:`will_retry` says whether the server tries again."""

    #: 1-based attempt number.
    attempt: int
    #: The gRPC code this failure maps to, e.g. ``RESOURCE_EXHAUSTED``.
    code: grpc.StatusCode
    #: The ``ErrorInfo.reason`` this failure maps to, e.g. ``UPSTREAM_RATE_LIMITED``.
    reason: str
    #: Human-readable description.
    message: str
    #: Seconds the server waits before the next attempt (0 when it will not retry).
    retry_delay: float
    #: True when another attempt follows.
    will_retry: bool
    #: Why no attempt follows (``"attempts_exhausted"``, ``"deadline"``, ``"retry_budget"``,
    #: ``"circuit_open"``, ``"not_retryable"``); ``""`` while retrying.
    stop_reason: str
    #: The ``imagegen.v1.AttemptFailed`` message.
    raw: service_pb2.AttemptFailed = field(repr=False, compare=False)
    #: Event name used in JSON output.
    kind: Literal["attempt_failed"] = field(default="attempt_failed", init=False)


@dataclass(frozen=True, slots=True)
class ModelFallback:
    """The requested model stayed overloaded: another model serves the request from here on."""

    #: The model given up on.
    from_model: str
    #: The model tried next.
    to_model: str
    #: Why: ``"unavailable"``, ``"rate_limited"`` or ``"circuit_open"``.
    reason: str
    #: The ``imagegen.v1.ModelFallback`` message.
    raw: service_pb2.ModelFallback = field(repr=False, compare=False)
    #: Event name used in JSON output.
    kind: Literal["model_fallback"] = field(default="model_fallback", init=False)


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Keep-alive while the server waits on upstream or between attempts."""

    #: Seconds since the request was accepted.
    elapsed: float
    #: The ``imagegen.v1.Heartbeat`` message.
    raw: service_pb2.Heartbeat = field(repr=False, compare=False)
    #: Event name used in JSON output.
    kind: Literal["heartbeat"] = field(default="heartbeat", init=False)


@dataclass(frozen=True, slots=True)
class Preview:
    """An interim draft image the model produced while thinking (never the final result)."""

    #: The draft image.
    image: Image
    #: 1-based index of the draft within the current attempt.
    index: int
    #: The ``imagegen.v1.Preview`` message.
    raw: service_pb2.Preview = field(repr=False, compare=False)
    #: Event name used in JSON output.
    kind: Literal["preview"] = field(default="preview", init=False)


@dataclass(frozen=True, slots=True)
class Completed:
    """Last stream event on success: the generated image."""

    #: The result, as :meth:`imagegen.Client.generate` would return it.
    result: GenerationResult
    #: Event name used in JSON output.
    kind: Literal["completed"] = field(default="completed", init=False)


#: One event of ``generate_stream`` / ``refine_stream``. A failed stream raises
#: an :class:`imagegen.ImagegenError` instead of yielding a final event.
StreamEvent: TypeAlias = Accepted | AttemptStarted | AttemptFailed | ModelFallback | Heartbeat | Preview | Completed
