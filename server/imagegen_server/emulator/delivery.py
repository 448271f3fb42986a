"""Writing an answer to the socket, with the delivery faults and the bookkeeping.

This is where ``latency``, ``slow_body`` and ``cut_body`` happen, and where a
request ends up counted as completed, aborted or cut. A client that goes away
is noticed two ways: aiohttp cancels the handler when the server runs with
``handler_cancellation=True`` (the :class:`Emulator` does), and the sleeps
below also poll the transport so an app mounted without that flag still
counts aborts.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from dataclasses import dataclass, field

from aiohttp import web

from .scenarios import ScenarioStats
from .steps import Step

#: How often a sleep checks whether the client is still there.
_POLL_INTERVAL = 0.05

#: How many times a reset waits for the written bytes to leave (at _POLL_INTERVAL / 10).
_FLUSH_POLLS = 100


class ClientGone(Exception):
    """The client closed the connection before the answer was complete."""


@dataclass(frozen=True, slots=True)
class Reply:
    """Bytes to send: ``pieces`` are the natural write units (SSE events, or one body)."""

    status: int
    content_type: str
    pieces: tuple[bytes, ...]
    headers: dict[str, str] = field(default_factory=dict)
    #: No Content-Length: a streamed (chunked) answer.
    chunked: bool = False


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def watchful_sleep(request: web.Request, seconds: float) -> None:
    """Sleep, but raise :class:`ClientGone` as soon as the client disconnects."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while (remaining := deadline - loop.time()) > 0:
        if _client_gone(request):
            raise ClientGone
        await asyncio.sleep(min(remaining, _POLL_INTERVAL))
    if _client_gone(request):
        raise ClientGone


def _split(pieces: tuple[bytes, ...]) -> tuple[list[bytes], list[bytes]]:
    """Where a slow or cut body pauses: before the last event, or mid-body if there is one."""
    if len(pieces) >= 2:
        return list(pieces[:-1]), [pieces[-1]]
    body = pieces[0] if pieces else b""
    middle = len(body) // 2
    return [body[:middle]], [body[middle:]]


class Delivery:
    """Sends one request's answer and records how it ended in ``stats``."""

    def __init__(self, request: web.Request, step: Step, stats: ScenarioStats) -> None:
        self._request = request
        self._step = step
        self._stats = stats
        self._ended = False
        #: The response object the handler must return.
        self.response: web.StreamResponse | None = None

    def _end(self, outcome: str) -> None:
        # Exactly one of completed / aborted / cut per request, whatever
        # order cancellation and write errors arrive in.
        if self._ended:
            return
        self._ended = True
        setattr(self._stats, outcome, getattr(self._stats, outcome) + 1)

    def aborted(self) -> None:
        """Record that the client went away (no-op if the request already ended)."""
        self._end("aborted")

    async def pause(self, seconds: float) -> None:
        """The ``latency`` step: wait before answering, watching for a hang-up."""
        if seconds > 0:
            await watchful_sleep(self._request, seconds)

    async def send(self, reply: Reply) -> web.StreamResponse:
        """Write ``reply`` as the step says; raise :class:`ClientGone` if the client left."""
        response = web.StreamResponse(status=reply.status, headers=reply.headers)
        response.headers["Content-Type"] = reply.content_type
        if not reply.chunked:
            response.content_length = sum(len(p) for p in reply.pieces)
        self.response = response
        try:
            await response.prepare(self._request)
            if self._step.cut_body or self._step.reset_body:
                head, _ = _split(reply.pieces)
                await self._write_all(response, head)
                if self._step.reset_body:
                    await self._reset()
                else:
                    self._cut()
                return response
            if self._step.slow_body is not None:
                head, tail = _split(reply.pieces)
                await self._write_all(response, head)
                await watchful_sleep(self._request, self._step.slow_body)
                await self._write_all(response, tail)
            else:
                await self._write_all(response, list(reply.pieces))
            await response.write_eof()
        except ConnectionError as exc:
            raise ClientGone from exc
        self._end("completed")
        return response

    async def _write_all(self, response: web.StreamResponse, pieces: list[bytes]) -> None:
        for piece in pieces:
            if _client_gone(self._request):
                raise ClientGone
            await response.write(piece)

    async def _reset(self) -> None:
        # Counted as cut: the answer ended mid-body on purpose.
        self._end("cut")
        transport = self._request.transport
        if transport is None:
            return
        # Let what was written reach the client first, so the reset comes mid-body.
        for _ in range(_FLUSH_POLLS):
            if transport.get_write_buffer_size() == 0:
                break
            await asyncio.sleep(_POLL_INTERVAL / 10)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Linger 0: closing sends a TCP RST instead of a FIN.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()

    def _cut(self) -> None:
        # Count first: closing the transport makes aiohttp cancel this handler.
        self._end("cut")
        transport = self._request.transport
        if transport is not None:
            # close() (not abort()) flushes what was written, so the client
            # sees a truncated body rather than a connection reset.
            transport.close()
