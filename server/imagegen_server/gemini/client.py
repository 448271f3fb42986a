"""The upstream Gemini REST client (aiohttp).

One :class:`GeminiClient` owns one ``aiohttp.ClientSession`` for the life of
the process. :meth:`GeminiClient.generate` makes one HTTP call and returns an
:class:`~imagegen_server.gemini.types.UpstreamResult` or raises exactly one
:class:`~imagegen_server.gemini.errors.UpstreamError`; retrying is the retry
loop's job, not this module's. The request JSON is built by
:mod:`imagegen_server.gemini.request`, answers are classified by
:mod:`imagegen_server.gemini.response` and
:mod:`imagegen_server.gemini.failures`, and SSE framing is
:mod:`imagegen_server.gemini.sse`.

The API key travels only in the ``x-goog-api-key`` header. It is never put in
a URL, a log record or an exception message; whatever upstream sends back
(errors, answers, drafts) passes through :class:`~imagegen_server.gemini.redaction.KeyScrubber`,
in case upstream or a proxy echoes it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Final, TypeVar

import aiohttp

from imagegen_server.gemini.errors import ErrorKind, UpstreamError
from imagegen_server.gemini.failures import classify_http_error
from imagegen_server.gemini.redaction import KeyScrubber
from imagegen_server.gemini.request import build_url, encode_request
from imagegen_server.gemini.response import ResponseAccumulator, load_json, parse_response
from imagegen_server.gemini.sse import SSEError, SSEParser
from imagegen_server.gemini.types import InlineImage, UpstreamRequest, UpstreamResult

__all__ = ["DraftCallback", "GeminiClient"]

logger = logging.getLogger(__name__)

#: Called with each ``thought: true`` draft image as it arrives on a stream.
DraftCallback = Callable[[InlineImage], None]

#: JSON bodies and SSE events larger than this are parsed in the client's
#: parsing thread. orjson and pybase64 take about 1 ms for a 1K image's 2 MB,
#: less than the hand-off to a thread and back costs under load, so those stay
#: on the loop; a 4K image's 29 MB takes about 45 ms, which would stall every
#: other request (in a thread the loop gets the GIL back every switch interval).
_THREAD_THRESHOLD: Final = 4 * 1024 * 1024

#: How many large unary bodies are read and parsed at once (one parsing, the
#: next ones arriving).
_LARGE_BODIES: Final = 3

_USER_AGENT: Final = f"imagegen-server aiohttp/{aiohttp.__version__}"

_T = TypeVar("_T")


class GeminiClient:
    """Calls Gemini's ``generateContent`` / ``streamGenerateContent`` over one shared session.

    ``base_url`` is the API root (``https://generativelanguage.googleapis.com``
    or an emulator's ``http://127.0.0.1:PORT``); ``api_version`` is ``v1beta``
    or ``v1``. ``connect_timeout`` bounds opening a connection;
    ``read_timeout`` (None: unbounded) bounds each wait for bytes from the
    socket, first byte included. ``idle_timeout`` (None: unbounded) bounds
    each wait for body bytes once the answer's headers have arrived, for a
    unary body and an SSE stream alike: a body that stalls fails the call as
    DEADLINE_EXCEEDED. The time to the headers is not bounded by it, because
    Gemini sends a unary answer's headers only when the image is done. The
    ``timeout`` of :meth:`generate` bounds the whole call, body included.

    Use as ``async with GeminiClient(...) as client:`` or call :meth:`aclose`.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        api_version: str = "v1beta",
        connect_timeout: float = 10.0,
        read_timeout: float | None = None,
        idle_timeout: float | None = None,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL, not {base_url!r}")
        # Fail on a bad version now, not on the first request.
        build_url(base_url, api_version, "probe", stream=False)
        self._base_url = base_url.rstrip("/")
        self._api_key = api_key or None
        #: Everything upstream sends back passes through it: errors, answers, drafts.
        self._scrubber = KeyScrubber(self._api_key)
        self._api_version = api_version.strip("/")
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._idle_timeout = idle_timeout
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        # One thread: parses hold the GIL anyway, and each holds a large body
        # three times over (JSON, its base64 text, the image), so running
        # several at once only multiplies the memory.
        self._parser = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="gemini-parse")
        # Unary bodies above the thread threshold (2K and 4K images) being read
        # or parsed at once. With 64 answers of 29 MB arriving together, reading
        # all of them while the parser works through them one by one held each
        # body in memory for most of the burst (2.8x the image per request,
        # against 1.7x when bounded); the others wait in their sockets.
        self._large_bodies = asyncio.Semaphore(_LARGE_BODIES)

    def __repr__(self) -> str:
        key = "set" if self._api_key else "unset"
        return f"GeminiClient(base_url={self._base_url!r}, api_version={self._api_version!r}, api_key={key})"

    @property
    def base_url(self) -> str:
        """The API root requests go to."""
        return self._base_url

    @property
    def api_version(self) -> str:
        """``v1beta`` or ``v1``."""
        return self._api_version

    async def __aenter__(self) -> GeminiClient:
        self._ensure_session()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the session; calls in flight fail as UNAVAILABLE. Idempotent."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()
        self._parser.shutdown(wait=False, cancel_futures=True)

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise UpstreamError(ErrorKind.UNAVAILABLE, "the Gemini client is closed")
        if self._session is None:
            timeout = aiohttp.ClientTimeout(
                total=None,  # the per-call timeout is applied around the whole call
                connect=self._connect_timeout,
                sock_connect=self._connect_timeout,
                sock_read=self._read_timeout,
            )
            # No pool limit: the server caps concurrency itself, and a pool
            # queue would count against the connect timeout, turning a busy
            # gateway into spurious DEADLINE_EXCEEDED errors.
            connector = aiohttp.TCPConnector(limit=0)
            self._session = aiohttp.ClientSession(
                timeout=timeout,
                connector=connector,
                raise_for_status=False,
                headers={"User-Agent": _USER_AGENT},
            )
        return self._session

    async def generate(
        self,
        request: UpstreamRequest,
        *,
        timeout: float | None = None,
        on_draft: DraftCallback | None = None,
    ) -> UpstreamResult:
        """Make one upstream call for ``request``.

        Without ``on_draft`` this is a unary ``generateContent``. With it, the
        call uses ``streamGenerateContent?alt=sse`` and ``on_draft`` is called
        (on the event loop) with each ``thought: true`` image as it arrives;
        the result is assembled from all chunks and is the same as the unary
        call's. Exceptions raised by ``on_draft`` propagate unchanged.

        ``timeout`` bounds the whole call, reading the body included, and
        expires as DEADLINE_EXCEEDED. Every other failure raises one
        :class:`UpstreamError`; ``asyncio.CancelledError`` propagates and the
        HTTP request is aborted at once.
        """
        stream = on_draft is not None
        url = build_url(self._base_url, self._api_version, request.model, stream=stream)
        body = await self._in_thread_if(
            sum(len(p.image.data) for c in request.contents for p in c.parts if p.image) > _THREAD_THRESHOLD,
            encode_request,
            request,
        )
        started = time.monotonic()
        logger.debug(
            "POST %s (model=%s, stream=%s, %d request bytes, timeout=%s)",
            url,
            request.model,
            stream,
            len(body),
            timeout,
        )
        try:
            async with asyncio.timeout(timeout):
                result = self._scrubber.answer(await self._exchange(url, body, request, on_draft), model=request.model)
        except _DraftCallbackError as exc:
            raise exc.original from None
        except TimeoutError:
            limit = f" of {timeout:g}s" if timeout is not None else ""
            error = UpstreamError(
                ErrorKind.DEADLINE_EXCEEDED,
                f"Gemini did not answer in full within the call timeout{limit}",
                model=request.model,
            )
        except UpstreamError as exc:
            error = exc
        else:
            logger.debug(
                "Gemini returned a %s %dx%d image in %.2fs (finishReason=%s, %d drafts)",
                result.image.mime_type,
                result.width,
                result.height,
                time.monotonic() - started,
                result.finish_reason,
                len(result.drafts),
            )
            return result
        error = self._scrubber.error(error)
        logger.debug(
            "Gemini call failed after %.2fs: %s: %s",
            time.monotonic() - started,
            error.kind.name,
            error.message,
        )
        # Chained aiohttp exceptions could carry request details; the message
        # already names the cause, so the chain is cut.
        raise error from None

    async def _exchange(
        self,
        url: str,
        body: bytes,
        request: UpstreamRequest,
        on_draft: DraftCallback | None,
    ) -> UpstreamResult:
        session = self._ensure_session()
        headers = {
            "Content-Type": "application/json",
            "Accept": "text/event-stream" if on_draft is not None else "application/json",
        }
        if self._api_key:
            headers["x-goog-api-key"] = self._api_key
        model = request.model
        async with contextlib.AsyncExitStack() as held:
            try:
                # ``async with`` is what aborts the request on cancellation: leaving
                # the block with an unread body closes the connection rather than
                # returning it to the pool.
                async with session.post(url, data=body, headers=headers, allow_redirects=False) as resp:
                    logger.debug("Gemini answered HTTP %d (%s)", resp.status, resp.content_type)
                    if on_draft is not None and 200 <= resp.status < 300:
                        return await self._read_stream(resp, model, on_draft)
                    if (resp.content_length or 0) > _THREAD_THRESHOLD:
                        # A large body is read only when one of a few slots is free:
                        # the parse is the bottleneck, and bodies read ahead of it
                        # would wait in memory, not in the socket (see __init__).
                        await held.enter_async_context(self._large_bodies)
                    raw = await self._read_body(resp)
                    status, reason, resp_headers = resp.status, resp.reason or "", resp.headers
            except _IdleTimeout:
                raise UpstreamError(
                    ErrorKind.DEADLINE_EXCEEDED,
                    f"Gemini's answer stalled: no bytes for {self._idle_timeout:g}s (idle timeout)",
                    model=model,
                ) from None
            except aiohttp.ServerTimeoutError as exc:
                raise UpstreamError(
                    ErrorKind.DEADLINE_EXCEEDED,
                    f"timed out waiting for Gemini ({type(exc).__name__}: {exc})",
                    model=model,
                ) from None
            except aiohttp.ClientPayloadError as exc:
                raise UpstreamError(
                    ErrorKind.UNAVAILABLE,
                    f"Gemini's answer was cut short ({type(exc).__name__}: {exc})",
                    model=model,
                ) from None
            except (aiohttp.ClientError, OSError) as exc:
                # ClientConnectorError (refused, DNS), ServerDisconnectedError,
                # ClientOSError (reset) and friends: the next attempt may well work.
                raise UpstreamError(
                    ErrorKind.UNAVAILABLE,
                    f"cannot talk to Gemini at {self._base_url} ({type(exc).__name__}: {exc})",
                    model=model,
                ) from None
            if not 200 <= status < 300:
                raise classify_http_error(status, raw, _plain(resp_headers), model=model, reason_phrase=reason)
            large = len(raw) > _THREAD_THRESHOLD
            document = await self._in_thread_if(large, load_json, raw, model=model)
            del raw  # the JSON text is not needed while the image is decoded
            return await self._in_thread_if(large, parse_response, document, model=model)

    async def _read_stream(
        self,
        resp: aiohttp.ClientResponse,
        model: str,
        on_draft: DraftCallback,
    ) -> UpstreamResult:
        parser = SSEParser()
        acc = ResponseAccumulator(model=model, streaming=True)
        try:
            while chunk := await self._next_chunk(resp):
                for payload in parser.feed(chunk):
                    await self._stream_event(acc, payload, on_draft)
            for payload in parser.close():
                await self._stream_event(acc, payload, on_draft)
        except SSEError as exc:
            raise UpstreamError(ErrorKind.MALFORMED, f"malformed Gemini stream: {exc}", model=model) from None
        logger.debug("Gemini stream ended after %d events", acc.chunks)
        return acc.result()

    async def _next_chunk(self, resp: aiohttp.ClientResponse) -> bytes:
        """The body's next bytes (``b""`` at its end); :class:`_IdleTimeout` when none come for ``idle_timeout``."""
        idle = asyncio.timeout(self._idle_timeout)
        try:
            async with idle:
                return await resp.content.readany()
        except TimeoutError:
            # aiohttp's sock_read timeout is a TimeoutError too: only ours is renamed,
            # apart from the call timeout, which generate() reports itself.
            if idle.expired():
                raise _IdleTimeout from None
            raise

    async def _read_body(self, resp: aiohttp.ClientResponse) -> bytes:
        """The whole body, each wait for bytes bounded by ``idle_timeout``.

        Chunks joined once at the end: a buffer of the announced length made
        up front would hold every in-flight body in full from its first byte,
        and a growing one copies the body several times.
        """
        chunks: list[bytes] = []
        while chunk := await self._next_chunk(resp):
            chunks.append(chunk)
        return b"".join(chunks)

    async def _stream_event(self, acc: ResponseAccumulator, payload: str, on_draft: DraftCallback) -> None:
        drafts = await self._in_thread_if(len(payload) > _THREAD_THRESHOLD, acc.add_json, payload)
        for found in drafts:
            draft = self._scrubber.answer(found)
            logger.debug("Gemini draft image: %s, %d bytes", draft.mime_type, len(draft.data))
            try:
                on_draft(draft)
            except Exception as exc:
                # Carried past the transport handlers so that, say, an OSError
                # from the callback is not mistaken for a network failure.
                raise _DraftCallbackError(exc) from exc

    async def _in_thread_if(self, condition: bool, fn: Callable[..., _T], /, *args: object, **kwargs: object) -> _T:
        if condition:
            call = functools.partial(fn, *args, **kwargs)
            return await asyncio.get_running_loop().run_in_executor(self._parser, call)
        return fn(*args, **kwargs)


class _IdleTimeout(Exception):
    """No body bytes for ``idle_timeout`` seconds (kept apart from the call's TimeoutError)."""


class _DraftCallbackError(Exception):
    """Wraps an exception from ``on_draft`` on its way out of the HTTP block."""

    def __init__(self, original: Exception) -> None:
        super().__init__(repr(original))
        self.original = original


def _plain(headers: Mapping[str, str]) -> dict[str, str]:
    # Only the header the classifier reads, under a fixed spelling.
    retry_after = headers.get("Retry-After")
    return {"Retry-After": retry_after} if retry_after is not None else {}
