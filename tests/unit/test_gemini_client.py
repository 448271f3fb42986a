"""GeminiClient against small loopback servers: HTTP, SSE, transport failures, timeouts, cancellation.

An aiohttp test server plays Gemini where well-formed HTTP is enough; a raw
asyncio server plays the broken peer (reset mid-body, closed before answering).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.utils
import io
import json
import logging
import os
import socket
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from PIL import Image

from imagegen_server.gemini.client import GeminiClient
from imagegen_server.gemini.errors import ErrorKind, UpstreamError
from imagegen_server.gemini.types import Content, InlineImage, Part, UpstreamRequest

#: Shaped like a real key (39 characters, "AIza" prefix) so a leak would be recognisable.
KEY = "AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY"
MODEL = "gemini-3.1-flash-image"


def _png(size: tuple[int, int], noise: bool = False) -> bytes:
    buf = io.BytesIO()
    if noise:
        img = Image.frombytes("RGB", size, os.urandom(size[0] * size[1] * 3))
    else:
        img = Image.new("RGB", size, (10, 200, 30))
    img.save(buf, "PNG", compress_level=1)
    return buf.getvalue()


FINAL = _png((32, 24))
DRAFT_1 = _png((8, 6))
DRAFT_2 = _png((9, 7))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def image_part(data: bytes, **extra: Any) -> dict[str, Any]:
    return {"inlineData": {"mimeType": "image/png", "data": b64(data)}, **extra}


def chunk(*parts: dict[str, Any], finish: str | None = None, usage: bool = False) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": list(parts)}, "index": 0}
    if finish:
        candidate["finishReason"] = finish
    body: dict[str, Any] = {"candidates": [candidate], "modelVersion": MODEL, "responseId": "resp-1"}
    if usage:
        body["usageMetadata"] = {"promptTokenCount": 10, "candidatesTokenCount": 1120, "totalTokenCount": 1130}
    return body


SUCCESS = chunk(
    {"text": "A green square.", "thoughtSignature": b64(b"sig-text")},
    image_part(FINAL, thoughtSignature=b64(b"sig-image")),
    finish="STOP",
    usage=True,
)


def sse(obj: dict[str, Any], eol: str = "\n") -> bytes:
    return f"data: {json.dumps(obj)}{eol}{eol}".encode()


def request(**kw: Any) -> UpstreamRequest:
    base: dict[str, Any] = {
        "model": MODEL,
        "contents": (Content("user", (Part(text="a green square"),)),),
        "seed": 0,
        "aspect_ratio": "4:3",
    }
    return UpstreamRequest(**(base | kw))


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Seen:
    path: str
    query: str
    headers: dict[str, str]
    body: Any
    peer: Any


class Upstream:
    """A scriptable stand-in for Gemini: set ``handler``, read ``requests``."""

    def __init__(self) -> None:
        self.url = ""
        self.handler: Handler = self.reply(SUCCESS)
        self.requests: list[Seen] = []
        self.got_request = asyncio.Event()
        self.handler_cancelled = asyncio.Event()

    @staticmethod
    def reply(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Handler:
        async def handle(_: web.Request) -> web.StreamResponse:
            raw = body if isinstance(body, bytes) else json.dumps(body).encode()
            return web.Response(body=raw, status=status, headers=headers, content_type="application/json")

        return handle

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        self.requests.append(
            Seen(
                path=request.path,
                query=request.query_string,
                headers=dict(request.headers),
                body=json.loads(raw),
                peer=request.transport.get_extra_info("peername") if request.transport else None,
            )
        )
        self.got_request.set()
        try:
            return await self.handler(request)
        except asyncio.CancelledError:
            # aiohttp's test server cancels a handler when its client hangs up.
            self.handler_cancelled.set()
            raise


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = Upstream()
    app = web.Application()
    app.router.add_route("POST", "/{tail:.*}", up.dispatch)
    server = TestServer(app)
    await server.start_server(shutdown_timeout=0.5)
    up.url = str(server.make_url("")).rstrip("/")
    yield up
    await server.close()


@pytest.fixture
async def client(upstream: Upstream) -> AsyncIterator[GeminiClient]:
    async with GeminiClient(upstream.url, KEY) as c:
        yield c


async def expect_error(client: GeminiClient, **kw: Any) -> UpstreamError:
    with pytest.raises(UpstreamError) as info:
        await client.generate(request(), **kw)
    return info.value


@contextlib.asynccontextmanager
async def raw_server(
    respond: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[str]:
    """A bare TCP server that reads one HTTP request and lets ``respond`` misbehave."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            (int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")),
            0,
        )
        await reader.readexactly(length)
        try:
            await respond(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


# ---------------------------------------------------------------------------
# The happy path and what goes over the wire
# ---------------------------------------------------------------------------


async def test_unary_call_sends_key_in_header_and_parses_the_answer(upstream: Upstream, client: GeminiClient) -> None:
    result = await client.generate(request())
    (seen,) = upstream.requests
    assert seen.path == f"/v1beta/models/{MODEL}:generateContent"
    assert seen.query == ""
    assert seen.headers["x-goog-api-key"] == KEY
    assert seen.headers["Content-Type"] == "application/json"
    assert seen.body["generationConfig"] == {
        "responseModalities": ["TEXT", "IMAGE"],
        "seed": 0,
        "imageConfig": {"aspectRatio": "4:3"},
    }
    assert result.image == InlineImage(FINAL, "image/png")
    assert (result.width, result.height) == (32, 24)
    assert result.thought_signature == b"sig-image"
    assert result.text == "A green square."
    assert result.usage.total_tokens == 1130
    assert result.response_id == "resp-1"


async def test_api_version_v1_and_one_connection_reused(upstream: Upstream) -> None:
    async with GeminiClient(upstream.url + "/", KEY, api_version="v1") as client:
        await client.generate(request())
        await client.generate(request())
    assert [s.path for s in upstream.requests] == [f"/v1/models/{MODEL}:generateContent"] * 2
    # One session, keep-alive: the second call rides the first call's connection.
    assert upstream.requests[0].peer == upstream.requests[1].peer


async def test_no_key_sends_no_header(upstream: Upstream) -> None:
    async with GeminiClient(upstream.url, None) as client:
        await client.generate(request())
    assert "x-goog-api-key" not in {k.lower() for k in upstream.requests[0].headers}


async def test_large_answer_is_parsed(upstream: Upstream, client: GeminiClient) -> None:
    big = _png((600, 400), noise=True)  # > the thread threshold once base64-encoded
    upstream.handler = upstream.reply(chunk(image_part(big), finish="STOP"))
    result = await client.generate(request())
    assert result.image.data == big
    assert (result.width, result.height) == (600, 400)


def test_constructor_rejects_bad_config() -> None:
    with pytest.raises(ValueError):
        GeminiClient("ftp://x", KEY)
    with pytest.raises(ValueError):
        GeminiClient("http://x", KEY, api_version="latest")
    assert KEY not in repr(GeminiClient("http://x", KEY))


async def test_closed_client_is_unavailable(upstream: Upstream) -> None:
    client = GeminiClient(upstream.url, KEY)
    await client.aclose()
    with pytest.raises(UpstreamError) as info:
        await client.generate(request())
    assert info.value.kind is ErrorKind.UNAVAILABLE


# ---------------------------------------------------------------------------
# HTTP errors
# ---------------------------------------------------------------------------


async def test_http_error_envelope(upstream: Upstream, client: GeminiClient) -> None:
    upstream.handler = upstream.reply(
        {
            "error": {
                "code": 429,
                "message": "Resource has been exhausted",
                "status": "RESOURCE_EXHAUSTED",
                "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1.5s"}],
            }
        },
        status=429,
    )
    err = await expect_error(client)
    assert (err.kind, err.http_status, err.retry_after) == (ErrorKind.RATE_LIMITED, 429, 1.5)


@pytest.mark.parametrize(
    ("status", "retry_after", "expected_kind", "expected_delay"),
    [
        (429, "7", ErrorKind.RATE_LIMITED, 7.0),
        (429, "date+30", ErrorKind.RATE_LIMITED, 30.0),
        (429, "not a delay", ErrorKind.RATE_LIMITED, None),
        (429, None, ErrorKind.RATE_LIMITED, None),
        (503, "2", ErrorKind.UNAVAILABLE, 2.0),
    ],
)
async def test_retry_after_header_forms(
    upstream: Upstream,
    client: GeminiClient,
    status: int,
    retry_after: str | None,
    expected_kind: ErrorKind,
    expected_delay: float | None,
) -> None:
    headers = {}
    if retry_after == "date+30":
        headers["Retry-After"] = email.utils.formatdate(time.time() + 30, usegmt=True)
    elif retry_after is not None:
        headers["Retry-After"] = retry_after
    upstream.handler = upstream.reply(b"slow down", status=status, headers=headers)
    err = await expect_error(client)
    assert err.kind is expected_kind
    if expected_delay is None:
        assert err.retry_after is None
    else:
        assert err.retry_after == pytest.approx(expected_delay, abs=5.0)  # date+30: whole seconds


async def test_proxy_html_502_is_unavailable(upstream: Upstream, client: GeminiClient) -> None:
    async def html(_: web.Request) -> web.StreamResponse:
        return web.Response(
            status=502, text="<html><body><h1>502 Bad Gateway</h1></body></html>", content_type="text/html"
        )

    upstream.handler = html
    err = await expect_error(client)
    assert (err.kind, err.http_status) == (ErrorKind.UNAVAILABLE, 502)
    assert "Bad Gateway" in err.message


async def test_404_names_the_model(upstream: Upstream, client: GeminiClient) -> None:
    upstream.handler = upstream.reply(
        {"error": {"code": 404, "message": f"models/{MODEL} is not found", "status": "NOT_FOUND"}}, status=404
    )
    err = await expect_error(client)
    assert (err.kind, err.model) == (ErrorKind.NOT_FOUND, MODEL)


async def test_redirect_is_not_followed(upstream: Upstream, client: GeminiClient) -> None:
    async def redirect(_: web.Request) -> web.StreamResponse:
        raise web.HTTPTemporaryRedirect("/elsewhere")

    upstream.handler = redirect
    err = await expect_error(client)
    assert (err.kind, err.http_status) == (ErrorKind.FAILED_PRECONDITION, 307)
    assert len(upstream.requests) == 1


@pytest.mark.parametrize("body", [b"{not json", json.dumps(chunk(image_part(b"not a png"), finish="STOP")).encode()])
async def test_malformed_200(upstream: Upstream, client: GeminiClient, body: bytes) -> None:
    upstream.handler = upstream.reply(body)
    assert (await expect_error(client)).kind is ErrorKind.MALFORMED


# ---------------------------------------------------------------------------
# Transport failures and timeouts
# ---------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def test_connection_refused_is_unavailable() -> None:
    async with GeminiClient(f"http://127.0.0.1:{_closed_port()}", KEY, connect_timeout=2) as client:
        err = await expect_error(client)
    assert err.kind is ErrorKind.UNAVAILABLE
    assert "127.0.0.1" in err.message


async def _reset_mid_body(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
        b'{"candidates": [{"content": {"parts": [{"inlineData": {"data": "iVBOR'
    )
    await writer.drain()
    writer.transport.abort()


async def _reset_mid_stream(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    event = sse(chunk(image_part(DRAFT_1, thought=True)))
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        + f"{len(event):x}\r\n".encode()
        + event
        + b"\r\n"
        + b"4000\r\ndata: {"
    )
    await writer.drain()
    writer.transport.abort()


async def _close_before_answering(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.transport.abort()


@pytest.mark.parametrize(
    ("respond", "stream"),
    [(_reset_mid_body, False), (_reset_mid_stream, True), (_close_before_answering, False)],
    ids=["reset-mid-body", "reset-mid-stream", "closed-before-answer"],
)
async def test_broken_connections_are_unavailable(
    respond: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]], stream: bool
) -> None:
    drafts: list[InlineImage] = []
    async with raw_server(respond) as url, GeminiClient(url, KEY) as client:
        with pytest.raises(UpstreamError) as info:
            await client.generate(request(), on_draft=drafts.append if stream else None)
    assert info.value.kind is ErrorKind.UNAVAILABLE, info.value.message
    assert len(drafts) == (1 if stream else 0)


async def _sleep_long(_: web.Request) -> web.StreamResponse:
    await asyncio.sleep(30)
    return web.Response()


async def _trickle_body(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    resp.content_length = 10_000
    await resp.prepare(request)
    await resp.write(b'{"candidates": [')
    await asyncio.sleep(30)
    return resp


async def _stall_stream(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    await resp.write(sse(chunk(image_part(DRAFT_1, thought=True))))
    await asyncio.sleep(30)
    return resp


def _no_drafts(_: InlineImage) -> None:
    pass


@pytest.mark.parametrize(
    ("handler", "client_kw", "call_kw"),
    [
        (_sleep_long, {"read_timeout": 0.2}, {}),
        (_sleep_long, {}, {"timeout": 0.2}),
        (_trickle_body, {}, {"timeout": 0.3}),
        (_trickle_body, {"read_timeout": 0.2}, {}),
        (_stall_stream, {"read_timeout": 0.2}, {"on_draft": _no_drafts}),
        (_stall_stream, {}, {"timeout": 0.3, "on_draft": _no_drafts}),
        (_trickle_body, {"idle_timeout": 0.2}, {}),
        (_stall_stream, {"idle_timeout": 0.2}, {"on_draft": _no_drafts}),
    ],
    ids=[
        "first-byte-read-timeout",
        "first-byte-call-timeout",
        "body-call-timeout",
        "body-read-timeout",
        "stream-read-timeout",
        "stream-call-timeout",
        "body-idle-timeout",
        "stream-idle-timeout",
    ],
)
async def test_timeouts_are_deadline_exceeded(
    upstream: Upstream, handler: Handler, client_kw: dict[str, Any], call_kw: dict[str, Any]
) -> None:
    upstream.handler = handler
    async with GeminiClient(upstream.url, KEY, **client_kw) as client:
        started = time.monotonic()
        with pytest.raises(UpstreamError) as info:
            await client.generate(request(), **call_kw)
    assert info.value.kind is ErrorKind.DEADLINE_EXCEEDED, info.value.message
    # The timeouts are 0.2-0.3 s and the handlers stall 30 s: 10 s tells "timed out" from "waited".
    assert time.monotonic() - started < 10
    assert ("idle timeout" in info.value.message) == ("idle_timeout" in client_kw)


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "sse"])
async def test_headers_then_silence_is_an_idle_timeout(upstream: Upstream, stream: bool) -> None:
    async def headers_only(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream" if stream else "application/json"})
        await resp.prepare(request)
        await asyncio.sleep(30)
        return resp

    upstream.handler = headers_only
    async with GeminiClient(upstream.url, KEY, idle_timeout=0.2) as client:
        with pytest.raises(UpstreamError) as info:
            await client.generate(request(), on_draft=_no_drafts if stream else None)
    assert info.value.kind is ErrorKind.DEADLINE_EXCEEDED and "idle timeout" in info.value.message


async def test_the_idle_timeout_does_not_bound_the_wait_for_headers(upstream: Upstream) -> None:
    # A unary answer's headers come only when the image is done: that wait is the call timeout's.
    async def slow_then_ok(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(0.4)
        return web.json_response(SUCCESS)

    upstream.handler = slow_then_ok
    async with GeminiClient(upstream.url, KEY, idle_timeout=0.1) as client:
        result = await client.generate(request())
    assert result.image.data


# ---------------------------------------------------------------------------
# Cancellation
# ---------------------------------------------------------------------------


async def test_cancellation_propagates_and_aborts_the_request(upstream: Upstream, client: GeminiClient) -> None:
    upstream.handler = _sleep_long
    task = asyncio.create_task(client.generate(request()))
    await asyncio.wait_for(upstream.got_request.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The server sees the hang-up at once (10 s is a generous bound), not when its 30 s handler finishes.
    await asyncio.wait_for(upstream.handler_cancelled.wait(), 10)


async def test_cancellation_mid_stream_aborts_the_request(upstream: Upstream, client: GeminiClient) -> None:
    async def one_draft_then_hang(req: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(req)
        await resp.write(sse(chunk(image_part(DRAFT_1, thought=True))))
        await asyncio.sleep(30)
        return resp

    upstream.handler = one_draft_then_hang
    got_draft = asyncio.Event()
    task = asyncio.create_task(client.generate(request(), on_draft=lambda _: got_draft.set()))
    await asyncio.wait_for(got_draft.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(upstream.handler_cancelled.wait(), 10)


# ---------------------------------------------------------------------------
# Streaming (SSE)
# ---------------------------------------------------------------------------


async def test_stream_delivers_drafts_as_they_arrive(upstream: Upstream, client: GeminiClient) -> None:
    first_draft_delivered = asyncio.Event()
    delivered_in_time: list[bool] = []

    async def stream(req: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(req)
        await resp.write(sse(chunk({"text": "planning", "thought": True}, image_part(DRAFT_1, thought=True))))
        # Hold the rest back until the client has reported the first draft:
        # proves drafts are forwarded while the call is still running.
        try:
            await asyncio.wait_for(first_draft_delivered.wait(), 10)
            delivered_in_time.append(True)
        except TimeoutError:
            delivered_in_time.append(False)
        await resp.write(sse(chunk(image_part(DRAFT_2, thought=True)), eol="\r\n"))
        await resp.write(sse(chunk({"text": "A green square.", "thoughtSignature": b64(b"sig-text")})))
        final = sse(chunk(image_part(FINAL, thoughtSignature=b64(b"sig-image"))), eol="\r\n")
        await resp.write(final[:50])  # one event split across writes
        await resp.write(final[50:])
        await resp.write(b'data: {"candidates": [{"finishReason": "STOP", "index": 0}],\n')
        await resp.write(b'data: "usageMetadata": {"totalTokenCount": 1130}, "modelVersion": "m"}\n\n')
        await resp.write_eof()
        return resp

    upstream.handler = stream
    drafts: list[InlineImage] = []

    def on_draft(image: InlineImage) -> None:
        drafts.append(image)
        first_draft_delivered.set()

    result = await client.generate(request(include_thoughts=True), on_draft=on_draft)
    (seen,) = upstream.requests
    assert seen.path == f"/v1beta/models/{MODEL}:streamGenerateContent"
    assert seen.query == "alt=sse"
    assert seen.body["generationConfig"]["thinkingConfig"] == {"includeThoughts": True}
    assert delivered_in_time == [True]
    assert [d.data for d in drafts] == [DRAFT_1, DRAFT_2]
    assert result.drafts == tuple(drafts)
    assert result.image.data == FINAL
    assert result.thought_signature == b"sig-image"
    assert result.text == "A green square."
    assert [p.thought_signature for p in result.parts] == [b"sig-text", b"sig-image"]
    assert (result.finish_reason, result.usage.total_tokens, result.model_version) == ("STOP", 1130, "m")


async def test_stream_large_final_image(upstream: Upstream, client: GeminiClient) -> None:
    big = _png((600, 400), noise=True)

    async def stream(req: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(req)
        await resp.write(sse(chunk(image_part(big), finish="STOP")))
        return resp

    upstream.handler = stream
    result = await client.generate(request(), on_draft=lambda _: None)
    assert result.image.data == big


async def test_stream_error_before_streaming(upstream: Upstream, client: GeminiClient) -> None:
    upstream.handler = upstream.reply(
        {"error": {"code": 429, "message": "Resource has been exhausted", "status": "RESOURCE_EXHAUSTED"}},
        status=429,
    )
    err = await expect_error(client, on_draft=lambda _: None)
    assert err.kind is ErrorKind.RATE_LIMITED


async def test_stream_error_written_mid_stream_as_raw_json(upstream: Upstream, client: GeminiClient) -> None:
    async def stream(req: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(req)
        await resp.write(sse(chunk(image_part(DRAFT_1, thought=True))))
        error = {"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}}
        for line in json.dumps(error, indent=2).splitlines():
            await resp.write(line.encode() + b"\n")
        return resp

    upstream.handler = stream
    err = await expect_error(client, on_draft=lambda _: None)
    assert (err.kind, err.http_status) == (ErrorKind.UNAVAILABLE, 503)
    assert "overloaded" in err.message


async def test_stream_endpoint_answering_plain_json_still_works(upstream: Upstream, client: GeminiClient) -> None:
    upstream.handler = upstream.reply(SUCCESS)
    result = await client.generate(request(), on_draft=lambda _: None)
    assert result.image.data == FINAL


async def test_stream_ending_early_is_unavailable(upstream: Upstream, client: GeminiClient) -> None:
    async def stream(req: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(req)
        await resp.write(sse(chunk({"text": "Here is"})))
        return resp

    upstream.handler = stream
    assert (await expect_error(client, on_draft=lambda _: None)).kind is ErrorKind.UNAVAILABLE


async def test_stream_garbage_is_malformed(upstream: Upstream, client: GeminiClient) -> None:
    async def stream(req: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(req)
        await resp.write(b"data: {oops\n\n")
        return resp

    upstream.handler = stream
    assert (await expect_error(client, on_draft=lambda _: None)).kind is ErrorKind.MALFORMED


async def test_on_draft_exceptions_propagate_unchanged(upstream: Upstream, client: GeminiClient) -> None:
    upstream.handler = upstream.reply(chunk(image_part(DRAFT_1, thought=True), image_part(FINAL), finish="STOP"))

    def boom(_: InlineImage) -> None:
        raise OSError("callback broke")

    with pytest.raises(OSError, match="callback broke"):
        await client.generate(request(), on_draft=boom)


# ---------------------------------------------------------------------------
# The key never leaks
# ---------------------------------------------------------------------------


def _echo_key_400(_: web.Request) -> Awaitable[web.StreamResponse]:
    return Upstream.reply(
        {
            "error": {
                "code": 400,
                "message": f"API key not valid: {KEY}",
                "status": "INVALID_ARGUMENT",
                "details": [
                    {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"},
                    {
                        "@type": "type.googleapis.com/google.rpc.BadRequest",
                        "fieldViolations": [{"field": "key", "description": f"bad key {KEY}"}],
                    },
                ],
            }
        },
        status=400,
    )(_)


def _echo_key_html(_: web.Request) -> Awaitable[web.StreamResponse]:
    return Upstream.reply(f"<html>502 upstream failed for key={KEY}</html>".encode(), status=502)(_)


def _echo_key_text(_: web.Request) -> Awaitable[web.StreamResponse]:
    return Upstream.reply(chunk({"text": f"Your key is {KEY}"}, finish="STOP"))(_)


def _echo_key_json(_: web.Request) -> Awaitable[web.StreamResponse]:
    return Upstream.reply(f'{{"bad json {KEY}'.encode())(_)


@pytest.mark.parametrize(
    ("scenario", "kind"),
    [
        (_echo_key_400, ErrorKind.AUTH),
        (_echo_key_html, ErrorKind.UNAVAILABLE),
        (_echo_key_text, ErrorKind.NO_IMAGE),
        (_echo_key_json, ErrorKind.MALFORMED),
        (_sleep_long, ErrorKind.DEADLINE_EXCEEDED),
        ("refused", ErrorKind.UNAVAILABLE),
    ],
    ids=["echoed-in-400", "echoed-in-html", "echoed-by-model", "echoed-in-bad-json", "timeout", "refused"],
)
async def test_key_never_appears_in_errors_or_logs(
    upstream: Upstream, caplog: pytest.LogCaptureFixture, scenario: Handler | str, kind: ErrorKind
) -> None:
    caplog.set_level(logging.DEBUG)
    url = f"http://127.0.0.1:{_closed_port()}" if scenario == "refused" else upstream.url
    if not isinstance(scenario, str):
        upstream.handler = scenario
    # Only the timeout row should time out: the others answer at once but get 30 s on a loaded machine.
    timeout = 0.3 if kind is ErrorKind.DEADLINE_EXCEEDED else 30.0
    async with GeminiClient(url, KEY) as client:
        with pytest.raises(UpstreamError) as info:
            await client.generate(request(), timeout=timeout)
    err = info.value
    assert err.kind is kind
    texts = [
        str(err),
        repr(err),
        err.message,
        err.model_text,
        repr(err.args),
        repr(err.field_violations),
        "".join(traceback.format_exception(err)),
        repr(err.__cause__),
        repr(err.__context__),
        str(err.__context__),
    ]
    texts += [record.getMessage() for record in caplog.records]
    texts += [repr(record.args) for record in caplog.records]
    leaks = [t for t in texts if KEY in t]
    assert not leaks
    if upstream.requests:
        (seen,) = upstream.requests
        assert seen.headers["x-goog-api-key"] == KEY
        assert KEY not in seen.path
        assert KEY not in seen.query
    assert any(r.name == "imagegen_server.gemini.client" for r in caplog.records)
