"""A scripted fake imagegen server for testing code that uses the SDK.

:class:`FakeServer` runs a real ``grpc.aio`` server on ``127.0.0.1:0`` in a
background thread, so both :class:`imagegen.Client` and :class:`imagegen.AsyncClient`
can call it. Its :class:`FakeServicer` answers each call with the next scripted
reply (or a default success), aborting with real ``google.rpc`` status details
for :class:`FakeError` replies::

    from imagegen.testing import FakeError, FakeServer

    with FakeServer() as server, imagegen.Client(server.target) as client:
        server.servicer.push(FakeError.rate_limited(retry_after=2.0))
        with pytest.raises(imagegen.RateLimitError) as info:
            client.generate("a fox")
        assert info.value.retry_after == 2.0

This module is for tests only; it is not used by the clients.
"""

from __future__ import annotations

import asyncio
import struct
import threading
import zlib
from collections import deque
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from types import TracebackType
from typing import Any, Self, TypeAlias

import grpc
import grpc.aio
from google.protobuf import duration_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from imagegen.client import MAX_MESSAGE_BYTES
from imagegen.errors import DOMAIN, reason_name
from imagegen.v1 import image_generation_service_pb2 as service_pb2
from imagegen.v1 import image_generation_service_pb2_grpc as service_grpc
from imagegen.v1 import image_pb2
from imagegen.v1.error_reason_pb2 import ErrorReason

__all__ = [
    "Delayed",
    "FakeCall",
    "FakeError",
    "FakeServer",
    "FakeServicer",
    "FakeStream",
    "Reply",
    "make_generation",
    "make_png",
    "stream_events",
]


def make_png(width: int = 8, height: int = 8, rgb: tuple[int, int, int] = (200, 60, 20)) -> bytes:
    """A valid solid-colour RGB PNG of the given size (no imaging library needed)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        body = kind + payload
        return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)

    row = b"\x00" + bytes(rgb) * width
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(row * height))
        + chunk(b"IEND", b"")
    )


def _duration(seconds: float) -> duration_pb2.Duration:
    value = duration_pb2.Duration()
    value.FromTimedelta(timedelta(seconds=seconds))
    return value


def make_generation(
    *,
    seed: int = 7,
    width: int = 8,
    height: int = 8,
    model: str = "gemini-3.1-flash-image",
    generation_id: str = "gen-1",
    attempts: int = 1,
    signature: bytes = b"sig-\x00\xff-1",
    text: str = "",
    request_id: str = "",
    inference_time: float = 1.5,
    aspect_ratio: str = "1:1",
    image_size: str = "1K",
) -> image_pb2.Generation:
    """A canned ``Generation`` with a real PNG, a model turn and a thought signature."""
    image = image_pb2.Image(data=make_png(width, height), mime_type="image/png", width=width, height=height)
    parts = []
    if text:
        parts.append(image_pb2.Part(text=text))
    parts.append(image_pb2.Part(image=image, thought_signature=signature))
    return image_pb2.Generation(
        image=image,
        generation_id=generation_id,
        seed=seed,
        model=model,
        model_version=model + "-001",
        attempts=attempts,
        inference_time=_duration(inference_time),
        thought_signature=signature,
        text=text,
        finish_reason=image_pb2.FINISH_REASON_STOP,
        usage=image_pb2.Usage(prompt_tokens=10, output_tokens=1120, total_tokens=1130),
        aspect_ratio=aspect_ratio,
        image_size=image_size,
        model_turn=image_pb2.Turn(role=image_pb2.ROLE_MODEL, parts=parts),
        request_id=request_id,
        response_id="resp-1",
    )


def _wire_reason(reason: str | ErrorReason.ValueType) -> str:
    return reason if isinstance(reason, str) else reason_name(reason)


@dataclass(frozen=True)
class FakeError:
    """A failure to answer with: a gRPC status plus ``google.rpc`` details (ErrorInfo, RetryInfo, ...)."""

    #: The status code.
    code: grpc.StatusCode
    #: The status message.
    message: str
    #: ``ErrorInfo.reason``: an ``ErrorReason`` value, or any string (e.g. one this SDK
    #: does not know); ``""`` sends no ErrorInfo.
    reason: str | ErrorReason.ValueType = ""
    #: ``ErrorInfo.metadata``.
    metadata: Mapping[str, str] = field(default_factory=dict)
    #: ``ErrorInfo.domain``.
    domain: str = DOMAIN
    #: ``RetryInfo.retry_delay`` in seconds, when not ``None``.
    retry_after: float | None = None
    #: ``BadRequest`` field violations as ``(field, description)`` pairs.
    field_violations: Sequence[tuple[str, str]] = ()
    #: ``QuotaFailure`` violations as ``(subject, description)`` pairs.
    quota_violations: Sequence[tuple[str, str]] = ()
    #: Extra detail messages to pack.
    extra_details: Sequence[Message] = ()
    #: Send only the code and message, without the details trailer.
    bare: bool = False

    def __post_init__(self) -> None:
        # Keep the wire string, so tests can compare it with ImagegenError.reason.
        object.__setattr__(self, "reason", _wire_reason(self.reason))

    def to_status(self) -> status_pb2.Status:
        """The ``google.rpc.Status`` this error sends."""
        status = status_pb2.Status(code=self.code.value[0], message=self.message)
        if self.reason:
            status.details.add().Pack(
                error_details_pb2.ErrorInfo(
                    reason=_wire_reason(self.reason), domain=self.domain, metadata=dict(self.metadata)
                )
            )
        if self.retry_after is not None:
            status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=_duration(self.retry_after)))
        if self.field_violations:
            bad = error_details_pb2.BadRequest()
            for name, description in self.field_violations:
                bad.field_violations.add(field=name, description=description)
            status.details.add().Pack(bad)
        if self.quota_violations:
            quota = error_details_pb2.QuotaFailure()
            for subject, description in self.quota_violations:
                quota.violations.add(subject=subject, description=description)
            status.details.add().Pack(quota)
        for extra in self.extra_details:
            status.details.add().Pack(extra)
        return status

    async def abort(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """Abort the call with this status (raises)."""
        if self.bare:
            await context.abort(self.code, self.message)
        await context.abort_with_status(rpc_status.to_status(self.to_status()))

    @classmethod
    def rate_limited(cls, retry_after: float = 4.0, **metadata: str) -> FakeError:
        """RESOURCE_EXHAUSTED / ``UPSTREAM_RATE_LIMITED`` with RetryInfo."""
        return cls(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "upstream rate limit",
            ErrorReason.ERROR_REASON_UPSTREAM_RATE_LIMITED,
            {"generationId": "gen-err", **metadata},
            retry_after=retry_after,
            quota_violations=[("models/gemini-3.1-flash-image", "requests per minute")],
        )

    @classmethod
    def unavailable(
        cls,
        reason: str | ErrorReason.ValueType = ErrorReason.ERROR_REASON_UPSTREAM_UNAVAILABLE,
        retry_after: float | None = None,
    ) -> FakeError:
        """UNAVAILABLE with the given reason (``""``: no details at all)."""
        return cls(grpc.StatusCode.UNAVAILABLE, "unavailable", reason, retry_after=retry_after, bare=not reason)


@dataclass(frozen=True)
class FakeStream:
    """A scripted stream: these events (``GenerateStreamResponse`` messages), then ``error`` if given."""

    #: The events to send, in order (also used, re-encoded, for RefineStream).
    events: Sequence[service_pb2.GenerateStreamResponse]
    #: The status to end with instead of OK.
    error: FakeError | None = None
    #: Pause between events, in seconds.
    interval: float = 0.0


@dataclass(frozen=True)
class Delayed:
    """Wait ``seconds`` before answering with ``reply`` (to test deadlines)."""

    #: Seconds to wait.
    seconds: float
    #: The reply after the wait.
    reply: Reply


#: One scripted answer: a success, an error, a stream script, or a delayed reply.
Reply: TypeAlias = image_pb2.Generation | FakeError | FakeStream | Delayed


def stream_events(
    generation: image_pb2.Generation | None = None,
    *,
    failures: Iterable[tuple[grpc.StatusCode, str | ErrorReason.ValueType, float]] = (),
    previews: int = 0,
    max_attempts: int = 3,
) -> list[service_pb2.GenerateStreamResponse]:
    """A typical event sequence: accepted, failed attempts ``(code, reason, retry_delay)``, previews, completed."""
    generation = generation or make_generation()
    R = service_pb2.GenerateStreamResponse
    events = [
        R(
            accepted=service_pb2.Accepted(
                generation_id=generation.generation_id,
                seed=generation.seed,
                model=generation.model,
                max_attempts=max_attempts,
                aspect_ratio=generation.aspect_ratio,
                image_size=generation.image_size,
            )
        )
    ]
    attempt = 0
    for attempt, (code, reason, delay) in enumerate(failures, start=1):
        events.append(R(attempt_started=service_pb2.AttemptStarted(attempt=attempt, max_attempts=max_attempts)))
        events.append(
            R(
                attempt_failed=service_pb2.AttemptFailed(
                    attempt=attempt,
                    code=code.value[0],
                    reason=_wire_reason(reason),
                    message=f"{_wire_reason(reason)} on attempt {attempt}",
                    retry_delay=_duration(delay),
                    will_retry=True,
                )
            )
        )
        events.append(R(heartbeat=service_pb2.Heartbeat(elapsed=_duration(0.1 * attempt))))
    events.append(R(attempt_started=service_pb2.AttemptStarted(attempt=attempt + 1, max_attempts=max_attempts)))
    for index in range(1, previews + 1):
        draft = image_pb2.Image(data=make_png(4, 4, (index * 40, 0, 0)), mime_type="image/png", width=4, height=4)
        events.append(R(preview=service_pb2.Preview(image=draft, index=index)))
    completed = image_pb2.Generation()
    completed.CopyFrom(generation)
    completed.attempts = attempt + 1
    events.append(R(completed=completed))
    return events


@dataclass(frozen=True)
class FakeCall:
    """One call the fake server received."""

    #: RPC name, e.g. ``"Generate"``.
    method: str
    #: The request message.
    request: Message
    #: The invocation metadata (lower-case keys; the last value wins).
    metadata: dict[str, str | bytes]
    #: Seconds left before the caller's deadline, or ``None`` without one.
    time_remaining: float | None


class FakeServicer(service_grpc.ImageGenerationServiceServicer):
    """Answers every call with the next pushed :data:`Reply`, or a default success when none is queued."""

    def __init__(self) -> None:
        self._replies: deque[Reply] = deque()
        self._lock = threading.Lock()
        #: Every call received, in order.
        self.calls: list[FakeCall] = []
        #: The models ``ListModels`` returns.
        self.models: list[image_pb2.ModelInfo] = [
            image_pb2.ModelInfo(
                name="gemini-3.1-flash-image",
                aspect_ratios=["1:1", "16:9"],
                image_sizes=["1K", "2K"],
                max_input_images=14,
                requires_thought_signatures=True,
                is_default=True,
            )
        ]

    def push(self, *replies: Reply) -> None:
        """Queue replies; each call consumes one."""
        with self._lock:
            self._replies.extend(replies)

    def _next(self, method: str, request: Message, context: grpc.aio.ServicerContext[Any, Any]) -> Reply:
        metadata: dict[str, str | bytes] = dict(context.invocation_metadata() or ())
        self.calls.append(FakeCall(method, request, metadata, context.time_remaining()))
        with self._lock:
            if self._replies:
                return self._replies.popleft()
        request_id = getattr(getattr(request, "options", None), "request_id", "")
        seed = 7
        options = getattr(request, "options", None)
        if options is not None and options.HasField("seed"):
            seed = options.seed
        return make_generation(seed=seed, request_id=request_id, generation_id=f"gen-{len(self.calls)}")

    async def _unary(self, method: str, request: Message, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        reply = self._next(method, request, context)
        while isinstance(reply, Delayed):
            await asyncio.sleep(reply.seconds)
            reply = reply.reply
        if isinstance(reply, FakeError):
            await reply.abort(context)
        if isinstance(reply, FakeStream):
            completed = [e.completed for e in reply.events if e.HasField("completed")]
            if reply.error is not None or not completed:
                await (reply.error or FakeError(grpc.StatusCode.INTERNAL, "no result")).abort(context)
            reply = completed[0]
        assert isinstance(reply, image_pb2.Generation)
        return reply

    async def _stream(
        self, method: str, request: Message, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[service_pb2.GenerateStreamResponse]:
        reply = self._next(method, request, context)
        while isinstance(reply, Delayed):
            await asyncio.sleep(reply.seconds)
            reply = reply.reply
        if isinstance(reply, image_pb2.Generation):
            reply = FakeStream(stream_events(reply))
        if isinstance(reply, FakeError):
            await reply.abort(context)
            return
        assert isinstance(reply, FakeStream)
        for event in reply.events:
            yield event
            if reply.interval:
                await asyncio.sleep(reply.interval)
        if reply.error is not None:
            await reply.error.abort(context)

    async def Generate(
        self, request: service_pb2.GenerateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> service_pb2.GenerateResponse:
        """Answer with the next reply."""
        return service_pb2.GenerateResponse(generation=await self._unary("Generate", request, context))

    async def Refine(
        self, request: service_pb2.RefineRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> service_pb2.RefineResponse:
        """Answer with the next reply."""
        return service_pb2.RefineResponse(generation=await self._unary("Refine", request, context))

    async def GenerateStream(
        self, request: service_pb2.GenerateStreamRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[service_pb2.GenerateStreamResponse]:
        """Stream the next reply's events."""
        async for event in self._stream("GenerateStream", request, context):
            yield event

    async def RefineStream(
        self, request: service_pb2.RefineStreamRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[service_pb2.RefineStreamResponse]:
        """Stream the next reply's events, re-encoded as ``RefineStreamResponse``."""
        async for event in self._stream("RefineStream", request, context):
            yield service_pb2.RefineStreamResponse.FromString(event.SerializeToString())

    async def ListModels(
        self, request: service_pb2.ListModelsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> service_pb2.ListModelsResponse:
        """Return :attr:`models`."""
        self.calls.append(FakeCall("ListModels", request, {}, context.time_remaining()))
        return service_pb2.ListModelsResponse(models=self.models)


class FakeServer:
    """A real ``grpc.aio`` server with a :class:`FakeServicer`, on a loopback port, in its own thread.

    Use as a context manager (or :meth:`start` / :meth:`stop`); :attr:`target` is
    the ``host:port`` to pass to a client. With ``health=True`` (and
    grpcio-health-checking installed) it also serves ``grpc.health.v1``.
    ``max_message_bytes`` sets the server's send and receive limits.
    """

    def __init__(
        self,
        servicer: FakeServicer | None = None,
        *,
        health: bool = False,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        #: The servicer answering calls; push replies on it.
        self.servicer = servicer or FakeServicer()
        self._health = health
        self._max_message_bytes = max_message_bytes
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: grpc.aio.Server | None = None
        self.port = 0

    @property
    def target(self) -> str:
        """``127.0.0.1:PORT`` of the running server."""
        return f"127.0.0.1:{self.port}"

    async def _start(self) -> int:
        options = [
            ("grpc.max_send_message_length", self._max_message_bytes),
            ("grpc.max_receive_message_length", self._max_message_bytes),
        ]
        server = grpc.aio.server(options=options)
        service_grpc.add_ImageGenerationServiceServicer_to_server(self.servicer, server)
        if self._health:
            from grpc_health.v1 import health, health_pb2_grpc

            health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        self._server = server
        return port

    def start(self) -> Self:
        """Start the server thread and wait until it listens."""
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="imagegen-fake-server", daemon=True)
        self._thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self._start(), loop).result(timeout=10)
        return self

    def stop(self) -> None:
        """Stop the server (cancelling running calls) and its thread."""
        loop, self._loop = self._loop, None
        if loop is None:
            return
        if self._server is not None:
            asyncio.run_coroutine_threadsafe(self._server.stop(None), loop).result(timeout=10)
            self._server = None
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)
        loop.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
