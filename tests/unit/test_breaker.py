"""The circuit breaker (imagegen_server.breaker) on a fake clock, alone and inside the retry loop."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field

import pytest

from imagegen_server.breaker import (
    BreakerPolicy,
    BreakerState,
    CircuitBreaker,
    CircuitState,
    InMemoryBreakerStore,
    ModelCircuit,
)
from imagegen_server.gemini.errors import ErrorKind, UpstreamError
from imagegen_server.retry import RetryDecision, RetryFailure, RetryPolicy, call_with_retries

MODEL = "gemini-3-pro-image"
OTHER = "gemini-3.1-flash-image"
POLICY = BreakerPolicy(failure_threshold=3, open_seconds=10.0, max_open_seconds=25.0, probe_timeout=60.0)


@dataclass
class FakeClock:
    """Time moves only through sleep() and advance()."""

    t: float = 1000.0
    sleeps: list[float] = field(default_factory=list)

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds

    def advance(self, seconds: float) -> None:
        self.t += seconds


@dataclass
class Changes:
    """A listener keeping every state change."""

    seen: list[tuple[str, CircuitState, float]] = field(default_factory=list)

    def __call__(self, model: str, state: CircuitState, retry_after: float) -> None:
        self.seen.append((model, state, retry_after))


def make(policy: BreakerPolicy = POLICY) -> tuple[CircuitBreaker, FakeClock, Changes]:
    clock, changes = FakeClock(), Changes()
    return CircuitBreaker(policy, clock=clock.now, listener=changes), clock, changes


def overloaded() -> UpstreamError:
    return UpstreamError(ErrorKind.UNAVAILABLE, "model is overloaded", http_status=503)


async def fail_requests(breaker: CircuitBreaker, n: int, model: str = MODEL) -> None:
    for _ in range(n):
        await ModelCircuit(breaker, model).request_failed(overloaded(), counts=True)


async def test_opens_after_the_threshold_of_failed_requests_in_a_row() -> None:
    breaker, clock, changes = make()
    await fail_requests(breaker, 2)
    assert (await breaker.admit(MODEL)).allowed
    await breaker.served(MODEL)  # an answer in between starts the count again
    await fail_requests(breaker, 2)
    assert (await breaker.state(MODEL)).state is CircuitState.CLOSED and changes.seen == []
    await fail_requests(breaker, 1)
    refused = await breaker.admit(MODEL)
    assert not refused.allowed and refused.retry_after == 10.0
    assert changes.seen == [(MODEL, CircuitState.OPEN, 10.0)]
    clock.advance(4.0)
    assert (await breaker.admit(MODEL)).retry_after == 6.0 and await breaker.blocked_for(MODEL) == 6.0
    # Other models are not affected.
    assert (await breaker.admit(OTHER)).allowed and await breaker.blocked_for(OTHER) is None


async def test_one_probe_after_the_open_time_closes_it() -> None:
    breaker, clock, changes = make()
    await fail_requests(breaker, 3)
    clock.advance(10.0)
    probe = await breaker.admit(MODEL)
    assert probe.allowed and probe.probe
    # While the probe is out, everyone else still fails fast.
    other = await breaker.admit(MODEL)
    assert not other.allowed and other.retry_after == 10.0  # min(probe timeout left, open_seconds)
    await ModelCircuit(breaker, MODEL).attempt_done(None, probe=True)
    assert (await breaker.admit(MODEL)).allowed and not (await breaker.admit(MODEL)).probe
    assert [state for _, state, _ in changes.seen] == [CircuitState.OPEN, CircuitState.HALF_OPEN, CircuitState.CLOSED]
    assert await breaker.state(MODEL) == BreakerState(version=(await breaker.state(MODEL)).version)


async def test_a_failed_probe_reopens_for_longer_up_to_the_cap() -> None:
    breaker, clock, changes = make()
    await fail_requests(breaker, 3)
    circuit = ModelCircuit(breaker, MODEL)
    opens = []
    for _ in range(3):
        clock.advance(100.0)
        assert (await breaker.admit(MODEL)).probe
        await circuit.attempt_done(overloaded(), probe=True)
        opens.append((await breaker.admit(MODEL)).retry_after)
    assert opens == [20.0, 25.0, 25.0]  # 10 x 2, 10 x 3 capped at 25, capped
    # An answer of any kind (even a blocked prompt) from the probe closes it.
    clock.advance(25.0)
    assert (await breaker.admit(MODEL)).probe
    await circuit.attempt_done(UpstreamError(ErrorKind.CONTENT_BLOCKED, "blocked"), probe=True)
    assert (await breaker.state(MODEL)).state is CircuitState.CLOSED
    assert changes.seen[-1][1] is CircuitState.CLOSED


async def test_an_abandoned_or_lost_probe_lets_another_request_probe() -> None:
    breaker, clock, _ = make()
    await fail_requests(breaker, 3)
    clock.advance(10.0)
    assert (await breaker.admit(MODEL)).probe
    await ModelCircuit(breaker, MODEL).probe_abandoned()
    assert (await breaker.admit(MODEL)).probe  # the next request probes at once
    clock.advance(60.0)  # that probe never reported back (a crashed replica, a stuck call)
    assert (await breaker.admit(MODEL)).probe


async def test_failures_that_are_not_overload_never_count() -> None:
    breaker, _, _ = make()
    circuit = ModelCircuit(breaker, MODEL)
    for kind in (ErrorKind.CONTENT_BLOCKED, ErrorKind.QUOTA_EXHAUSTED, ErrorKind.AUTH, ErrorKind.MALFORMED):
        for _ in range(5):
            await circuit.request_failed(UpstreamError(kind, "x"), counts=True)
    for _ in range(5):
        await circuit.request_failed(overloaded(), counts=False)  # e.g. the caller's own deadline
    assert (await breaker.state(MODEL)).state is CircuitState.CLOSED


async def test_threshold_zero_turns_it_off() -> None:
    breaker, _, changes = make(BreakerPolicy(failure_threshold=0))
    await fail_requests(breaker, 100)
    assert (await breaker.admit(MODEL)).allowed and await breaker.blocked_for(MODEL) is None and changes.seen == []


@pytest.mark.parametrize(
    "kwargs", [{"failure_threshold": -1}, {"open_seconds": 0}, {"max_open_seconds": 1.0}, {"probe_timeout": 0}]
)
def test_policy_rejects_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        BreakerPolicy(**kwargs)  # type: ignore[arg-type]


async def test_store_compare_and_set_refuses_a_stale_state() -> None:
    store = InMemoryBreakerStore()
    first = await store.get(MODEL)
    assert await store.compare_and_set(MODEL, first, BreakerState(failures=1, version=1))
    assert not await store.compare_and_set(MODEL, first, BreakerState(failures=9, version=1))
    assert (await store.get(MODEL)).failures == 1


# --- inside the retry loop ---------------------------------------------------------------------


@dataclass
class Recorder:
    failed: list[tuple[int, UpstreamError, RetryDecision]] = field(default_factory=list)
    started: list[int] = field(default_factory=list)

    def attempt_started(self, attempt: int, max_attempts: int) -> None:
        self.started.append(attempt)

    def attempt_failed(self, attempt: int, error: UpstreamError, decision: RetryDecision) -> None:
        self.failed.append((attempt, error, decision))


async def run(
    breaker: CircuitBreaker, clock: FakeClock, *outcomes: UpstreamError | str, obs: Recorder | None = None
) -> tuple[int, RetryFailure | None]:
    """One request through the loop; (attempts made, the failure if it gave up)."""
    calls = 0

    async def attempt(timeout: float | None) -> str:
        nonlocal calls
        outcome = outcomes[min(calls, len(outcomes) - 1)]
        calls += 1
        if isinstance(outcome, UpstreamError):
            raise outcome
        return outcome

    try:
        await call_with_retries(
            attempt,
            policy=RetryPolicy(max_attempts=3, initial_backoff=1.0),
            circuit=ModelCircuit(breaker, MODEL),
            observer=obs,
            clock=clock,
            rng=random.Random(7),
        )
    except RetryFailure as failure:
        return calls, failure
    return calls, None


async def test_loop_fails_fast_while_open_and_says_when_to_come_back() -> None:
    breaker, clock, _ = make()
    for _ in range(3):
        calls, failure = await run(breaker, clock, overloaded())
        assert calls == 3 and failure is not None and failure.stop_reason == "attempts_exhausted"
    obs = Recorder()
    calls, failure = await run(breaker, clock, "never reached", obs=obs)
    assert calls == 0 and failure is not None
    assert failure.stop_reason == "circuit_open" and failure.attempts == 0
    assert failure.error.kind is ErrorKind.CIRCUIT_OPEN and failure.error.model == MODEL
    assert failure.retry_delay == 10.0  # opened when the third request gave up, no time since
    # Reported as a failed attempt that never started.
    assert obs.started == [] and [(n, d.reason, d.will_retry) for n, _, d in obs.failed] == [(1, "circuit_open", False)]


async def test_a_retry_is_not_waited_for_when_the_circuit_opens_meanwhile() -> None:
    breaker, clock, _ = make()
    await fail_requests(breaker, 2)
    obs = Recorder()

    async def attempt(timeout: float | None) -> str:
        await fail_requests(breaker, 1)  # another request ends failed while this attempt runs
        raise overloaded()

    with pytest.raises(RetryFailure) as info:
        await call_with_retries(
            attempt, policy=RetryPolicy(), circuit=ModelCircuit(breaker, MODEL), observer=obs, clock=clock
        )
    assert info.value.stop_reason == "circuit_open" and info.value.attempts == 1
    assert info.value.error.kind is ErrorKind.UNAVAILABLE  # the real failure; the circuit is why no retry
    assert info.value.retry_delay == 10.0 and clock.sleeps == []


async def test_probe_in_the_loop_closes_on_success_and_a_cancelled_probe_is_released() -> None:
    breaker, clock, _ = make()
    await fail_requests(breaker, 3)
    clock.advance(10.0)
    gate = asyncio.Event()

    async def hang(timeout: float | None) -> str:
        await gate.wait()
        return "never"

    task = asyncio.create_task(call_with_retries(hang, policy=RetryPolicy(), circuit=ModelCircuit(breaker, MODEL)))
    await asyncio.sleep(0)
    assert (await breaker.state(MODEL)).probe_until > 0
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (await breaker.state(MODEL)).probe_until == 0.0
    calls, failure = await run(breaker, clock, overloaded(), "image")
    # The probe's 503 reopens the circuit: its retry is not made.
    assert calls == 1 and failure is not None and failure.stop_reason == "circuit_open"
    clock.advance(20.0)
    calls, failure = await run(breaker, clock, "image")
    assert (calls, failure) == (1, None) and (await breaker.state(MODEL)).state is CircuitState.CLOSED


async def test_transient_faults_never_open_it() -> None:
    breaker, clock, changes = make()
    for _ in range(50):
        calls, failure = await run(breaker, clock, overloaded(), overloaded(), "image")
        assert (calls, failure) == (3, None)
    assert changes.seen == []
