"""Request bytes that do not decode: INVALID_ARGUMENT with ErrorInfo on every method, in one interceptor.

grpc.aio decodes each request message with its method handler's ``request_deserializer``
before any handler code runs. When that raises (truncated or garbage bytes, invalid UTF-8
in a string field), grpc logs a traceback and the caller gets UNKNOWN with a message naming
a Python exception class. :class:`DecodeInterceptor` gives every method (ours, health,
reflection) a deserializer that never raises: bytes that do not decode become an
:class:`Undecodable` marker, and the wrapped handler answers it with INVALID_ARGUMENT
(``UNDECODABLE_REQUEST``) before any servicer sees it.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc

from imagegen.v1.error_reason_pb2 import ErrorReason
from imagegen_server import errors

Ctx = grpc.aio.ServicerContext[Any, Any]
Deserializer = Callable[[bytes], Any]


@dataclass(frozen=True, slots=True)
class Undecodable:
    """Stands in for a request message whose bytes did not decode."""

    #: The message type the bytes should have been (``imagegen.v1.GenerateRequest``).
    message_type: str
    #: How many bytes arrived.
    size: int


def undecodable_request(method: str, bad: Undecodable) -> errors.ServiceError:
    """The INVALID_ARGUMENT status for a request that did not decode (no exception text in it)."""
    return errors.build(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"the request bytes ({bad.size}) are not a valid {bad.message_type}: "
        "truncated or corrupt, or a string field is not valid UTF-8",
        ErrorReason.ERROR_REASON_UNDECODABLE_REQUEST,
        {"method": method, "requestBytes": str(bad.size)},
    )


def tolerant(deserializer: Deserializer | None) -> Deserializer:
    """``deserializer`` returning :class:`Undecodable` where it would raise."""
    if deserializer is None:  # the handler takes raw bytes: nothing can fail to decode
        return lambda raw: raw
    message_class = getattr(deserializer, "__self__", None)  # ``Message.FromString`` is a bound classmethod
    descriptor = getattr(message_class, "DESCRIPTOR", None)
    message_type = getattr(descriptor, "full_name", "request message")

    def deserialize(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except Exception:
            # DecodeError, and whatever else a decoder raises for hostile bytes: they are the caller's
            # mistake, answered as such, not a server failure worth a traceback.
            return Undecodable(message_type, len(raw))

    return deserialize


class DecodeInterceptor(grpc.aio.ServerInterceptor):
    """Answers requests that do not decode with INVALID_ARGUMENT instead of UNKNOWN, on every method."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        """Swap in a tolerant deserializer and a handler that rejects what it could not decode."""
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method.rsplit("/", 1)[-1]
        replaced: dict[str, Any] = {"request_deserializer": tolerant(handler.request_deserializer)}
        if handler.unary_unary is not None:
            replaced["unary_unary"] = _unary(method, handler.unary_unary)
        elif handler.unary_stream is not None:
            replaced["unary_stream"] = _unary_stream(method, handler.unary_stream)
        elif handler.stream_unary is not None:
            replaced["stream_unary"] = _stream_unary(method, handler.stream_unary)
        elif handler.stream_stream is not None:
            replaced["stream_stream"] = _stream_stream(method, handler.stream_stream)
        return handler._replace(**replaced)  # type: ignore[attr-defined, no-any-return]


async def _reject(method: str, bad: Undecodable, context: Ctx) -> NoReturn:
    await context.abort_with_status(undecodable_request(method, bad).to_grpc_status())
    raise AssertionError("abort_with_status returned")  # pragma: no cover - it always raises


def _unary(method: str, inner: Callable[..., Any]) -> Callable[..., Any]:
    async def behaviour(request: Any, context: Ctx) -> Any:
        if isinstance(request, Undecodable):
            await _reject(method, request, context)
        return await inner(request, context)

    return behaviour


async def _responses(inner: Callable[..., Any], request: Any, context: Ctx) -> AsyncIterator[Any]:
    messages = inner(request, context)
    if isinstance(messages, Awaitable):
        # A handler that streams with context.write() (e.g. health Watch).
        await messages
        return
    async for message in messages:
        yield message


def _unary_stream(method: str, inner: Callable[..., Any]) -> Callable[..., Any]:
    async def behaviour(request: Any, context: Ctx) -> AsyncIterator[Any]:
        if isinstance(request, Undecodable):
            await _reject(method, request, context)
        async for message in _responses(inner, request, context):
            yield message

    return behaviour


async def _checked(method: str, requests: AsyncIterable[Any], context: Ctx) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, Undecodable):
            await _reject(method, request, context)
        yield request


def _stream_unary(method: str, inner: Callable[..., Any]) -> Callable[..., Any]:
    async def behaviour(requests: AsyncIterable[Any], context: Ctx) -> Any:
        return await inner(_checked(method, requests, context), context)

    return behaviour


def _stream_stream(method: str, inner: Callable[..., Any]) -> Callable[..., Any]:
    async def behaviour(requests: AsyncIterable[Any], context: Ctx) -> AsyncIterator[Any]:
        async for message in _responses(inner, _checked(method, requests, context), context):
            yield message

    return behaviour
