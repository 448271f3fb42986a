"""Circuit breakers, one per upstream model: fail fast while a model is down, probe it, close when it answers.

A model's circuit **opens** after ``failure_threshold`` requests in a row
ended in an overload failure (HTTP 500/502/503 or a lost connection, an
upstream timeout, a per-minute 429) once their retries were spent. While it is
open, calls fail at once, without an upstream attempt, and say when to come
back (``CIRCUIT_OPEN`` with ``RetryInfo``). After the open time the circuit is
**half-open**: the next request is the probe, and its attempt decides: any
answer from the model closes the circuit, another overload failure opens it
again for longer (``open_seconds`` times the openings in a row, capped at
``max_open_seconds``, as Envoy grows its ejection time).

Requests are counted, not attempts: a request that succeeded on a retry
shows the model serving, so transient faults never open the circuit however
they cluster; only requests whose retries could not save them count.

State lives in a :class:`BreakerStore` (async get and compare-and-set): an
:class:`InMemoryBreakerStore` per server, or with ``--state-url`` the Redis
one (:mod:`imagegen_server.sharedstate.breaker`), on the wall clock every
replica shares.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Final, Protocol

from imagegen_server.gemini.errors import ErrorKind, UpstreamError

log = logging.getLogger(__name__)

#: Failures that say the model is overloaded or down (a per-day quota is not: it is ours, not the model's state).
OVERLOAD_KINDS: Final = frozenset({ErrorKind.UNAVAILABLE, ErrorKind.DEADLINE_EXCEEDED, ErrorKind.RATE_LIMITED})
#: Failures that are the model's answer to this request: it is serving.
ANSWER_KINDS: Final = frozenset(
    {
        ErrorKind.INVALID_ARGUMENT,
        ErrorKind.FAILED_PRECONDITION,
        ErrorKind.MISSING_THOUGHT_SIGNATURE,
        ErrorKind.CONTENT_BLOCKED,
        ErrorKind.NO_IMAGE,
    }
)


class CircuitState(enum.Enum):
    """Where a model's circuit is."""

    #: Calls go through; failed requests are counted.
    CLOSED = "closed"
    #: Calls fail fast until the probe time.
    OPEN = "open"
    #: One probe call is allowed; its outcome closes or reopens the circuit.
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerState:
    """One model's circuit, as a store keeps it (immutable: updates are compare-and-set)."""

    state: CircuitState = CircuitState.CLOSED
    #: Requests in a row that ended in an overload failure (while closed).
    failures: int = 0
    #: Openings since the circuit last closed; grows the open time.
    openings: int = 0
    #: While open: when the half-open probe may go.
    open_until: float = 0.0
    #: While half-open: a probe is out until then (0.0: none; a lost probe expires).
    probe_until: float = 0.0
    #: Bumped on every change, so compare-and-set needs no deep comparison.
    version: int = 0


class BreakerStore(Protocol):
    """Where circuit states live: one key per model."""

    async def get(self, key: str) -> BreakerState:
        """The state under ``key`` (a closed circuit when there is none)."""
        ...

    async def compare_and_set(self, key: str, expected: BreakerState, new: BreakerState) -> bool:
        """Store ``new`` if the state is still ``expected`` (same version); whether it was stored."""
        ...


class InMemoryBreakerStore:
    """A :class:`BreakerStore` in a dict, for one server process (one event loop, no locking needed)."""

    def __init__(self) -> None:
        self._states: dict[str, BreakerState] = {}

    async def get(self, key: str) -> BreakerState:
        """The stored state, or a closed circuit."""
        return self._states.get(key, BreakerState())

    async def compare_and_set(self, key: str, expected: BreakerState, new: BreakerState) -> bool:
        """Replace the state if its version is still ``expected.version``."""
        if self._states.get(key, BreakerState()).version != expected.version:
            return False
        self._states[key] = new
        return True


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """When circuits open and for how long."""

    #: Failed requests in a row that open the circuit; 0 turns breakers off.
    failure_threshold: int = 5
    #: Seconds the circuit stays open the first time (then x2, x3... per reopening).
    open_seconds: float = 30.0
    #: Cap on the open time.
    max_open_seconds: float = 300.0
    #: How long one probe may take before another request may probe instead.
    probe_timeout: float = 120.0

    def __post_init__(self) -> None:
        if self.failure_threshold < 0:
            raise ValueError(f"failure_threshold must be >= 0, got {self.failure_threshold}")
        if self.open_seconds <= 0 or self.max_open_seconds < self.open_seconds:
            raise ValueError("need 0 < open_seconds <= max_open_seconds")
        if self.probe_timeout <= 0:
            raise ValueError(f"probe_timeout must be > 0, got {self.probe_timeout}")

    @property
    def enabled(self) -> bool:
        """False when breakers are turned off."""
        return self.failure_threshold > 0

    def open_time(self, openings: int) -> float:
        """Seconds the circuit stays open at its ``openings``-th opening in a row."""
        return min(self.open_seconds * max(openings, 1), self.max_open_seconds)


@dataclass(frozen=True, slots=True)
class Admission:
    """Whether a call may go to the model now."""

    allowed: bool
    #: This call is the half-open probe: its outcome must be reported.
    probe: bool = False
    #: When refused: seconds until the circuit lets a probe through.
    retry_after: float = 0.0


#: Called with (model, new state, seconds until the probe when open) on every change.
CircuitListener = Callable[[str, CircuitState, float], None]


class CircuitBreaker:
    """The circuits of all upstream models, kept in ``store``; one per server."""

    def __init__(
        self,
        policy: BreakerPolicy,
        *,
        store: BreakerStore | None = None,
        clock: Callable[[], float],
        listener: CircuitListener | None = None,
    ) -> None:
        self.policy = policy
        self._store: BreakerStore = store or InMemoryBreakerStore()
        self._clock = clock
        self._listener = listener
        #: The state last reported per model, so a change made by another replica (shared store) is reported too.
        self._seen: dict[str, CircuitState] = {}

    async def state(self, model: str) -> BreakerState:
        """The current state of ``model``'s circuit."""
        return await self._store.get(model)

    async def admit(self, model: str) -> Admission:
        """May a call go to ``model`` now? Takes the probe slot when the open time is over."""
        if not self.policy.enabled:
            return Admission(allowed=True)
        while True:
            now = self._clock()
            current = await self._store.get(model)
            self._observe(model, current, now)
            if current.state is CircuitState.CLOSED:
                return Admission(allowed=True)
            if current.state is CircuitState.OPEN and now < current.open_until:
                return Admission(allowed=False, retry_after=current.open_until - now)
            if current.state is CircuitState.HALF_OPEN and now < current.probe_until:
                # A probe is out: its answer comes within the probe timeout at the latest.
                wait = min(current.probe_until - now, self.policy.open_seconds)
                return Admission(allowed=False, retry_after=wait)
            # Open time over (or the last probe was lost): this call is the probe.
            probing = replace(
                current,
                state=CircuitState.HALF_OPEN,
                probe_until=now + self.policy.probe_timeout,
                version=current.version + 1,
            )
            if await self._store.compare_and_set(model, current, probing):
                if current.state is CircuitState.OPEN:
                    self._changed(model, CircuitState.HALF_OPEN, 0.0)
                return Admission(allowed=True, probe=True)

    async def blocked_for(self, model: str) -> float | None:
        """Seconds until ``model`` takes calls again when its circuit refuses them now, else None (no side effects)."""
        if not self.policy.enabled:
            return None
        now = self._clock()
        current = await self._store.get(model)
        self._observe(model, current, now)
        if current.state is CircuitState.OPEN and now < current.open_until:
            return current.open_until - now
        if current.state is CircuitState.HALF_OPEN and now < current.probe_until:
            return min(current.probe_until - now, self.policy.open_seconds)
        return None

    async def served(self, model: str) -> None:
        """The model answered (an image, or a refusal of this request): it is serving; close the circuit."""
        if not self.policy.enabled:
            return
        await self._update(model, self._close)

    async def probe_failed(self, model: str) -> None:
        """The half-open probe met an overload failure: open again, for longer."""
        if not self.policy.enabled:
            return
        await self._update(model, self._reopen)

    async def probe_abandoned(self, model: str) -> None:
        """The probe ended without an answer either way (cancelled): let the next request probe."""
        if not self.policy.enabled:
            return

        def release(current: BreakerState, now: float) -> BreakerState | None:
            if current.state is not CircuitState.HALF_OPEN:
                return None
            return replace(current, probe_until=0.0, version=current.version + 1)

        await self._update(model, release)

    async def request_failed(self, model: str) -> None:
        """A request ended in an overload failure after its retries; enough in a row open the circuit."""
        if not self.policy.enabled:
            return

        def count(current: BreakerState, now: float) -> BreakerState | None:
            if current.state is not CircuitState.CLOSED:
                return None  # already open; the probe decides what happens next
            failures = current.failures + 1
            if failures < self.policy.failure_threshold:
                return replace(current, failures=failures, version=current.version + 1)
            return self._open(current, now)

        await self._update(model, count)

    def _close(self, current: BreakerState, now: float) -> BreakerState | None:
        if current.state is CircuitState.CLOSED and current.failures == 0:
            return None
        return BreakerState(version=current.version + 1)

    def _reopen(self, current: BreakerState, now: float) -> BreakerState | None:
        if current.state is not CircuitState.HALF_OPEN:
            return None
        return self._open(current, now)

    def _open(self, current: BreakerState, now: float) -> BreakerState:
        openings = current.openings + 1
        return BreakerState(
            state=CircuitState.OPEN,
            openings=openings,
            open_until=now + self.policy.open_time(openings),
            version=current.version + 1,
        )

    async def _update(self, model: str, change: Callable[[BreakerState, float], BreakerState | None]) -> None:
        """Apply ``change`` with compare-and-set until it sticks (or there is nothing to change)."""
        while True:
            now = self._clock()
            current = await self._store.get(model)
            new = change(current, now)
            if new is None:
                return
            if await self._store.compare_and_set(model, current, new):
                if new.state is not current.state:
                    self._changed(model, new.state, max(new.open_until - now, 0.0))
                return

    def _observe(self, model: str, current: BreakerState, now: float) -> None:
        """Report a state another replica put in a shared store, the first time this one sees it."""
        if self._seen.get(model, CircuitState.CLOSED) is not current.state:
            self._changed(model, current.state, max(current.open_until - now, 0.0))

    def _changed(self, model: str, state: CircuitState, retry_after: float) -> None:
        self._seen[model] = state
        if state is CircuitState.OPEN:
            log.warning("circuit of %s OPEN: calls fail fast for %.1fs, then one probe", model, retry_after)
        elif state is CircuitState.CLOSED:
            log.warning("circuit of %s CLOSED: the model answers again", model)
        else:
            log.info("circuit of %s HALF-OPEN: probing", model)
        if self._listener is not None:
            self._listener(model, state, retry_after)


@dataclass(frozen=True, slots=True)
class ModelCircuit:
    """One model's circuit as a retry loop uses it: ask before each attempt, report each outcome."""

    breaker: CircuitBreaker
    model: str

    async def admit(self) -> Admission:
        """May the next attempt go?"""
        return await self.breaker.admit(self.model)

    async def blocked_for(self) -> float | None:
        """Seconds until calls are let through again, when they are refused now."""
        return await self.breaker.blocked_for(self.model)

    async def attempt_done(self, error: UpstreamError | None, *, probe: bool) -> None:
        """An attempt ended: ``None`` for success, else its failure."""
        if error is None or error.kind in ANSWER_KINDS:
            await self.breaker.served(self.model)
        elif probe and error.kind in OVERLOAD_KINDS:
            await self.breaker.probe_failed(self.model)
        elif probe:
            # Neither an answer nor an overload (a malformed body, our key): the next request probes.
            await self.breaker.probe_abandoned(self.model)

    async def probe_abandoned(self) -> None:
        """The probe attempt was cancelled."""
        await self.breaker.probe_abandoned(self.model)

    async def request_failed(self, error: UpstreamError, *, counts: bool) -> None:
        """The request gave up on ``error``; ``counts`` when how it stopped says the model is overloaded."""
        if counts and error.kind in OVERLOAD_KINDS:
            await self.breaker.request_failed(self.model)
