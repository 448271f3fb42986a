"""Per-caller quotas: requests per minute (a token bucket) and concurrent calls, behind a small interface.

:class:`CallerLimiter` is what the access interceptor asks before a call runs;
:class:`LocalCallerLimiter` keeps the state in this process; with
``--state-url``, :class:`~imagegen_server.sharedstate.quotas.RedisCallerLimiter`
implements the same interface so several replicas count one quota. A refused
call raises :class:`QuotaExceeded` saying which quota and when a call would be
accepted again.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from imagegen_server.auth import Quota
from imagegen_server.retry import MONOTONIC_CLOCK

#: Suggested wait after a refusal by the concurrency quota: no clock says when a call will end.
CONCURRENCY_RETRY_DELAY = 1.0


class QuotaExceeded(Exception):
    """The caller is over one of its quotas."""

    def __init__(self, quota: str, limit: float, retry_after: float) -> None:
        super().__init__(f"{quota} quota of {limit:g} exceeded")
        #: ``requests_per_minute`` or ``max_concurrent`` (the tokens-file key).
        self.quota = quota
        self.limit = limit
        #: Seconds until a call would be accepted (an estimate for ``max_concurrent``).
        self.retry_after = retry_after


class Lease(Protocol):
    """A call counted against its caller's concurrency; released once when the call ends."""

    def release(self) -> None:
        """Give the concurrency back (idempotent)."""
        ...


class CallerLimiter(Protocol):
    """Admits or refuses one call of a caller under its quota."""

    async def acquire(self, caller: str, quota: Quota) -> Lease:
        """Count the call; raise :class:`QuotaExceeded` if the caller is over a quota."""
        ...


def burst_of(quota: Quota) -> float:
    """The bucket's size: ``burst``, else a tenth of a minute's worth (at least 1)."""
    if quota.burst is not None:
        return float(quota.burst)
    assert quota.requests_per_minute is not None
    return max(1.0, math.floor(quota.requests_per_minute / 10))


@dataclass(slots=True)
class _Bucket:
    quota: Quota
    tokens: float
    updated: float


class _LocalLease:
    __slots__ = ("_caller", "_limiter", "_released")

    def __init__(self, limiter: LocalCallerLimiter, caller: str) -> None:
        self._limiter, self._caller, self._released = limiter, caller, False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._limiter._release(self._caller)


class _NoLease:
    __slots__ = ()

    def release(self) -> None:
        pass


class LocalCallerLimiter:
    """Quotas counted in this process (one server instance)."""

    def __init__(self, now: Callable[[], float] = MONOTONIC_CLOCK.now) -> None:
        self._now = now
        self._buckets: dict[str, _Bucket] = {}
        self._running: dict[str, int] = {}

    async def acquire(self, caller: str, quota: Quota) -> Lease:
        """Take a token and a concurrency slot of ``caller``, or raise :class:`QuotaExceeded`."""
        if quota.max_concurrent is not None and self._running.get(caller, 0) >= quota.max_concurrent:
            raise QuotaExceeded("max_concurrent", quota.max_concurrent, CONCURRENCY_RETRY_DELAY)
        if quota.requests_per_minute is not None:
            self._take_token(caller, quota)
        if quota.max_concurrent is None:
            return _NoLease()
        self._running[caller] = self._running.get(caller, 0) + 1
        return _LocalLease(self, caller)

    def running(self, caller: str) -> int:
        """Calls of ``caller`` holding a lease now."""
        return self._running.get(caller, 0)

    def _take_token(self, caller: str, quota: Quota) -> None:
        assert quota.requests_per_minute is not None
        rate = quota.requests_per_minute / 60.0
        size = burst_of(quota)
        now = self._now()
        bucket = self._buckets.get(caller)
        if bucket is None:
            bucket = self._buckets[caller] = _Bucket(quota, size, now)
        elif bucket.quota != quota:
            # The tokens file changed this caller's quota: keep what it had, within the new size.
            bucket.quota, bucket.tokens = quota, min(bucket.tokens, size)
        bucket.tokens = min(size, bucket.tokens + (now - bucket.updated) * rate)
        bucket.updated = now
        if bucket.tokens < 1.0:
            raise QuotaExceeded("requests_per_minute", quota.requests_per_minute, (1.0 - bucket.tokens) / rate)
        bucket.tokens -= 1.0

    def _release(self, caller: str) -> None:
        left = self._running.get(caller, 0) - 1
        if left > 0:
            self._running[caller] = left
        else:
            self._running.pop(caller, None)
