"""Request-id deduplication: one upstream call per idempotency key.

Concurrent requests with the same key share the first one's (the owner's)
result; a repeat within the TTL gets the finished result instead of a second
paid generation. Failures are not cached, so a retry after a failure really
retries. A failure that is the owner's own (its deadline ran out, its caller
hung up) is not passed on either: the owner *abandons* the key and a waiting
duplicate claims it and runs the request itself, with its own deadline.

The pipeline sees the store through :class:`IdempotencyStore`, so the
in-process :class:`MemoryIdempotencyStore` can be swapped for a shared one
(Redis, for several replicas) without touching the pipeline. Its memory is
bounded by bytes: finished results count their size, oldest evicted first.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

T = TypeVar("T")

#: Bytes an entry costs besides its result (key, future, bookkeeping), so that
#: many tiny or pending entries still count against the budget.
ENTRY_OVERHEAD = 512


@dataclass(frozen=True, slots=True)
class IdempotencyKey:
    """What makes two requests "the same request": who sent it, to which method, with which id."""

    #: The caller's identity (``anonymous`` without credentials): one caller's
    #: request id never answers, or blocks, another's.
    caller: str
    #: The RPC family (``Generate``, ``Refine``): a stream and a unary call of it share results.
    method: str
    #: The caller's ``options.request_id``.
    request_id: str

    def __str__(self) -> str:
        # Length-prefixed caller: no choice of caller or method text can forge another key.
        return f"{len(self.caller)}:{self.caller}|{self.method}|{self.request_id}"


class FingerprintMismatch(Exception):
    """The key was already used for a different request."""


class Abandoned(Exception):
    """The owner gave up for reasons of its own (its deadline, its caller hung up):
    claim the key again and, as its new owner, run the request."""


@dataclass(frozen=True, slots=True)
class Claim:
    """The answer to :meth:`IdempotencyStore.claim`."""

    key: IdempotencyKey
    #: True: run the request and report how it ended. False: wait for the owner.
    owner: bool
    #: The store's handle of the entry (opaque to callers).
    handle: object


class IdempotencyStore(Protocol[T]):
    """Where idempotency keys and finished results live; one per server."""

    async def claim(self, key: IdempotencyKey, fingerprint: bytes) -> Claim:
        """Own ``key`` if nobody does, else join its owner; :class:`FingerprintMismatch`
        if the key is held by a different request."""
        ...

    async def wait(self, claim: Claim, timeout: float) -> T:
        """The owner's result; ``TimeoutError`` if none within ``timeout`` (ask again),
        :class:`Abandoned` to take over, or the owner's (shared) failure."""
        ...

    async def resolve(self, claim: Claim, value: T) -> None:
        """The owner succeeded: waiters get ``value``, repeats within the TTL too."""
        ...

    async def fail(self, claim: Claim, error: BaseException) -> None:
        """The owner failed in a way every duplicate would: waiters get ``error``; nothing is kept."""
        ...

    async def abandon(self, claim: Claim) -> None:
        """The owner failed for its own reasons: waiters get :class:`Abandoned`; nothing is kept."""
        ...


@dataclass(slots=True, eq=False)
class _Entry(Generic[T]):
    fingerprint: bytes
    future: asyncio.Future[T]
    #: Bytes counted against the budget.
    size: int
    finished_at: float | None = None


class MemoryIdempotencyStore(Generic[T]):
    """The in-process :class:`IdempotencyStore`: a bounded map from key to a shared future.

    ``max_bytes`` bounds the finished results kept (each counts
    ``sizeof(result)`` plus :data:`ENTRY_OVERHEAD`); past it the oldest finished
    ones are evicted, and a result larger than the whole budget is handed to
    its waiters but not kept. Pending entries are never evicted (there are at
    most as many as calls in flight). A finished entry expires ``ttl`` seconds
    after it finished. Meant for one event loop; it does no locking.
    """

    def __init__(self, *, ttl: float, max_bytes: int, sizeof: Callable[[T], int], clock: Callable[[], float]) -> None:
        self._ttl = ttl
        self._max_bytes = max_bytes
        self._sizeof = sizeof
        self._clock = clock
        self._entries: OrderedDict[str, _Entry[T]] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def used_bytes(self) -> int:
        """Bytes counted against the budget now."""
        return self._bytes

    async def claim(self, key: IdempotencyKey, fingerprint: bytes) -> Claim:
        """See :meth:`IdempotencyStore.claim`."""
        self._expire()
        name = str(key)
        entry = self._entries.get(name)
        if entry is not None:
            if entry.fingerprint != fingerprint:
                raise FingerprintMismatch(name)
            return Claim(key, owner=False, handle=entry)
        entry = _Entry(fingerprint, asyncio.get_running_loop().create_future(), ENTRY_OVERHEAD + len(name))
        self._entries[name] = entry
        self._bytes += entry.size
        self._evict()
        return Claim(key, owner=True, handle=entry)

    async def wait(self, claim: Claim, timeout: float) -> T:
        """See :meth:`IdempotencyStore.wait`."""
        entry = self._entry(claim)
        async with asyncio.timeout(timeout):
            # Shielded: one waiter leaving (timeout, hang-up) must not cancel the shared future.
            return await asyncio.shield(entry.future)

    async def resolve(self, claim: Claim, value: T) -> None:
        """See :meth:`IdempotencyStore.resolve`."""
        entry = self._entry(claim)
        if entry.future.done():
            return
        entry.future.set_result(value)
        name = str(claim.key)
        if self._entries.get(name) is not entry:
            return  # evicted or expired meanwhile: waiters have their value, nothing to keep
        size = ENTRY_OVERHEAD + len(name) + self._sizeof(value)
        self._bytes += size - entry.size
        entry.size, entry.finished_at = size, self._clock()
        # Eviction order is finishing order: the oldest result goes first.
        self._entries.move_to_end(name)
        self._evict()

    async def fail(self, claim: Claim, error: BaseException) -> None:
        """See :meth:`IdempotencyStore.fail`."""
        self._finish_with(claim, error)

    async def abandon(self, claim: Claim) -> None:
        """See :meth:`IdempotencyStore.abandon`."""
        self._finish_with(claim, Abandoned(str(claim.key)))

    def _finish_with(self, claim: Claim, error: BaseException) -> None:
        entry = self._entry(claim)
        self._remove(str(claim.key), entry)
        if not entry.future.done():
            entry.future.set_exception(error)
            # Mark retrieved so a failure nobody waited for does not log "never retrieved".
            entry.future.exception()

    @staticmethod
    def _entry(claim: Claim) -> _Entry[T]:
        entry = claim.handle
        if not isinstance(entry, _Entry):
            raise TypeError(f"not a claim of this store: {claim!r}")
        return entry

    def _remove(self, name: str, entry: _Entry[T]) -> None:
        if self._entries.get(name) is entry:
            del self._entries[name]
            self._bytes -= entry.size

    def _evict(self) -> None:
        if self._bytes <= self._max_bytes:
            return
        for name, entry in list(self._entries.items()):
            if self._bytes <= self._max_bytes:
                return
            if entry.finished_at is not None:
                self._remove(name, entry)

    def _expire(self) -> None:
        now = self._clock()
        stale = [
            (name, e)
            for name, e in self._entries.items()
            if e.finished_at is not None and now - e.finished_at > self._ttl
        ]
        for name, entry in stale:
            self._remove(name, entry)
