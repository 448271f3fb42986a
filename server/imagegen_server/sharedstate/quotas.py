"""Per-caller quotas across replicas: one token bucket and one set of concurrency leases per caller, in Redis.

One Lua script checks and takes both at once (atomic, on Redis' own clock, so
replicas' clocks never disagree about a refill):

- ``…:bucket`` is a hash (tokens, last refill in ms) refilled at
  ``requests_per_minute / 60`` per second up to the burst, expiring once it
  would be full anyway;
- ``…:running`` is a sorted set of lease ids scored by their expiry. A call
  adds its lease and removes it when it ends; the limiter renews the leases of
  its calls still running every third of the lease time. A replica that dies
  stops renewing, so its calls stop counting after at most one lease time
  instead of leaking the caller's slots forever.

Redis unreachable: failing open, the in-process limiter counts (each replica
enforces the caller's quota on its own, so up to N times the quota across N
replicas); failing closed, callers with quotas are refused with
SHARED_STATE_UNAVAILABLE (callers without quotas never touch Redis).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import uuid
from typing import Final

from imagegen_server import errors
from imagegen_server.auth import Quota
from imagegen_server.quotas import CONCURRENCY_RETRY_DELAY, CallerLimiter, Lease, QuotaExceeded, burst_of
from imagegen_server.sharedstate.connection import SharedState, StateUnavailable

#: What the quota is called in errors.
WHAT: Final = "the caller's quota"
#: The operation label of the metric.
OPERATION: Final = "quota"
#: Seconds a concurrency lease counts without renewal (renewed every third of it).
LEASE_SECONDS: Final = 30.0

# KEYS: bucket, running. ARGV: tokens per ms (0: no rate), bucket size, max concurrent (0: none), lease id, lease ms.
# Returns {1} when admitted, else {0, quota, retry ms as a string}.
_ACQUIRE = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local rate, size, max = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local lease_ms = tonumber(ARGV[5])
if max > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  if redis.call('ZCARD', KEYS[2]) >= max then return {0, 'max_concurrent', '0'} end
end
if rate > 0 then
  local bucket = redis.call('HMGET', KEYS[1], 'tokens', 'at')
  local tokens, at = tonumber(bucket[1]), tonumber(bucket[2])
  if tokens == nil or at == nil then tokens, at = size, now end
  tokens = math.min(size, tokens + math.max(0, now - at) * rate)
  if tokens < 1 then return {0, 'requests_per_minute', tostring(math.ceil((1 - tokens) / rate))} end
  redis.call('HSET', KEYS[1], 'tokens', tostring(tokens - 1), 'at', tostring(now))
  redis.call('PEXPIRE', KEYS[1], math.ceil(size / rate) + 1000)
end
if max > 0 then
  redis.call('ZADD', KEYS[2], now + lease_ms, ARGV[4])
  redis.call('PEXPIRE', KEYS[2], lease_ms * 2)
end
return {1}
"""

# KEYS: running. ARGV: lease ms, then lease ids. Pushes the expiry of the leases still there.
_RENEW = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local lease_ms = tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'XX', now + lease_ms, ARGV[i]) end
redis.call('PEXPIRE', KEYS[1], lease_ms * 2)
return 1
"""


class _SharedLease:
    """A call counted in Redis; giving it back is sent in the background (``release`` is synchronous)."""

    __slots__ = ("_id", "_key", "_limiter", "_released")

    def __init__(self, limiter: RedisCallerLimiter, key: str, lease_id: str) -> None:
        self._limiter, self._key, self._id, self._released = limiter, key, lease_id, False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._limiter._release(self._key, self._id)


class _NoLease:
    __slots__ = ()

    def release(self) -> None:
        pass


class RedisCallerLimiter:
    """A :class:`~imagegen_server.quotas.CallerLimiter` in Redis, for several replicas.

    ``fallback`` counts while Redis is unreachable and the state fails open.
    """

    def __init__(
        self,
        state: SharedState,
        *,
        fallback: CallerLimiter,
        lease_seconds: float = LEASE_SECONDS,
        prefix: str = "imagegen:quota:",
    ) -> None:
        self._state = state
        self._fallback = fallback
        self._lease_ms = max(int(lease_seconds * 1000), 1)
        self._prefix = prefix
        self._acquire = state.script(_ACQUIRE)
        self._renew = state.script(_RENEW)
        #: Leases of calls running here, by their ``…:running`` key: renewed until released.
        self._held: dict[str, set[str]] = {}
        self._renewer: asyncio.Task[None] | None = None
        self._releasing: set[asyncio.Task[None]] = set()

    async def acquire(self, caller: str, quota: Quota) -> Lease:
        """Take a token and a concurrency lease of ``caller`` in Redis, or raise :class:`QuotaExceeded`."""
        base = self._prefix + "{" + hashlib.sha256(caller.encode("utf-8", "surrogateescape")).hexdigest()[:32] + "}"
        bucket, running = f"{base}:bucket", f"{base}:running"
        rate = quota.requests_per_minute / 60_000 if quota.requests_per_minute is not None else 0.0
        size = burst_of(quota) if quota.requests_per_minute is not None else 0.0
        lease_id = uuid.uuid4().hex
        args: list[str | int] = [repr(rate), repr(size), quota.max_concurrent or 0, lease_id, self._lease_ms]
        try:
            reply = await self._state.run(
                OPERATION, lambda client: self._acquire(keys=[bucket, running], args=args, client=client)
            )
        except StateUnavailable:
            if not self._state.fail_open:
                raise errors.shared_state_unavailable(WHAT, {"caller": caller}) from None
            return await self._fallback.acquire(caller, quota)
        if not int(reply[0]):
            which = reply[1].decode()
            if which == "max_concurrent":
                assert quota.max_concurrent is not None
                raise QuotaExceeded(which, quota.max_concurrent, CONCURRENCY_RETRY_DELAY)
            assert quota.requests_per_minute is not None
            raise QuotaExceeded(which, quota.requests_per_minute, int(reply[2]) / 1000)
        if quota.max_concurrent is None:
            return _NoLease()
        self._held.setdefault(running, set()).add(lease_id)
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.create_task(self._keep_leases())
        return _SharedLease(self, running, lease_id)

    async def aclose(self) -> None:
        """Stop renewing; wait briefly for releases under way (leases left behind expire by themselves)."""
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        if self._releasing:
            await asyncio.wait(self._releasing, timeout=1.0)

    def _release(self, key: str, lease_id: str) -> None:
        leases = self._held.get(key)
        if leases is not None:
            leases.discard(lease_id)
            if not leases:
                del self._held[key]
        task = asyncio.get_running_loop().create_task(self._remove(key, lease_id))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    async def _remove(self, key: str, lease_id: str) -> None:
        # Best effort: a lease that cannot be removed now expires after the lease time.
        with contextlib.suppress(StateUnavailable):
            await self._state.run(OPERATION, lambda client: client.zrem(key, lease_id))

    async def _keep_leases(self) -> None:
        """Renew the leases of the calls running here, every third of the lease time, while there are any."""
        while self._held:
            await asyncio.sleep(self._lease_ms / 3000)
            for key, leases in list(self._held.items()):
                with contextlib.suppress(StateUnavailable):
                    await self._renew_leases(key, list(leases))

    async def _renew_leases(self, key: str, ids: list[str]) -> None:
        await self._state.run(
            OPERATION, lambda client: self._renew(keys=[key], args=[self._lease_ms, *ids], client=client)
        )
