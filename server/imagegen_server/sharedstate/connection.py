"""The Redis connection every shared store uses, and the bookkeeping of whether Redis answers.

:meth:`SharedState.run` runs one Redis operation within ``timeout`` seconds
(an asyncio timeout around the whole operation, so a hung Redis never hangs a
call; operations that may carry a stored result get the time to move
``bulk_bytes`` at :data:`BULK_BYTES_PER_SECOND` on top) and turns every way it can fail into
:class:`StateUnavailable`; the store that asked then falls back to its
in-process twin (fail open) or refuses the call (fail closed). After a failure
Redis is left alone for ``retry_interval`` seconds (operations fail at once
instead of each waiting out a timeout), then the next operation tries again; the
first to succeed ends the outage. Each transition is logged once; every
operation Redis did not serve is counted through ``on_error``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

R = TypeVar("R")

#: Seconds Redis is left alone after a failure before an operation tries it again.
RETRY_INTERVAL = 1.0
#: The slowest transfer of a stored result to or from Redis taken for a healthy one (a slow LAN or another zone).
BULK_BYTES_PER_SECOND = 20e6


class StateUnavailable(Exception):
    """Redis did not serve this operation (refused, reset, timed out, out of memory, or resting after one of those)."""


#: Called with the operation's name (``idempotency``, ``quota``, ``breaker``) for every operation Redis did not serve.
ErrorListener = Callable[[str], None]


def redacted(url: str) -> str:
    """``url`` without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


class SharedState:
    """One Redis client shared by the stores, and whether Redis answers right now."""

    def __init__(
        self,
        client: Redis,
        *,
        fail_open: bool,
        timeout: float,
        where: str,
        bulk_bytes: int = 0,
        on_error: ErrorListener | None = None,
        clock: Callable[[], float] = time.monotonic,
        retry_interval: float = RETRY_INTERVAL,
    ) -> None:
        self._client = client
        #: True: serve from in-process state while Redis is down; False: refuse what needs it.
        self.fail_open = fail_open
        self._timeout = timeout
        self._bulk_timeout = timeout + bulk_bytes / BULK_BYTES_PER_SECOND
        self._where = where
        self._on_error = on_error
        self._clock = clock
        self._retry_interval = retry_interval
        self._down = False
        self._retry_at = 0.0

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        fail_open: bool,
        timeout: float,
        bulk_bytes: int = 0,
        on_error: ErrorListener | None = None,
    ) -> SharedState:
        """A shared state on the Redis at ``url`` (no connection is made until the first operation)."""
        client = Redis.from_url(
            url,
            # The asyncio timeout in run() bounds each operation; the socket's is only a backstop.
            socket_timeout=timeout + bulk_bytes / BULK_BYTES_PER_SECOND,
            socket_connect_timeout=timeout,
            # One immediate retry: after a Redis restart, pooled connections fail once on first use.
            retry=Retry(NoBackoff(), 1),
            decode_responses=False,
        )
        return cls(
            client, fail_open=fail_open, timeout=timeout, where=redacted(url), bulk_bytes=bulk_bytes, on_error=on_error
        )

    @property
    def up(self) -> bool:
        """False from a failed operation until the next one that succeeds."""
        return not self._down

    @property
    def where(self) -> str:
        """The Redis URL, without its password."""
        return self._where

    def script(self, lua: str) -> AsyncScript:
        """A Lua script run with EVALSHA (loaded again by itself after a Redis restart)."""
        return self._client.register_script(lua)

    async def run(self, operation: str, call: Callable[[Redis], Awaitable[R]], *, bulk: bool = False) -> R:
        """``call(client)`` within the timeout (longer with ``bulk``: it may move a stored result);
        :class:`StateUnavailable` if Redis does not serve it."""
        if self._down and self._clock() < self._retry_at:
            self._count(operation)
            raise StateUnavailable(operation)
        try:
            async with asyncio.timeout(self._bulk_timeout if bulk else self._timeout):
                result = await call(self._client)
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(operation, exc)
            raise StateUnavailable(operation) from exc
        if self._down:
            self._down = False
            log.warning("shared state at %s reachable again: state is shared across replicas again", self._where)
        return result

    async def ping(self) -> bool:
        """Whether Redis answers now."""
        try:
            await self.run("ping", lambda client: client.ping())
        except StateUnavailable:
            return False
        return True

    async def aclose(self) -> None:
        """Close the client's connections."""
        await self._client.aclose()

    def _failed(self, operation: str, exc: BaseException) -> None:
        self._count(operation)
        self._retry_at = self._clock() + self._retry_interval
        if self._down:
            return
        self._down = True
        mode = (
            "serving with this replica's own state (no dedup or quotas across replicas)"
            if self.fail_open
            else "refusing calls that need it (UNAVAILABLE / SHARED_STATE_UNAVAILABLE)"
        )
        log.warning(
            "shared state at %s unreachable (%s: %s): %s until it answers again",
            self._where,
            type(exc).__name__,
            exc or "timed out",
            mode,
        )

    def _count(self, operation: str) -> None:
        if self._on_error is not None:
            self._on_error(operation)
