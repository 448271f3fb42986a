"""Request-id deduplication: one upstream call per idempotency key.

Concurrent requests with the same key share the first one's result; a repeat
within the TTL gets the finished result instead of a second paid generation.
Memory is bounded: at most ``max_entries`` keys, oldest evicted first, and an
entry expires ``ttl`` seconds after it finished. Failures are not cached, so a
retry after a failure really retries.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(slots=True)
class _Entry(Generic[T]):
    fingerprint: bytes
    future: asyncio.Future[T]
    finished_at: float | None = None


class FingerprintMismatch(Exception):
    """The key was already used for a different request."""


class IdempotencyCache(Generic[T]):
    """Bounded map from idempotency key to a shared result future."""

    def __init__(self, ttl: float, max_entries: int, clock: Callable[[], float]) -> None:
        self._ttl = ttl
        self._max = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, _Entry[T]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def claim(self, key: str, fingerprint: bytes) -> tuple[bool, asyncio.Future[T]]:
        """Return ``(True, future)`` when the caller must do the work and resolve
        it, or ``(False, future)`` to wait for (or read) someone else's result."""
        self._expire()
        entry = self._entries.get(key)
        if entry is not None:
            if entry.fingerprint != fingerprint:
                raise FingerprintMismatch(key)
            return False, entry.future
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._entries[key] = _Entry(fingerprint, future)
        while len(self._entries) > self._max:
            # Evicting a pending entry only ends dedup for its key: its owner
            # still resolves the future for whoever already waits on it.
            self._entries.popitem(last=False)
        return True, future

    def resolve(self, key: str, value: T) -> None:
        """Record the owner's success: waiters wake, repeats within the TTL reuse it."""
        entry = self._entries.get(key)
        if entry is not None and not entry.future.done():
            entry.future.set_result(value)
            entry.finished_at = self._clock()

    def fail(self, key: str, error: BaseException) -> None:
        """Record the owner's failure: current waiters get it, nothing is cached."""
        entry = self._entries.pop(key, None)
        if entry is not None and not entry.future.done():
            entry.future.set_exception(error)
            # Mark retrieved so an unawaited failure does not log "never retrieved".
            entry.future.exception()

    def _expire(self) -> None:
        now = self._clock()
        stale = [k for k, e in self._entries.items() if e.finished_at is not None and now - e.finished_at > self._ttl]
        for key in stale:
            del self._entries[key]
