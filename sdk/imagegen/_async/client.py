"""The client: typed calls of the imagegen gateway, with optional client-side retries."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Iterable
from types import TracebackType
from typing import Self, TypeVar, Unpack

import grpc

from imagegen._async.connection import AsyncConnection
from imagegen._async.conversation import AsyncConversation
from imagegen._async.stream import AsyncEventStream
from imagegen._config import DEFAULT_TARGET, DEFAULT_TIMEOUT, ChannelOptions, ClientConfig, PemSource
from imagegen._convert import CallOptions, GenerationKwargs, MetadataInput, RequestSpec, TurnInput, event_from_response
from imagegen._retry import ClientRetry
from imagegen.types import GenerationResult, ModelInfo, StreamEvent
from imagegen.v1 import image_generation_service_pb2 as service_pb2

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")
_Stream = TypeVar("_Stream", service_pb2.GenerateStreamResponse, service_pb2.RefineStreamResponse)


class AsyncClient(ClientConfig):
    """Asynchronous client for the imagegen gateway, on ``grpc.aio``.

    Args:
        target: ``host:port`` of the server.
        timeout: Default deadline of each call in seconds, client-side retries
            included; ``None`` for no deadline. Each method's ``timeout=`` overrides it.
        metadata: gRPC metadata sent with every call (pairs or a mapping).
        credentials: TLS channel credentials (``grpc.ssl_channel_credentials()``);
            ``None`` for a plaintext channel (unless ``ca_cert`` or ``client_cert`` is given).
        bearer_token: Sent as ``authorization: Bearer <token>`` on every call.
        ca_cert: TLS: the CA that signed the server's certificate (PEM path or bytes).
        client_cert: mutual TLS: this client's certificate (PEM path or bytes); needs ``client_key``.
        client_key: mutual TLS: the private key of ``client_cert``.
        options: Extra channel options; they override the defaults (64 MiB send and
            receive limits, user agent).
        retry: Client-side retries (:class:`imagegen.ClientRetry`); off by default.

    Methods are coroutines; ``generate_stream`` and ``refine_stream`` return async iterators.
    The channel opens on first use, inside the running event loop: use the client from that loop only.
    Use ``async with``, or ``await client.close()``.
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
        ca_cert: PemSource | None = None,
        client_cert: PemSource | None = None,
        client_key: PemSource | None = None,
    ) -> None:
        super().__init__(
            target,
            timeout=timeout,
            metadata=metadata,
            credentials=credentials,
            bearer_token=bearer_token,
            options=options,
            retry=retry,
            ca_cert=ca_cert,
            client_cert=client_cert,
            client_key=client_key,
        )
        self._connection = AsyncConnection(target, self._credentials, self._options)

    @property
    def channel(self) -> grpc.aio.Channel:
        """The underlying channel, for calling the generated stubs (``imagegen.v1``) directly."""
        return self._connection.channel

    async def close(self) -> None:
        """Close the channel; running calls are cancelled."""
        await self._connection.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # ------------------------------------------------------------------------------------------ calls

    async def generate(self, prompt: str, **options: Unpack[GenerationKwargs]) -> GenerationResult:
        """Generate one image from a prompt and optional input images.

        Args:
            prompt: What to draw.
            **options: Keyword options ``input_images``, ``model``, ``width``, ``height``,
                ``aspect_ratio``, ``image_size``, ``seed``, ``request_id``,
                ``disable_model_fallback``, ``timeout`` and ``metadata``, shared by every
                generation method and documented once in :class:`imagegen.GenerationKwargs`.

        Returns:
            The image and everything known about how it was made.

        Raises:
            ImagegenError: A subclass by meaning, e.g. :class:`imagegen.RateLimitError`.
        """
        spec = RequestSpec.build(prompt, **options)
        response = await self._unary(self._connection.stub.Generate, spec.generate_request(), spec.call)
        return GenerationResult.from_proto(response.generation)

    async def refine(
        self, prompt: str, *, history: Iterable[TurnInput], **options: Unpack[GenerationKwargs]
    ) -> GenerationResult:
        """Edit an image over several turns: a new prompt plus the conversation so far.

        ``history`` is oldest first: user turns, and each result's ``model_turn``
        as returned (its thought signatures must stay byte for byte). The
        :class:`imagegen.AsyncConversation` helper keeps it for you. Other arguments
        are as for :meth:`generate` (:class:`imagegen.GenerationKwargs`).
        """
        spec = RequestSpec.build(prompt, history=history, **options)
        response = await self._unary(self._connection.stub.Refine, spec.refine_request(), spec.call)
        return GenerationResult.from_proto(response.generation)

    def generate_stream(self, prompt: str, **options: Unpack[GenerationKwargs]) -> AsyncEventStream:
        """Like :meth:`generate`, streaming progress events.

        Yields :class:`imagegen.Accepted`, then per upstream attempt
        :class:`imagegen.AttemptStarted` and possibly :class:`imagegen.AttemptFailed`
        (with the server's retry delay), :class:`imagegen.Heartbeat` and
        :class:`imagegen.Preview` while waiting, :class:`imagegen.ModelFallback` when
        the server moves the request to a fallback model, and finally
        :class:`imagegen.Completed`.
        A failure raises from the iteration. Returns at once; the call starts when
        iteration starts: ``async for event in client.generate_stream(...)``.
        Options: :class:`imagegen.GenerationKwargs`.
        """
        spec = RequestSpec.build(prompt, **options)
        request = spec.generate_stream_request()
        return AsyncEventStream(self._stream(lambda: self._connection.stub.GenerateStream, request, spec.call))

    def refine_stream(
        self, prompt: str, *, history: Iterable[TurnInput], **options: Unpack[GenerationKwargs]
    ) -> AsyncEventStream:
        """Like :meth:`refine`, streaming the progress events of :meth:`generate_stream`."""
        spec = RequestSpec.build(prompt, history=history, **options)
        request = spec.refine_stream_request()
        return AsyncEventStream(self._stream(lambda: self._connection.stub.RefineStream, request, spec.call))

    async def list_models(
        self, *, timeout: float | None = None, metadata: MetadataInput | None = None
    ) -> list[ModelInfo]:
        """The models the server accepts and what each supports."""
        call = CallOptions(idempotent=True, timeout=timeout, metadata=metadata)
        response = await self._unary(self._connection.stub.ListModels, service_pb2.ListModelsRequest(), call)
        return [ModelInfo.from_proto(m) for m in response.models]

    async def conversation(self, prompt: str, **options: Unpack[GenerationKwargs]) -> AsyncConversation:
        """Generate a first image and return an :class:`imagegen.AsyncConversation` to refine it.

        Same as ``await AsyncConversation.start(client, prompt, ...)``. Model and size
        options are kept for later turns (see :class:`imagegen.GenerationKwargs`).
        """
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
        # ``method`` is looked up when iteration starts: an AsyncClient opens its channel there.
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
