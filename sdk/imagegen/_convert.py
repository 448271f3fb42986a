"""Conversions shared by the sync and async clients: arguments -> request messages, responses -> events."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias, TypedDict

from imagegen.types import (
    Accepted,
    AttemptFailed,
    AttemptStarted,
    Completed,
    GenerationResult,
    Heartbeat,
    Image,
    ImageInput,
    ModelFallback,
    Part,
    Preview,
    StreamEvent,
    Turn,
    fallback_reason_name,
    sniff_mime_type,
    status_code_from_int,
    stop_reason_name,
)
from imagegen.v1 import image_generation_service_pb2 as service_pb2
from imagegen.v1 import image_pb2

#: Per-call or per-client gRPC metadata: pairs or a mapping. Keys are lower-cased;
#: keys ending in ``-bin`` take bytes.
MetadataInput: TypeAlias = Sequence[tuple[str, str | bytes]] | Mapping[str, str | bytes]
#: A history turn: the SDK's :class:`imagegen.Turn` or the raw ``imagegen.v1.Turn``.
TurnInput: TypeAlias = Turn | image_pb2.Turn

StreamResponse: TypeAlias = service_pb2.GenerateStreamResponse | service_pb2.RefineStreamResponse


class GenerationKwargs(TypedDict, total=False):
    """The keyword options of every generation method; all optional.

    Taken as ``**options`` by ``generate``, ``refine``, ``generate_stream``,
    ``refine_stream`` and ``conversation`` of :class:`imagegen.Client` and
    :class:`imagegen.AsyncClient`, and by ``start``, ``refine`` and ``refine_stream``
    of :class:`imagegen.Conversation` and :class:`imagegen.AsyncConversation`.
    Type checkers and IDEs check and complete them as ordinary keyword arguments
    (PEP 692)::

        client.generate("a fox", width=1024, height=768, seed=7, timeout=30)

    Keys:
        input_images: Reference images: bytes, file paths or :class:`imagegen.Image`
            (a sequence, even for one image). Default: none.
        model: Model id; ``None`` for the server's default (see ``list_models``).
        width: Desired width in pixels, mapped to the nearest supported ratio and size.
        height: Desired height in pixels.
        aspect_ratio: Explicit ratio such as ``"16:9"``; overrides width/height.
        image_size: Explicit size tier ``"512"``, ``"1K"``, ``"2K"`` or ``"4K"``.
        seed: Upstream seed (0 is valid); ``None`` lets the server pick and report one.
        request_id: Idempotency key: the server deduplicates repeats, and the client
            may then retry any retryable error (see :class:`imagegen.ClientRetry`).
        disable_model_fallback: ``True`` to get the requested model or an error: the
            server then never answers with one of its fallback models.
        timeout: Deadline in seconds for this call, client-side retries included;
            ``None`` for the client's default.
        metadata: Extra gRPC metadata for this call (pairs or a mapping), sent after
            the client's own.

    In a conversation, the model and size options (``model``, ``width``, ``height``,
    ``aspect_ratio``, ``image_size``) given at the start are reused by every turn; a
    turn that passes any size option replaces all four.
    """

    input_images: Iterable[ImageInput]
    model: str | None
    width: int | None
    height: int | None
    aspect_ratio: str | None
    image_size: str | None
    seed: int | None
    request_id: str | None
    disable_model_fallback: bool | None
    timeout: float | None
    metadata: MetadataInput | None


def to_image_proto(value: ImageInput) -> image_pb2.Image:
    """Coerce one ``input_images`` entry (bytes, path, :class:`Image` or message) to ``imagegen.v1.Image``."""
    if isinstance(value, image_pb2.Image):
        return image_pb2.Image(data=value.data, mime_type=value.mime_type)
    if isinstance(value, Image):
        return value.to_proto()
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        return image_pb2.Image(data=data, mime_type=sniff_mime_type(data))
    if isinstance(value, str | os.PathLike):
        data = Path(value).read_bytes()
        return image_pb2.Image(data=data, mime_type=sniff_mime_type(data))
    raise TypeError(f"input image must be bytes, a path or an imagegen.Image, not {type(value).__name__}")


def to_turn_proto(value: TurnInput) -> image_pb2.Turn:
    """Coerce one history entry to ``imagegen.v1.Turn``, keeping signatures byte for byte."""
    if isinstance(value, image_pb2.Turn):
        copy = image_pb2.Turn()
        copy.CopyFrom(value)
        return copy
    if isinstance(value, Turn):
        return value.to_proto()
    raise TypeError(f"history entries must be imagegen.Turn or imagegen.v1.Turn, not {type(value).__name__}")


def user_turn(prompt: str, images: Iterable[image_pb2.Image]) -> Turn:
    """The user turn recorded in a conversation history: the prompt text, then the input images."""
    parts = [Part(text=prompt)]
    parts.extend(Part(image=Image.from_proto(image)) for image in images)
    return Turn(role="user", parts=tuple(parts))


def normalize_metadata(metadata: MetadataInput | None) -> tuple[tuple[str, str | bytes], ...]:
    """Metadata as gRPC wants it: a tuple of (lower-case key, value) pairs."""
    if not metadata:
        return ()
    items = metadata.items() if isinstance(metadata, Mapping) else metadata
    return tuple((str(key).lower(), value) for key, value in items)


@dataclass(frozen=True, slots=True)
class CallOptions:
    """How one RPC is made: whether it may be retried after work started, its deadline and metadata."""

    idempotent: bool
    timeout: float | None = None
    metadata: MetadataInput | None = None


@dataclass(frozen=True, slots=True)
class RequestSpec:
    """Everything one generation call sends, before it is shaped into a request message."""

    prompt: str
    input_images: tuple[image_pb2.Image, ...]
    options: service_pb2.GenerationOptions
    call: CallOptions
    history: tuple[image_pb2.Turn, ...] = ()

    @classmethod
    def build(
        cls,
        prompt: str,
        *,
        history: Iterable[TurnInput] = (),
        input_images: Iterable[ImageInput] = (),
        model: str | None = None,
        width: int | None = None,
        height: int | None = None,
        aspect_ratio: str | None = None,
        image_size: str | None = None,
        seed: int | None = None,
        request_id: str | None = None,
        disable_model_fallback: bool | None = None,
        timeout: float | None = None,
        metadata: MetadataInput | None = None,
        **unknown: object,
    ) -> RequestSpec:
        """Validate argument types and convert images and history to messages.

        The keywords after ``history`` are :class:`GenerationKwargs` (where they are
        documented); their defaults live here, and an unknown one raises ``TypeError``.
        """
        if unknown:
            name = next(iter(unknown))
            raise TypeError(f"unexpected keyword argument {name!r} (the options are imagegen.GenerationKwargs)")
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a str, not {type(prompt).__name__}")
        if isinstance(input_images, bytes | str | Image | image_pb2.Image | os.PathLike):
            raise TypeError("input_images must be a sequence of images; wrap a single image in a list")
        options = service_pb2.GenerationOptions(
            model=model or "",
            width=width or 0,
            height=height or 0,
            aspect_ratio=aspect_ratio or "",
            image_size=image_size or "",
            request_id=request_id or "",
            disable_model_fallback=bool(disable_model_fallback),
        )
        if seed is not None:
            options.seed = seed
        return cls(
            prompt=prompt,
            input_images=tuple(to_image_proto(image) for image in input_images),
            options=options,
            call=CallOptions(idempotent=bool(request_id), timeout=timeout, metadata=metadata),
            history=tuple(to_turn_proto(turn) for turn in history),
        )

    @property
    def idempotent(self) -> bool:
        """True when the request carries a request id (the server deduplicates retries)."""
        return self.call.idempotent

    def generate_request(self) -> service_pb2.GenerateRequest:
        """The ``GenerateRequest`` message."""
        return service_pb2.GenerateRequest(prompt=self.prompt, input_images=self.input_images, options=self.options)

    def generate_stream_request(self) -> service_pb2.GenerateStreamRequest:
        """The ``GenerateStreamRequest`` message."""
        return service_pb2.GenerateStreamRequest(
            prompt=self.prompt, input_images=self.input_images, options=self.options
        )

    def refine_request(self) -> service_pb2.RefineRequest:
        """The ``RefineRequest`` message."""
        return service_pb2.RefineRequest(
            prompt=self.prompt, history=self.history, input_images=self.input_images, options=self.options
        )

    def refine_stream_request(self) -> service_pb2.RefineStreamRequest:
        """The ``RefineStreamRequest`` message."""
        return service_pb2.RefineStreamRequest(
            prompt=self.prompt, history=self.history, input_images=self.input_images, options=self.options
        )


def event_from_response(response: StreamResponse) -> StreamEvent | None:
    """Convert one stream message to a typed event (``None`` for an event this SDK does not know)."""
    which = response.WhichOneof("event")
    if which == "accepted":
        a = response.accepted
        return Accepted(
            generation_id=a.generation_id,
            seed=a.seed,
            model=a.model,
            max_attempts=a.max_attempts,
            aspect_ratio=a.aspect_ratio,
            image_size=a.image_size,
            requested_model=a.requested_model or a.model,
            fallback_reason=fallback_reason_name(a.fallback_reason),
            fallback_models=tuple(a.fallback_models),
            raw=a,
        )
    if which == "attempt_started":
        s = response.attempt_started
        return AttemptStarted(attempt=s.attempt, max_attempts=s.max_attempts, raw=s)
    if which == "attempt_failed":
        f = response.attempt_failed
        return AttemptFailed(
            attempt=f.attempt,
            code=status_code_from_int(f.code),
            reason=f.reason,
            message=f.message,
            retry_delay=f.retry_delay.ToTimedelta().total_seconds(),
            will_retry=f.will_retry,
            stop_reason=stop_reason_name(f.stop_reason),
            raw=f,
        )
    if which == "model_fallback":
        m = response.model_fallback
        return ModelFallback(from_model=m.from_model, to_model=m.to_model, reason=fallback_reason_name(m.reason), raw=m)
    if which == "heartbeat":
        h = response.heartbeat
        return Heartbeat(elapsed=h.elapsed.ToTimedelta().total_seconds(), raw=h)
    if which == "preview":
        p = response.preview
        return Preview(image=Image.from_proto(p.image), index=p.index, raw=p)
    if which == "completed":
        return Completed(result=GenerationResult.from_proto(response.completed))
    return None
