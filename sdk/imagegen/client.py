"""The sync :class:`Client` and async :class:`AsyncClient`: one design, two transports.

:class:`Client` runs on grpc's blocking channel (``grpc.insecure_channel`` /
``grpc.secure_channel``); :class:`AsyncClient` on ``grpc.aio``. Both build the
same request messages, return the same typed results and events (see
:mod:`imagegen.types`) and raise the same exceptions (see :mod:`imagegen.errors`).

Example::

    import imagegen

    with imagegen.Client("127.0.0.1:50051") as client:
        result = client.generate("a red fox in the snow", width=1024, height=1024, seed=7)
        result.save("fox.png")
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable, Generator, Iterable
from types import TracebackType
from typing import Any, Self, TypeVar, Unpack

import grpc
import grpc.aio

from imagegen._convert import (
    CallOptions,
    GenerationKwargs,
    MetadataInput,
    RequestSpec,
    TurnInput,
    event_from_response,
    normalize_metadata,
)
from imagegen._retry import Attempts, ClientRetry
from imagegen._stream import AsyncEventStream, EventStream
from imagegen.conversation import AsyncConversation, Conversation
from imagegen.types import GenerationResult, ModelInfo, StreamEvent
from imagegen.v1 import image_generation_service_pb2 as service_pb2
from imagegen.v1 import image_generation_service_pb2_grpc as service_grpc

__all__ = [
    "DEFAULT_TARGET",
    "DEFAULT_TIMEOUT",
    "MAX_MESSAGE_BYTES",
    "AsyncClient",
    "AsyncEventStream",
    "Client",
    "EventStream",
]

#: Where the clients connect when no target is given (``imagegen serve``'s default).
DEFAULT_TARGET = "127.0.0.1:50051"
#: Default deadline of each call, in seconds (all client-side retries included).
DEFAULT_TIMEOUT = 120.0
#: Send and receive message limit of the clients' channels (images are megabytes;
#: gRPC's default receive limit is 4 MiB). Matches the server's.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

_VERSION = "0.1.0"

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")
_Stream = TypeVar("_Stream", service_pb2.GenerateStreamResponse, service_pb2.RefineStreamResponse)

ChannelOptions = Iterable[tuple[str, Any]]


def _channel_options(extra: ChannelOptions) -> list[tuple[str, Any]]:
    merged: dict[str, Any] = {
        "grpc.max_send_message_length": MAX_MESSAGE_BYTES,
        "grpc.max_receive_message_length": MAX_MESSAGE_BYTES,
        "grpc.primary_user_agent": f"imagegen-python/{_VERSION}",
    }
    merged.update(dict(extra))
    return list(merged.items())


class _ClientBase:
    """Configuration and helpers shared by :class:`Client` and :class:`AsyncClient`."""

    def __init__(
        self,
        target: str,
        *,
        timeout: float | None,
        metadata: MetadataInput,
        credentials: grpc.ChannelCredentials | None,
        bearer_token: str | None,
        options: ChannelOptions,
        retry: ClientRetry | None,
    ) -> None:
        self._target = target
        self._timeout = timeout
        self._credentials = credentials
        self._options = _channel_options(options)
        self._retry = retry or ClientRetry(max_attempts=1)
        base = normalize_metadata(metadata)
        if bearer_token:
            base = (*base, ("authorization", f"Bearer {bearer_token}"))
        self._metadata = base

    @property
    def target(self) -> str:
        """The server address this client connects to."""
        return self._target

    @property
    def timeout(self) -> float | None:
        """The default per-call deadline in seconds (``None``: no deadline)."""
        return self._timeout

    @property
    def retry(self) -> ClientRetry | None:
        """The client-side retry policy, or ``None`` when retries are off."""
        return self._retry if self._retry.max_attempts > 1 else None

    def _call_metadata(self, call: CallOptions) -> tuple[tuple[str, str | bytes], ...]:
        return (*self._metadata, *normalize_metadata(call.metadata))

    def _attempts(self, call: CallOptions) -> Attempts:
        timeout = self._timeout if call.timeout is None else call.timeout
        return Attempts(self._retry, idempotent=call.idempotent, timeout=timeout)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(target={self._target!r})"


class Client(_ClientBase):
    """Synchronous client for the imagegen gateway, on grpc's blocking channel.

    Args:
        target: ``host:port`` of the server.
        timeout: Default deadline of each call in seconds, client-side retries
            included; ``None`` for no deadline. Each method's ``timeout=`` overrides it.
        metadata: gRPC metadata sent with every call (pairs or a mapping).
        credentials: TLS channel credentials (``grpc.ssl_channel_credentials()``);
            ``None`` for a plaintext channel.
        bearer_token: Sent as ``authorization: Bearer <token>`` on every call.
        options: Extra channel options; they override the defaults (64 MiB send and
            receive limits, user agent).
        retry: Client-side retries (:class:`imagegen.ClientRetry`); off by default.

    The client is thread-safe. Use it as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        metadata: MetadataInput = (),
        credentials: grpc.ChannelCredentials | None = None,
        bearer_token: str | None = None,
        options: ChannelOptions = (),
        retry: ClientRetry | None = None,
    ) -> None:
        super().__init__(
            target,
            timeout=timeout,
            metadata=metadata,
            credentials=credentials,
            bearer_token=bearer_token,
            options=options,
            retry=retry,
        )
        if credentials is not None:
            self._channel = grpc.secure_channel(target, credentials, options=self._options)
        else:
            self._channel = grpc.insecure_channel(target, options=self._options)
        self._stub = service_grpc.ImageGenerationServiceStub(self._channel)

    @property
    def channel(self) -> grpc.Channel:
        """The underlying channel, for calling the generated stubs (``imagegen.v1``) directly."""
        return self._channel

    def close(self) -> None:
        """Close the channel; running calls are cancelled."""
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------ calls

    def generate(self, prompt: str, **options: Unpack[GenerationKwargs]) -> GenerationResult:
        """Generate one image from a prompt and optional input images.

        Args:
            prompt: What to draw.
            **options: Keyword options ``input_images``, ``model``, ``width``, ``height``,
                ``aspect_ratio``, ``image_size``, ``seed``, ``request_id``, ``timeout``
                and ``metadata``, shared by every generation method and documented
                once in :class:`imagegen.GenerationKwargs`.

        Returns:
            The image and everything known about how it was made.

        Raises:
            ImagegenError: A subclass by meaning, e.g. :class:`imagegen.RateLimitError`.
        """
        spec = RequestSpec.build(prompt, **options)
        response = self._unary(self._stub.Generate, spec.generate_request(), spec.call)
        return GenerationResult.from_proto(response.generation)

    def refine(
        self, prompt: str, *, history: Iterable[TurnInput], **options: Unpack[GenerationKwargs]
    ) -> GenerationResult:
        """Edit an image over several turns: a new prompt plus the conversation so far.

        ``history`` is oldest first: user turns, and each result's ``model_turn``
        as returned (its thought signatures must stay byte for byte). The
        :class:`imagegen.Conversation` helper keeps it for you. Other arguments
        are as for :meth:`generate` (:class:`imagegen.GenerationKwargs`).
        """
        spec = RequestSpec.build(prompt, history=history, **options)
        response = self._unary(self._stub.Refine, spec.refine_request(), spec.call)
        return GenerationResult.from_proto(response.generation)

    def generate_stream(self, prompt: str, **options: Unpack[GenerationKwargs]) -> EventStream:
        """Like :meth:`generate`, streaming progress events.

        Yields :class:`imagegen.Accepted`, then per upstream attempt
        :class:`imagegen.AttemptStarted` and possibly :class:`imagegen.AttemptFailed`
        (with the server's retry delay), :class:`imagegen.Heartbeat` and
        :class:`imagegen.Preview` while waiting, and finally :class:`imagegen.Completed`.
        A failure raises from the iteration. The call starts when iteration starts.
        Options: :class:`imagegen.GenerationKwargs`.
        """
        spec = RequestSpec.build(prompt, **options)
        return EventStream(self._stream(self._stub.GenerateStream, spec.generate_stream_request(), spec.call))

    def refine_stream(
        self, prompt: str, *, history: Iterable[TurnInput], **options: Unpack[GenerationKwargs]
    ) -> EventStream:
        """Like :meth:`refine`, streaming the progress events of :meth:`generate_stream`."""
        spec = RequestSpec.build(prompt, history=history, **options)
        return EventStream(self._stream(self._stub.RefineStream, spec.refine_stream_request(), spec.call))

    def list_models(self, *, timeout: float | None = None, metadata: MetadataInput | None = None) -> list[ModelInfo]:
        """The models the server accepts and what each supports."""
        call = CallOptions(idempotent=True, timeout=timeout, metadata=metadata)
        response = self._unary(self._stub.ListModels, service_pb2.ListModelsRequest(), call)
        return [ModelInfo.from_proto(m) for m in response.models]

    def conversation(self, prompt: str, **options: Unpack[GenerationKwargs]) -> Conversation:
        """Generate a first image and return a :class:`imagegen.Conversation` to refine it.

        Same as ``Conversation.start(client, prompt, ...)``. Model and size options
        are kept for later turns (see :class:`imagegen.GenerationKwargs`).
        """
        return Conversation.start(self, prompt, **options)

    # -------------------------------------------------------------------------------------- internals

    def _unary(self, method: grpc.UnaryUnaryMultiCallable[_Req, _Resp], request: _Req, call: CallOptions) -> _Resp:
        attempts = self._attempts(call)
        metadata = self._call_metadata(call)
        while True:
            try:
                return method(request, timeout=attempts.remaining(), metadata=metadata)
            except grpc.RpcError as err:
                delay = attempts.retry_delay(err)
            time.sleep(delay)

    def _stream(
        self, method: grpc.UnaryStreamMultiCallable[_Req, _Stream], request: _Req, call: CallOptions
    ) -> Generator[StreamEvent, None, None]:
        attempts = self._attempts(call)
        metadata = self._call_metadata(call)
        while True:
            received = False
            rpc = method(request, timeout=attempts.remaining(), metadata=metadata)
            try:
                for response in rpc:
                    event = event_from_response(response)
                    if event is not None:
                        received = True
                        yield event
                return
            except grpc.RpcError as err:
                delay = attempts.retry_delay(err, after_events=received)
            finally:
                rpc.cancel()
            time.sleep(delay)


class AsyncClient(_ClientBase):
    """Asynchronous client for the imagegen gateway, on ``grpc.aio``.

    Same arguments, methods and results as :class:`Client`; methods are
    coroutines, and the ``*_stream`` methods return async iterators. The channel
    is created on first use, inside the running event loop; use the client from
    that loop only. Use ``async with``, or ``await client.close()``.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        metadata: MetadataInput = (),
        credentials: grpc.ChannelCredentials | None = None,
        bearer_token: str | None = None,
        options: ChannelOptions = (),
        retry: ClientRetry | None = None,
    ) -> None:
        super().__init__(
            target,
            timeout=timeout,
            metadata=metadata,
            credentials=credentials,
            bearer_token=bearer_token,
            options=options,
            retry=retry,
        )
        self._channel: grpc.aio.Channel | None = None
        self._stub: service_grpc.ImageGenerationServiceAsyncStub | None = None

    @property
    def channel(self) -> grpc.aio.Channel:
        """The underlying ``grpc.aio`` channel (created on first access, in the running loop)."""
        if self._channel is None:
            if self._credentials is not None:
                self._channel = grpc.aio.secure_channel(self._target, self._credentials, options=self._options)
            else:
                self._channel = grpc.aio.insecure_channel(self._target, options=self._options)
        return self._channel

    @property
    def _api(self) -> service_grpc.ImageGenerationServiceAsyncStub:
        if self._stub is None:
            self._stub = service_grpc.ImageGenerationServiceStub(self.channel)
        return self._stub

    async def close(self) -> None:
        """Close the channel; running calls are cancelled."""
        if self._channel is not None:
            channel, self._channel, self._stub = self._channel, None, None
            await channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # ------------------------------------------------------------------------------------------ calls

    async def generate(self, prompt: str, **options: Unpack[GenerationKwargs]) -> GenerationResult:
        """Generate one image; see :meth:`Client.generate` and :class:`imagegen.GenerationKwargs`."""
        spec = RequestSpec.build(prompt, **options)
        response = await self._unary(self._api.Generate, spec.generate_request(), spec.call)
        return GenerationResult.from_proto(response.generation)

    async def refine(
        self, prompt: str, *, history: Iterable[TurnInput], **options: Unpack[GenerationKwargs]
    ) -> GenerationResult:
        """Edit an image over several turns; see :meth:`Client.refine`."""
        spec = RequestSpec.build(prompt, history=history, **options)
        response = await self._unary(self._api.Refine, spec.refine_request(), spec.call)
        return GenerationResult.from_proto(response.generation)

    def generate_stream(self, prompt: str, **options: Unpack[GenerationKwargs]) -> AsyncEventStream:
        """Stream progress events of a generation; see :meth:`Client.generate_stream`.

        Not a coroutine: ``async for event in client.generate_stream(...)``.
        """
        spec = RequestSpec.build(prompt, **options)
        return AsyncEventStream(
            self._stream(lambda: self._api.GenerateStream, spec.generate_stream_request(), spec.call)
        )

    def refine_stream(
        self, prompt: str, *, history: Iterable[TurnInput], **options: Unpack[GenerationKwargs]
    ) -> AsyncEventStream:
        """Stream progress events of a refinement; see :meth:`Client.refine_stream`."""
        spec = RequestSpec.build(prompt, history=history, **options)
        return AsyncEventStream(self._stream(lambda: self._api.RefineStream, spec.refine_stream_request(), spec.call))

    async def list_models(
        self, *, timeout: float | None = None, metadata: MetadataInput | None = None
    ) -> list[ModelInfo]:
        """The models the server accepts and what each supports."""
        call = CallOptions(idempotent=True, timeout=timeout, metadata=metadata)
        response = await self._unary(self._api.ListModels, service_pb2.ListModelsRequest(), call)
        return [ModelInfo.from_proto(m) for m in response.models]

    async def conversation(self, prompt: str, **options: Unpack[GenerationKwargs]) -> AsyncConversation:
        """Generate a first image and return an :class:`imagegen.AsyncConversation` to refine it."""
        return await AsyncConversation.start(self, prompt, **options)

    # -------------------------------------------------------------------------------------- internals

    async def _unary(
        self, method: grpc.aio.UnaryUnaryMultiCallable[_Req, _Resp], request: _Req, call: CallOptions
    ) -> _Resp:
        attempts = self._attempts(call)
        metadata = self._call_metadata(call)
        while True:
            try:
                return await method(request, timeout=attempts.remaining(), metadata=metadata)
            except grpc.RpcError as err:
                delay = attempts.retry_delay(err)
            await asyncio.sleep(delay)

    async def _stream(
        self,
        method: Callable[[], grpc.aio.UnaryStreamMultiCallable[_Req, _Stream]],
        request: _Req,
        call: CallOptions,
    ) -> AsyncGenerator[StreamEvent, None]:
        attempts = self._attempts(call)
        metadata = self._call_metadata(call)
        while True:
            received = False
            rpc = method()(request, timeout=attempts.remaining(), metadata=metadata)
            try:
                async for response in rpc:
                    event = event_from_response(response)
                    if event is not None:
                        received = True
                        yield event
                return
            except grpc.RpcError as err:
                delay = attempts.retry_delay(err, after_events=received)
            finally:
                rpc.cancel()
            await asyncio.sleep(delay)
