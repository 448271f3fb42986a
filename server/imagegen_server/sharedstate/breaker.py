"""Circuit-breaker states across replicas: one JSON value per model in Redis, changed by compare-and-set.

:class:`~imagegen_server.breaker.CircuitBreaker` keeps its logic; this store
only keeps the states, so a circuit opened by failures seen on one replica
fails calls fast on every replica, and one probe (on whichever replica takes
the half-open slot first) closes it for all. The compare-and-set is a Lua
script comparing versions, so concurrent updates from replicas never lose one.
Every write renews a TTL longer than the longest open time plus a probe, so an
abandoned model's state goes away by itself and an expired one is a closed
circuit, as if new.

Redis unreachable: always the in-process store, whatever the fail mode. A
breaker protects Gemini and callers from doomed calls; each replica's own
breaker still does that (it opens after its own run of failures), whereas
refusing every call because breaker state cannot be shared would turn a Redis
outage into a full outage for no safety gained.
"""

from __future__ import annotations

import hashlib
import json
from typing import Final

from imagegen_server.breaker import BreakerState, BreakerStore, CircuitState, InMemoryBreakerStore
from imagegen_server.sharedstate.connection import SharedState, StateUnavailable

#: The operation label of the metric.
OPERATION: Final = "breaker"

# KEYS: the state. ARGV: expected version, new state (JSON), TTL ms. 1 when stored.
_COMPARE_AND_SET = """
local current = redis.call('GET', KEYS[1])
local version = 0
if current then version = tonumber(cjson.decode(current)['version']) end
if version ~= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""


def _encode(state: BreakerState) -> str:
    return json.dumps(
        {
            "state": state.state.value,
            "failures": state.failures,
            "openings": state.openings,
            "open_until": state.open_until,
            "probe_until": state.probe_until,
            "version": state.version,
        }
    )


def _decode(raw: bytes | str) -> BreakerState:
    fields = json.loads(raw)
    return BreakerState(
        state=CircuitState(fields["state"]),
        failures=int(fields["failures"]),
        openings=int(fields["openings"]),
        open_until=float(fields["open_until"]),
        probe_until=float(fields["probe_until"]),
        version=int(fields["version"]),
    )


class RedisBreakerStore:
    """A :class:`~imagegen_server.breaker.BreakerStore` in Redis; ``fallback`` serves while Redis is unreachable.

    The breaker using it must run on the wall clock (times are stored as they are).
    """

    def __init__(
        self,
        state: SharedState,
        *,
        ttl: float,
        fallback: BreakerStore | None = None,
        prefix: str = "imagegen:breaker:",
    ) -> None:
        self._state = state
        self._ttl_ms = max(int(ttl * 1000), 1)
        self._fallback: BreakerStore = fallback or InMemoryBreakerStore()
        self._prefix = prefix
        self._compare_and_set = state.script(_COMPARE_AND_SET)

    async def get(self, key: str) -> BreakerState:
        """The shared state of ``key``'s circuit (closed when there is none)."""
        name = self._name(key)
        try:
            raw = await self._state.run(OPERATION, lambda client: client.get(name))
        except StateUnavailable:
            return await self._fallback.get(key)
        return BreakerState() if raw is None else _decode(raw)

    async def compare_and_set(self, key: str, expected: BreakerState, new: BreakerState) -> bool:
        """Store ``new`` if the shared state is still at ``expected.version``."""
        name, payload = self._name(key), _encode(new)
        try:
            stored = await self._state.run(
                OPERATION,
                lambda client: self._compare_and_set(
                    keys=[name], args=[expected.version, payload, self._ttl_ms], client=client
                ),
            )
        except StateUnavailable:
            return await self._fallback.compare_and_set(key, expected, new)
        return bool(stored)

    def _name(self, key: str) -> str:
        # Model names are short and plain, but hashing keeps any key a valid, bounded Redis key.
        return self._prefix + hashlib.sha256(key.encode()).hexdigest()[:32]
