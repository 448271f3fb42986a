"""Request ids across replicas: one owner per key in Redis, results shared with every duplicate.

Per idempotency key (hashed, so callers' names and ids never reach key names):

- ``…:lease`` holds the owner's fingerprint and token, with a TTL the owner
  renews while it works (claimed atomically: only one replica owns a key). A
  replica that dies stops renewing; the lease expires and a waiting duplicate
  claims the key and runs the request itself.
- ``…:result`` holds the finished Generation with the fingerprint, for
  ``ttl`` seconds, when it is at most ``max_result_bytes`` (larger ones reach
  only the duplicates waiting in the owner's replica; remote ones take over).
- ``…:fail:<token>`` holds a failure every duplicate would meet (a blocked
  prompt), briefly, for the duplicates that followed that owner.

A duplicate in the owner's replica waits on an in-process future; one in
another replica polls (50 ms, doubling to 500 ms): a generation takes seconds,
so polling costs little and needs no connection per waiter.

Redis unreachable: failing open, claims go to the in-process store (dedup
within this replica only) and a remote duplicate whose wait fails takes over;
failing closed, a request with an id is refused with SHARED_STATE_UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Generic, TypeVar

from google.rpc import status_pb2

from imagegen_server import errors
from imagegen_server.errors import ServiceError
from imagegen_server.idempotency import Abandoned, Claim, FingerprintMismatch, IdempotencyKey, IdempotencyStore
from imagegen_server.sharedstate.connection import SharedState, StateUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

#: What the key is called in errors.
WHAT: Final = "the request id"
#: The operation label of the metric.
OPERATION: Final = "idempotency"
#: Seconds an owner's lease lives without renewal (renewed every third of it).
LEASE_SECONDS: Final = 10.0
#: How long a shared failure waits for the duplicates that followed its owner.
FAILURE_SECONDS: Final = 30.0
POLL_FIRST: Final = 0.05
POLL_MAX: Final = 0.5

# KEYS: result, lease. ARGV: fingerprint (32 bytes), token, lease ms.
_CLAIM = """
local done = redis.call('GET', KEYS[1])
if done then
  if string.sub(done, 1, 32) ~= ARGV[1] then return {'mismatch'} end
  return {'done', string.sub(done, 33)}
end
local lease = redis.call('GET', KEYS[2])
if lease then
  if string.sub(lease, 1, 32) ~= ARGV[1] then return {'mismatch'} end
  return {'follow', string.sub(lease, 33)}
end
redis.call('SET', KEYS[2], ARGV[1] .. ARGV[2], 'NX', 'PX', ARGV[3])
return {'owner', ARGV[2]}
"""

# KEYS: result, lease, failure of the followed owner. ARGV: the owner's token.
_POLL = """
local done = redis.call('GET', KEYS[1])
if done then return {'done', string.sub(done, 33)} end
local failed = redis.call('GET', KEYS[3])
if failed then return {'failed', failed} end
local lease = redis.call('GET', KEYS[2])
if lease and string.sub(lease, 33) == ARGV[1] then return {'pending'} end
return {'abandoned'}
"""

# KEYS: lease. ARGV: token, lease ms. 1 while the lease is still ours.
_RENEW = """
local lease = redis.call('GET', KEYS[1])
if lease and string.sub(lease, 33) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

# KEYS: lease, then the key to write (result or failure) if any. ARGV: token, value, ms.
_FINISH = """
if KEYS[2] then redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3]) end
local lease = redis.call('GET', KEYS[1])
if lease and string.sub(lease, 33) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""


@dataclass(frozen=True, slots=True)
class Codec(Generic[T]):
    """How results travel through Redis."""

    encode: Callable[[T], bytes]
    decode: Callable[[bytes], T]


@dataclass(slots=True, eq=False)
class _Remote:
    """A claim held in Redis."""

    name: str
    #: SHA-256 of the request's fingerprint: always 32 bytes, which the scripts rely on.
    fingerprint: bytes
    #: The owner's token (ours when we own the key).
    token: str
    #: A finished result found when claiming.
    value: bytes | None = None
    #: The owner's outcome, when the owner is in this replica (kept by the claim: it outlives the ownership).
    local: asyncio.Future[Any] | None = None

    def keys(self, *more: str) -> list[str]:
        return [f"{self.name}:{suffix}" for suffix in ("result", "lease", *more)]


@dataclass(slots=True, eq=False)
class _Owned(Generic[T]):
    """A key this replica owns: its waiters here, and the task keeping its lease."""

    future: asyncio.Future[T]
    renewal: asyncio.Task[None] | None = field(default=None)


class RedisIdempotencyStore(Generic[T]):
    """An :class:`~imagegen_server.idempotency.IdempotencyStore` in Redis, for several replicas.

    ``fallback`` serves while Redis is unreachable and the state fails open.
    """

    def __init__(
        self,
        state: SharedState,
        *,
        ttl: float,
        max_result_bytes: int,
        codec: Codec[T],
        fallback: IdempotencyStore[T],
        lease_seconds: float = LEASE_SECONDS,
        prefix: str = "imagegen:idem:",
    ) -> None:
        self._state = state
        self._ttl_ms = max(int(ttl * 1000), 1)
        self._max_result_bytes = max_result_bytes
        self._codec = codec
        self._fallback = fallback
        self._lease_seconds = lease_seconds
        self._prefix = prefix
        self._claim = state.script(_CLAIM)
        self._poll = state.script(_POLL)
        self._renew = state.script(_RENEW)
        self._finish = state.script(_FINISH)
        self._owned: dict[str, _Owned[T]] = {}

    async def claim(self, key: IdempotencyKey, fingerprint: bytes) -> Claim:
        """See :meth:`IdempotencyStore.claim`."""
        name = self._prefix + "{" + hashlib.sha256(str(key).encode()).hexdigest()[:40] + "}"
        remote = _Remote(name, hashlib.sha256(fingerprint).digest(), uuid.uuid4().hex)
        try:
            reply = await self._state.run(
                OPERATION,
                lambda client: self._claim(
                    keys=remote.keys(), args=[remote.fingerprint, remote.token, self._lease_ms], client=client
                ),
                bulk=True,
            )
        except StateUnavailable:
            if not self._state.fail_open:
                raise errors.shared_state_unavailable(WHAT) from None
            return await self._fallback.claim(key, fingerprint)
        kind = reply[0]
        if kind == b"mismatch":
            raise FingerprintMismatch(str(key))
        if kind == b"done":
            remote.value = reply[1]
            return Claim(key, owner=False, handle=remote)
        if kind == b"follow":
            remote.token = reply[1].decode()
            owner = self._owned.get(remote.token)
            remote.local = owner.future if owner is not None else None
            return Claim(key, owner=False, handle=remote)
        owned: _Owned[T] = _Owned(asyncio.get_running_loop().create_future())
        owned.renewal = asyncio.create_task(self._keep_lease(remote))
        self._owned[remote.token] = owned
        return Claim(key, owner=True, handle=remote)

    async def wait(self, claim: Claim, timeout: float) -> T:
        """See :meth:`IdempotencyStore.wait`."""
        remote = claim.handle
        if not isinstance(remote, _Remote):
            return await self._fallback.wait(claim, timeout)
        if remote.value is not None:
            return self._codec.decode(remote.value)
        async with asyncio.timeout(timeout):
            if remote.local is not None:
                # The owner is in this replica: no polling. Shielded: one waiter leaving must not cancel it.
                value: T = await asyncio.shield(remote.local)
                return value
            return await self._poll_until_done(remote)

    async def resolve(self, claim: Claim, value: T) -> None:
        """See :meth:`IdempotencyStore.resolve`."""
        remote = claim.handle
        if not isinstance(remote, _Remote):
            await self._fallback.resolve(claim, value)
            return
        self._settle_here(remote, value, None)
        payload = self._codec.encode(value)
        if len(payload) <= self._max_result_bytes:
            await self._end(remote, "result", remote.fingerprint + payload, self._ttl_ms)
        else:
            log.info(
                "request_id %s: result of %d bytes not shared (limit %d)",
                claim.key.request_id,
                len(payload),
                self._max_result_bytes,
            )
            await self._end(remote, None, b"", 0)

    async def fail(self, claim: Claim, error: BaseException) -> None:
        """See :meth:`IdempotencyStore.fail`."""
        remote = claim.handle
        if not isinstance(remote, _Remote):
            await self._fallback.fail(claim, error)
            return
        self._settle_here(remote, None, error)
        if isinstance(error, ServiceError):
            await self._end(remote, f"fail:{remote.token}", error.status.SerializeToString(), self._failure_ms)
        else:
            # Nothing remote duplicates could be told: they take over.
            await self._end(remote, None, b"", 0)

    async def abandon(self, claim: Claim) -> None:
        """See :meth:`IdempotencyStore.abandon`."""
        remote = claim.handle
        if not isinstance(remote, _Remote):
            await self._fallback.abandon(claim)
            return
        self._settle_here(remote, None, Abandoned(str(claim.key)))
        await self._end(remote, None, b"", 0)

    async def aclose(self) -> None:
        """Stop renewing leases (the server is stopping; their keys expire by themselves)."""
        for owned in list(self._owned.values()):
            await _cancel(owned.renewal)
        self._owned.clear()

    @property
    def _lease_ms(self) -> int:
        return max(int(self._lease_seconds * 1000), 1)

    @property
    def _failure_ms(self) -> int:
        return int(FAILURE_SECONDS * 1000)

    async def _poll_until_done(self, remote: _Remote) -> T:
        delay = POLL_FIRST
        while True:
            try:
                reply = await self._state.run(
                    OPERATION,
                    lambda client: self._poll(
                        keys=remote.keys(f"fail:{remote.token}"), args=[remote.token], client=client
                    ),
                    bulk=True,
                )
            except StateUnavailable:
                if not self._state.fail_open:
                    raise errors.shared_state_unavailable(WHAT) from None
                # The owner's result cannot reach us: run the request here (claimed in-process).
                raise Abandoned(remote.name) from None
            kind = reply[0]
            if kind == b"done":
                return self._codec.decode(reply[1])
            if kind == b"failed":
                raise ServiceError(status_pb2.Status.FromString(reply[1]))
            if kind == b"abandoned":
                raise Abandoned(remote.name)
            await asyncio.sleep(delay)
            delay = min(delay * 2, POLL_MAX)

    def _settle_here(self, remote: _Remote, value: T | None, error: BaseException | None) -> None:
        """Wake this replica's duplicates at once (before any Redis round trip) and stop the renewals."""
        owned = self._owned.pop(remote.token, None)
        if owned is None:
            return
        if owned.renewal is not None:
            owned.renewal.cancel()
        if owned.future.done():
            return
        if error is None:
            owned.future.set_result(value)  # type: ignore[arg-type]
        else:
            owned.future.set_exception(error)
            owned.future.exception()  # retrieved: nobody waiting is fine

    async def _end(self, remote: _Remote, suffix: str | None, value: bytes, ms: int) -> None:
        """Release the lease and, with ``suffix``, write the result or failure under it; best effort."""
        keys = [f"{remote.name}:lease"] + ([] if suffix is None else [f"{remote.name}:{suffix}"])
        with contextlib.suppress(StateUnavailable):
            await self._state.run(
                OPERATION,
                lambda client: self._finish(keys=keys, args=[remote.token, value, ms], client=client),
                bulk=len(value) > 0,
            )

    async def _keep_lease(self, remote: _Remote) -> None:
        """Renew the lease every third of its life while this replica works on the key."""
        while True:
            await asyncio.sleep(self._lease_seconds / 3)
            try:
                ours = await self._state.run(
                    OPERATION,
                    lambda client: self._renew(
                        keys=[f"{remote.name}:lease"], args=[remote.token, self._lease_ms], client=client
                    ),
                )
            except StateUnavailable:
                continue
            if not ours:
                return  # expired while Redis was away, or taken over: nothing left to keep


async def _cancel(task: asyncio.Task[Any] | None) -> None:
    if task is None or task.done():
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
