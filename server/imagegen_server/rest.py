"""REST/JSON and Server-Sent Events for callers without gRPC, served by the same process (``--http-port``).

Routes come from the ``google.api.http`` annotations of the service's
descriptors (``POST /v1/images:generate``, ``GET /v1/models``, ...), never
written out twice. Each route runs the very servicer method the gRPC port
runs (same pipeline, limits and idempotency) through :class:`RestContext`,
after the same caller check (:data:`Admit`) and inside the same
:class:`~imagegen_server.observability.RpcObserver` (access line, metrics).

Bodies use protobuf's JSON mapping (``json_format``). Unary answers are the
response message as JSON; streaming RPCs answer ``text/event-stream`` with one
event per stream message, named by its kind (``event: accepted``,
``attempt_started``, ``attempt_failed``, ``preview``, ``heartbeat``,
``completed``), the whole stream message as ``data``. A failure is a JSON
``google.rpc.Status`` (code, message, details with ``@type``) with the HTTP
status Google APIs use for its code; once a stream has started it is the last
event instead, ``event: error``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Final, NoReturn

import grpc
import orjson
from aiohttp import web
from google.api import annotations_pb2, http_pb2
from google.protobuf import json_format, message, message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.rpc import error_details_pb2, status_pb2  # noqa: F401 - registers the detail types for Any -> JSON

from imagegen_server import errors
from imagegen_server.errors import ServiceError
from imagegen_server.observability import Metadata, RpcObserver, RpcOutcome, request_id_of

log = logging.getLogger(__name__)

#: HTTP status of each gRPC code, as Google APIs map them (google/rpc/code.proto).
HTTP_STATUS: Final[dict[grpc.StatusCode, int]] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}

_CODES: Final = {code.value[0]: code for code in grpc.StatusCode}

#: The trailer that carries a status's ``google.rpc`` details (grpcio-status puts them there).
_DETAILS_KEY: Final = "grpc-status-details-bin"

#: Request headers passed to the servicer as gRPC metadata (lower-case, as gRPC has them).
FORWARDED_HEADERS: Final = ("authorization", "traceparent", "tracestate", "x-request-id")

#: Headers a browser may send cross-origin (CORS preflight answer).
_CORS_ALLOW_HEADERS: Final = "authorization, content-type, traceparent, tracestate, x-request-id, x-server-timeout"

#: Admits a call of ``method`` (``/package.Service/Method``) with its metadata and request size, as the
#: gRPC port does (caller, size limits, quotas: :meth:`AccessInterceptor.admitted`): raises the refusal's
#: :class:`ServiceError`, else the block runs with the caller bound and counted.
#: The last argument is the verified client certificate's identity (mutual TLS), or None.
Admit = Callable[[str, Metadata, int, str | None], AbstractAsyncContextManager[None]]


@contextlib.asynccontextmanager
async def admit_everyone(method: str, metadata: Metadata, size: int, identity: str | None) -> AsyncIterator[None]:
    """The :data:`Admit` of a server that checks nothing."""
    yield


@dataclass(frozen=True, slots=True)
class Route:
    """One RPC as a REST route, read from its ``google.api.http`` rule."""

    http_method: str
    path: str
    #: ``*`` when the whole request message is the JSON body, ``""`` when there is no body.
    body: str
    rpc: MethodDescriptor

    @property
    def full_method(self) -> str:
        """``/package.Service/Method``, as gRPC names it."""
        return f"/{self.rpc.containing_service.full_name}/{self.rpc.name}"


def routes(service: ServiceDescriptor) -> list[Route]:
    """The REST routes of every method of ``service`` that has a ``google.api.http`` rule."""
    found: list[Route] = []
    for rpc in service.methods:
        rule: http_pb2.HttpRule = rpc.GetOptions().Extensions[annotations_pb2.http]  # type: ignore[index]
        pattern = rule.WhichOneof("pattern")
        if pattern is None:
            continue
        if pattern == "custom":
            http_method, path = rule.custom.kind, rule.custom.path
        else:
            http_method, path = pattern.upper(), getattr(rule, pattern)
        if "{" in path:  # no route of ours binds path variables; refuse silently-wrong routing
            raise ValueError(f"{rpc.full_name}: path variables are not supported ({path})")
        found.append(Route(http_method, path, rule.body, rpc))
    return found


class _Aborted(Exception):
    """The servicer ended the call with a status (``abort_with_status``)."""

    def __init__(self, status: status_pb2.Status) -> None:
        super().__init__(status.message)
        self.status = status


class RestContext(grpc.aio.ServicerContext[Any, Any]):
    """The servicer's context for a call that came over REST: metadata, deadline, abort.

    Only what the servicer uses is real; streaming via ``read``/``write`` is
    not (the servicer yields its messages).
    """

    def __init__(self, metadata: Sequence[tuple[str, str]], timeout: float | None) -> None:
        self._metadata = tuple(metadata)
        loop = asyncio.get_running_loop()
        self._deadline = None if timeout is None else loop.time() + timeout
        self._code: grpc.StatusCode | None = None
        self._details: str | None = None

    def invocation_metadata(self) -> grpc.aio.Metadata:
        """The forwarded request headers."""
        return grpc.aio.Metadata(*self._metadata)

    def time_remaining(self) -> float | None:  # type: ignore[override]  # grpc.aio's also returns None
        """Seconds left of the caller's ``X-Server-Timeout``, or None."""
        if self._deadline is None:
            return None
        return max(self._deadline - asyncio.get_running_loop().time(), 0.0)

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> NoReturn:
        """End the call with ``code``."""
        raise _Aborted(status_pb2.Status(code=code.value[0], message=details))

    async def abort_with_status(self, status: grpc.Status) -> NoReturn:
        """End the call with ``status`` and its ``google.rpc`` details."""
        for key, value in status.trailing_metadata or ():
            if key == _DETAILS_KEY and isinstance(value, bytes):
                raise _Aborted(status_pb2.Status.FromString(value))
        raise _Aborted(status_pb2.Status(code=status.code.value[0], message=status.details or ""))

    def set_code(self, code: grpc.StatusCode) -> None:
        """Remember the code (the servicer aborts instead; kept for completeness)."""
        self._code = code

    def set_details(self, details: str) -> None:
        """Remember the details."""
        self._details = details

    def code(self) -> grpc.StatusCode | None:  # type: ignore[override]
        """The code set, if any."""
        return self._code

    def details(self) -> str | None:  # type: ignore[override]
        """The details set, if any."""
        return self._details

    async def read(self) -> Any:
        """Not a client-streaming transport."""
        raise NotImplementedError

    async def write(self, message: Any) -> None:
        """The servicer yields its stream messages instead."""
        raise NotImplementedError

    async def send_initial_metadata(self, initial_metadata: Any) -> None:
        """HTTP headers are sent with the first byte; nothing to do."""

    def set_trailing_metadata(self, trailing_metadata: Any) -> None:
        """HTTP/1.1 has no trailers for us to send; dropped."""

    def set_compression(self, compression: grpc.Compression) -> None:
        """HTTP compression is aiohttp's business."""

    def disable_next_message_compression(self) -> None:
        """No per-message compression over HTTP."""

    def peer(self) -> str:
        """Not tracked for REST calls."""
        return ""

    def peer_identities(self) -> Iterable[bytes] | None:
        """No client certificates on the REST port."""
        return None

    def peer_identity_key(self) -> str | None:
        """No client certificates on the REST port."""
        return None

    def auth_context(self) -> dict[str, Iterable[bytes]]:
        """No transport security identities for REST calls."""
        return {}


def peer_identity(http: web.Request) -> str | None:
    """The verified client certificate's identity (common name, else first subject alternative name), or None.

    The same rule as the gRPC port's (:func:`imagegen_server.tls.peer_identity`).
    """
    transport = http.transport
    cert = transport.get_extra_info("peercert") if transport is not None else None
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName" and value:
                return str(value)
    for _kind, value in cert.get("subjectAltName", ()):
        if value:
            return str(value)
    return None


def status_json(status: status_pb2.Status) -> bytes:
    """A ``google.rpc.Status`` in protobuf's JSON mapping (details with ``@type``)."""
    return orjson.dumps(json_format.MessageToDict(status))


def http_status(status: status_pb2.Status) -> int:
    """The HTTP status Google APIs use for the status's code."""
    return HTTP_STATUS.get(_CODES.get(status.code, grpc.StatusCode.UNKNOWN), 500)


def _error_response(status: status_pb2.Status) -> web.Response:
    return web.Response(status=http_status(status), body=status_json(status), content_type="application/json")


def _code_name(status: status_pb2.Status) -> str:
    return _CODES.get(status.code, grpc.StatusCode.UNKNOWN).name


def _sse(event: str, data: bytes) -> bytes:
    """One Server-Sent Event; JSON from orjson has no newlines, so one ``data:`` line."""
    return b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"


_NO_FIELD = re.compile(r'has no field named "([^"]+)" at "[^".\[]*\.?([^"]*)"')
_BAD_FIELD = re.compile(r"Failed to parse (\w+) field")


def _bad_body(description: str) -> ServiceError:
    return errors.invalid_request([errors.FieldViolation("body", description)])


def _parse_error(exc: json_format.ParseError) -> ServiceError:
    """INVALID_ARGUMENT naming the field protobuf's JSON parser refused, as a path (``history[0].parts[0].txt``)."""
    text = str(exc).split("\n", 1)[0]
    unknown = _NO_FIELD.search(text)
    if unknown:
        name, at = unknown.groups()
        field = f"{at}.{name}" if at else name
        description = "no such field in the request"
    else:
        field = ".".join(_BAD_FIELD.findall(text)) or "body"
        description = f"not a valid value: {text.rsplit(': ', 1)[-1][:200]}"
    return errors.invalid_request([errors.FieldViolation(field, description)])


def _parse(raw: bytes, request: message.Message) -> message.Message:
    """The request message from its JSON body (protobuf's JSON mapping; unknown fields refused)."""
    try:
        document = orjson.loads(raw or b"{}")
    except orjson.JSONDecodeError as exc:
        raise _bad_body(f"not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise _bad_body("must be a JSON object (the request message)")
    try:
        json_format.ParseDict(document, request)
    except json_format.ParseError as exc:
        raise _parse_error(exc) from None
    return request


class RestGateway:
    """The REST/SSE face of one servicer: an aiohttp app with a handler per annotated RPC."""

    def __init__(
        self,
        servicer: object,
        service: ServiceDescriptor,
        observer: RpcObserver,
        *,
        admit: Admit = admit_everyone,
        cors_origins: Sequence[str] = (),
        max_body_bytes: int,
    ) -> None:
        self._servicer = servicer
        self._observer = observer
        self._admit = admit
        self._cors = tuple(cors_origins)
        self._routes = routes(service)
        self._max_body = max_body_bytes

    def app(self) -> web.Application:
        """The aiohttp application serving every route (and CORS, when configured)."""
        # Images are base64 in JSON: a third larger than the gRPC message limit, plus the JSON around them.
        app = web.Application(client_max_size=self._max_body * 4 // 3 + 64 * 1024)
        for route in self._routes:
            app.router.add_route(route.http_method, route.path, self._handler(route))
            if self._cors:
                app.router.add_route("OPTIONS", route.path, self._preflight)
        if self._cors:
            app.on_response_prepare.append(self._cors_headers)
        return app

    def _handler(self, route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await self._serve(route, request)

        return handle

    async def _serve(self, route: Route, http: web.Request) -> web.StreamResponse:
        metadata = [(name, http.headers[name]) for name in FORWARDED_HEADERS if name in http.headers]
        rpc_name = route.full_method.lstrip("/")
        attributes = {"http.request.method": http.method, "url.path": http.path, "url.scheme": http.scheme}
        with self._observer.observe(rpc_name, None, metadata, transport="rest", span_attributes=attributes) as outcome:
            try:
                raw = await self._body(route, http)
                outcome.received = len(raw)
                # Admitted (caller, limits, quotas) before the body is parsed, as on the gRPC port.
                async with self._admit(route.full_method, metadata, len(raw), peer_identity(http)):
                    message = _parse(raw, _message_class(route.rpc)()) if route.body else _message_class(route.rpc)()
                    outcome.request = message
                    outcome.context.request_id = request_id_of(message, metadata)
                    context = RestContext(metadata, _timeout(http))
                    method = getattr(self._servicer, route.rpc.name)
                    if route.rpc.server_streaming:
                        return await self._stream(method(message, context), http, outcome)
                    response = await method(message, context)
            except ServiceError as err:
                outcome.code = err.code.name
                return _error_response(err.status)
            except _Aborted as aborted:
                outcome.code = _code_name(aborted.status)
                return _error_response(aborted.status)
            body = orjson.dumps(json_format.MessageToDict(response))
            outcome.sent = len(body)
            return web.Response(body=body, content_type="application/json")

    async def _body(self, route: Route, http: web.Request) -> bytes:
        """The request body, unparsed (empty for bodiless routes)."""
        if not route.body:
            return b""
        try:
            return await http.read()
        except web.HTTPRequestEntityTooLarge:
            raise errors.invalid_request(
                [errors.FieldViolation("body", f"larger than {self._max_body} bytes of request (before base64)")]
            ) from None

    async def _stream(
        self, messages: AsyncGenerator[message.Message, None], http: web.Request, outcome: RpcOutcome
    ) -> web.StreamResponse:
        """Serve a server stream as SSE; a failure before the first message is a plain JSON error."""
        try:
            first = await anext(messages)
        except StopAsyncIteration:  # pragma: no cover - the servicer always sends at least one message
            first = None
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
        await response.prepare(http)
        try:
            if first is not None:
                await self._send(response, _event(first), outcome)
            async for item in messages:
                await self._send(response, _event(item), outcome)
        except _Aborted as aborted:
            outcome.code = _code_name(aborted.status)
            await self._send(response, _sse("error", status_json(aborted.status)), outcome)
        except ConnectionResetError:
            # The caller went away: the servicer's stream is closed below, which cancels the upstream call.
            outcome.code = grpc.StatusCode.CANCELLED.name
            return response
        finally:
            await messages.aclose()
        await response.write_eof()
        return response

    @staticmethod
    async def _send(response: web.StreamResponse, data: bytes, outcome: RpcOutcome) -> None:
        outcome.sent += len(data)
        await response.write(data)

    async def _cors_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        """Allow the configured origins to read answers (streams included: this runs as headers go out)."""
        origin = request.headers.get("Origin")
        if origin is not None and ("*" in self._cors or origin in self._cors):
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"

    async def _preflight(self, request: web.Request) -> web.Response:
        """Answer a CORS preflight: which methods and headers an allowed origin may use."""
        origin = request.headers.get("Origin")
        if origin is None or not ("*" in self._cors or origin in self._cors):
            return web.Response(status=403)
        return web.Response(
            status=204,
            headers={
                "Access-Control-Allow-Methods": "GET, POST",
                "Access-Control-Allow-Headers": _CORS_ALLOW_HEADERS,
                "Access-Control-Max-Age": "600",
            },
        )


def _event(item: message.Message) -> bytes:
    """A stream message as an SSE event named by the kind in its ``event`` oneof."""
    kind = item.WhichOneof("event") or "message"
    return _sse(kind, orjson.dumps(json_format.MessageToDict(item)))


def _message_class(rpc: MethodDescriptor) -> type[message.Message]:
    return message_factory.GetMessageClass(rpc.input_type)


def _timeout(http: web.Request) -> float | None:
    """The caller's deadline from ``X-Server-Timeout`` (seconds, as Google's REST APIs take it)."""
    raw = http.headers.get("X-Server-Timeout")
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise errors.invalid_request(
            [errors.FieldViolation("X-Server-Timeout", "must be a number of seconds")]
        ) from None
    if not value > 0:
        raise errors.invalid_request([errors.FieldViolation("X-Server-Timeout", "must be positive")])
    return value
