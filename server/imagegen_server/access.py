"""Who may call, and how much, checked once per RPC before its body is decoded: one server interceptor.

For each call, :class:`AccessInterceptor`:

1. asks the :class:`~imagegen_server.auth.Authenticator` about the call's
   metadata as soon as the call arrives (with mutual TLS and no token, the
   client certificate decides once the handler runs: gRPC shows the peer's
   certificate only to the handler);
2. when the request bytes arrive, before decoding them, checks the method's
   size limit and the server-wide bound on request bytes in flight
   (:class:`~imagegen_server.inflight.RequestBytes`);
3. counts the call against its caller's quotas
   (:class:`~imagegen_server.quotas.CallerLimiter`).

:meth:`AccessInterceptor.admitted` runs the same checks, with the same state,
for calls the REST gateway carries. A refused call is never decoded or run: it ends with UNAUTHENTICATED,
PERMISSION_DENIED or RESOURCE_EXHAUSTED and its ErrorInfo. An admitted call's
caller is bound for everything below (:func:`~imagegen_server.caller.bind_caller`):
access log, metrics, pipeline.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, NoReturn

import grpc

from imagegen_server import errors
from imagegen_server.auth import UNLIMITED, Authenticator, Verdict
from imagegen_server.caller import bind_caller
from imagegen_server.errors import ServiceError
from imagegen_server.inflight import RequestBytes
from imagegen_server.quotas import CallerLimiter, QuotaExceeded
from imagegen_server.tls import peer_identity

Ctx = grpc.aio.ServicerContext[Any, Any]
Deserializer = Callable[[bytes], Any] | None

#: Suggested wait after a refusal by the memory bound.
MEMORY_RETRY_DELAY = 1.0


class _Call:
    """What the interceptor learned about one call before its handler runs."""

    __slots__ = ("bytes_held", "method", "rejection", "verdict")

    def __init__(self, method: str) -> None:
        self.method = method
        #: Decided from metadata; None when the client certificate decides.
        self.verdict: Verdict | None = None
        #: The status to end the call with instead of running it.
        self.rejection: ServiceError | None = None
        #: Request bytes counted against the memory bound, given back when the call ends.
        self.bytes_held = 0


class AccessInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates, bounds and rate-limits every call; refused calls are never decoded or run.

    ``request_limit(method)`` is the largest request (bytes) a method accepts.
    """

    def __init__(
        self,
        authenticator: Authenticator,
        limiter: CallerLimiter,
        request_bytes: RequestBytes,
        request_limit: Callable[[str], int],
    ) -> None:
        self._auth = authenticator
        self._limiter = limiter
        self._bytes = request_bytes
        self._request_limit = request_limit

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        """Decide from the metadata now; wrap the handler to enforce the rest."""
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        call = _Call(handler_call_details.method)
        try:
            call.verdict = self._auth.by_metadata(call.method, handler_call_details.invocation_metadata)
        except ServiceError as err:
            call.rejection = err
        unary_request = handler.unary_unary is not None or handler.unary_stream is not None
        replaced: dict[str, Any] = {
            "request_deserializer": self._deserializer(call, handler.request_deserializer, counted=unary_request)
        }
        if handler.unary_unary is not None:
            replaced["unary_unary"] = self._unary(call, handler.unary_unary)
        elif handler.unary_stream is not None:
            replaced["unary_stream"] = self._stream(call, handler.unary_stream)
        elif handler.stream_unary is not None:
            replaced["stream_unary"] = self._unary(call, handler.stream_unary)
        elif handler.stream_stream is not None:
            replaced["stream_stream"] = self._stream(call, handler.stream_stream)
        return handler._replace(**replaced)  # type: ignore[attr-defined, no-any-return]

    def _deserializer(self, call: _Call, inner: Deserializer, *, counted: bool) -> Callable[[bytes], Any]:
        """Check the raw request against the limits, then decode it; a refused request is dropped undecoded."""
        limit = self._request_limit(call.method)

        def deserialize(raw: bytes) -> Any:
            if call.rejection is not None:
                return None
            size = len(raw)
            if size > limit:
                call.rejection = errors.request_too_large(limit, size, {"method": call.method})
                return None
            if counted:
                if not self._bytes.try_reserve(size):
                    call.rejection = errors.memory_overloaded(MEMORY_RETRY_DELAY, {"method": call.method})
                    return None
                call.bytes_held += size
            return inner(raw) if inner is not None else raw

        return deserialize

    def _unary(self, call: _Call, inner: Callable[..., Any]) -> Callable[..., Any]:
        async def admitted(request: Any, context: Ctx) -> Any:
            try:
                release = await self._admit(call, context)
                try:
                    return await inner(request, context)
                finally:
                    release()
            finally:
                self._release_bytes(call)

        return admitted

    def _stream(self, call: _Call, inner: Callable[..., Any]) -> Callable[..., Any]:
        async def admitted(request: Any, context: Ctx) -> AsyncIterator[Any]:
            try:
                release = await self._admit(call, context)
                try:
                    messages = inner(request, context)
                    if isinstance(messages, Awaitable):
                        # A handler that streams with context.write() (e.g. health Watch).
                        await messages
                        return
                    async for message in messages:
                        yield message
                finally:
                    release()
            finally:
                self._release_bytes(call)

        return admitted

    async def _admit(self, call: _Call, context: Ctx) -> Callable[[], None]:
        """Bind the caller and count the call against its quotas; aborts the call when it is refused.

        Returns what gives the caller's concurrency back.
        """
        if call.rejection is not None:
            await _abort(context, call.rejection)
        verdict = call.verdict
        if verdict is None:
            try:
                verdict = self._auth.by_certificate(call.method, peer_identity(context))
            except ServiceError as err:
                await _abort(context, err)
        bind_caller(verdict.caller)
        if verdict.quota == UNLIMITED:
            return _nothing
        try:
            lease = await self._limiter.acquire(verdict.caller.name, verdict.quota)
        except QuotaExceeded as exceeded:
            await _abort(
                context,
                errors.caller_quota_exceeded(
                    verdict.caller.name, exceeded.quota, exceeded.limit, exceeded.retry_after, {"method": call.method}
                ),
            )
        except ServiceError as err:  # the quota cannot be counted (shared state down, failing closed)
            await _abort(context, err)
        return lease.release

    @contextlib.asynccontextmanager
    async def admitted(
        self, method: str, metadata: Iterable[tuple[str, str | bytes]], size: int, identity: str | None = None
    ) -> AsyncIterator[None]:
        """The same checks for a call another transport carries (the REST gateway), as one block.

        ``method`` is ``/package.Service/Method``, ``metadata`` the call's headers, ``size`` its request
        body's bytes (not yet decoded), ``identity`` the verified client certificate's name (mutual TLS)
        or None. Raises the refusal's :class:`ServiceError`; inside the block the caller is bound and
        counted against its quotas, and the bytes against the memory bound.
        """
        verdict = self._auth.by_metadata(method, metadata)
        if verdict is None:  # mutual TLS and no token: the client certificate decides
            verdict = self._auth.by_certificate(method, identity)
        limit = self._request_limit(method)
        if size > limit:
            raise errors.request_too_large(limit, size, {"method": method})
        if not self._bytes.try_reserve(size):
            raise errors.memory_overloaded(MEMORY_RETRY_DELAY, {"method": method})
        try:
            bind_caller(verdict.caller)
            release = _nothing
            if verdict.quota != UNLIMITED:
                try:
                    release = (await self._limiter.acquire(verdict.caller.name, verdict.quota)).release
                except QuotaExceeded as exceeded:
                    raise errors.caller_quota_exceeded(
                        verdict.caller.name, exceeded.quota, exceeded.limit, exceeded.retry_after, {"method": method}
                    ) from None
            try:
                yield
            finally:
                release()
        finally:
            self._bytes.release(size)

    def _release_bytes(self, call: _Call) -> None:
        if call.bytes_held:
            self._bytes.release(call.bytes_held)
            call.bytes_held = 0


def _nothing() -> None:
    pass


async def _abort(context: Ctx, err: ServiceError) -> NoReturn:
    await context.abort_with_status(err.to_grpc_status())
    raise AssertionError("abort_with_status returned")  # pragma: no cover - it always raises
