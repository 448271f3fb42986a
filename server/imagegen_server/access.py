"""Who may call, checked once per RPC before its body is decoded: one server interceptor.

For each call, :class:`AccessInterceptor` asks the
:class:`~imagegen_server.auth.Authenticator` about the call's metadata as soon
as the call arrives; a call that is refused there never has its request bytes
decoded (the wrapped ``request_deserializer`` drops them) and ends with the
UNAUTHENTICATED or PERMISSION_DENIED status. With mutual TLS and no token, the
client certificate decides once the handler runs (gRPC shows the peer's
certificate only to the handler). The caller is then bound for everything
below (:func:`~imagegen_server.caller.bind_caller`): access log, metrics,
pipeline.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn

import grpc

from imagegen_server.auth import Authenticator, Verdict
from imagegen_server.caller import bind_caller
from imagegen_server.errors import ServiceError
from imagegen_server.tls import peer_identity

Ctx = grpc.aio.ServicerContext[Any, Any]
Deserializer = Callable[[bytes], Any] | None


class _Call:
    """What the interceptor learned about one call before its handler runs."""

    __slots__ = ("method", "rejection", "verdict")

    def __init__(self, method: str) -> None:
        self.method = method
        #: Decided from metadata; None when the client certificate decides.
        self.verdict: Verdict | None = None
        #: The status to end the call with instead of running it.
        self.rejection: ServiceError | None = None


class AccessInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates every call and binds its caller; refused calls are never decoded or run."""

    def __init__(self, authenticator: Authenticator) -> None:
        self._auth = authenticator

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        """Decide from the metadata now; wrap the handler to enforce it."""
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        call = _Call(handler_call_details.method)
        try:
            call.verdict = self._auth.by_metadata(call.method, handler_call_details.invocation_metadata)
        except ServiceError as err:
            call.rejection = err
        replaced: dict[str, Any] = {"request_deserializer": _deserializer(call, handler.request_deserializer)}
        if handler.unary_unary is not None:
            replaced["unary_unary"] = self._unary(call, handler.unary_unary)
        elif handler.unary_stream is not None:
            replaced["unary_stream"] = self._stream(call, handler.unary_stream)
        elif handler.stream_unary is not None:
            replaced["stream_unary"] = self._unary(call, handler.stream_unary)
        elif handler.stream_stream is not None:
            replaced["stream_stream"] = self._stream(call, handler.stream_stream)
        return handler._replace(**replaced)  # type: ignore[attr-defined, no-any-return]

    def _unary(self, call: _Call, inner: Callable[..., Any]) -> Callable[..., Any]:
        async def admitted(request: Any, context: Ctx) -> Any:
            await self._admit(call, context)
            return await inner(request, context)

        return admitted

    def _stream(self, call: _Call, inner: Callable[..., Any]) -> Callable[..., Any]:
        async def admitted(request: Any, context: Ctx) -> AsyncIterator[Any]:
            await self._admit(call, context)
            messages = inner(request, context)
            if isinstance(messages, Awaitable):
                # A handler that streams with context.write() (e.g. health Watch).
                await messages
                return
            async for message in messages:
                yield message

        return admitted

    async def _admit(self, call: _Call, context: Ctx) -> Verdict:
        """The call's verdict, with its caller bound; aborts the call when it is refused."""
        if call.rejection is not None:
            await _abort(context, call.rejection)
        verdict = call.verdict
        if verdict is None:
            try:
                verdict = self._auth.by_certificate(call.method, peer_identity(context))
            except ServiceError as err:
                await _abort(context, err)
        bind_caller(verdict.caller)
        return verdict


def _deserializer(call: _Call, inner: Deserializer) -> Callable[[bytes], Any]:
    """Decode the request, unless the call is already refused (then its bytes are dropped undecoded)."""

    def deserialize(raw: bytes) -> Any:
        if call.rejection is not None:
            return None
        return inner(raw) if inner is not None else raw

    return deserialize


async def _abort(context: Ctx, err: ServiceError) -> NoReturn:
    await context.abort_with_status(err.to_grpc_status())
    raise AssertionError("abort_with_status returned")  # pragma: no cover - it always raises
