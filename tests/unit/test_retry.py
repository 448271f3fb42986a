"""Unit and property tests for the shared retry loop (imagegen_server.retry).

Everything is deterministic: a fake clock whose time moves only when the loop
sleeps (or an attempt "takes" time), and seeded random sources. No test sleeps.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from imagegen_server.gemini.errors import ErrorKind, QuotaViolation, UpstreamError
from imagegen_server.retry import (
    MONOTONIC_CLOCK,
    RetryBudget,
    RetryDecision,
    RetryFailure,
    RetryPolicy,
    call_with_retries,
    classify,
)

SEED = 1234
START = 1000.0

RETRYABLE_KINDS = (ErrorKind.RATE_LIMITED, ErrorKind.UNAVAILABLE, ErrorKind.DEADLINE_EXCEEDED)
ONCE_KINDS = (ErrorKind.MALFORMED, ErrorKind.NO_IMAGE)
NEVER_KINDS = (
    ErrorKind.INVALID_ARGUMENT,
    ErrorKind.FAILED_PRECONDITION,
    ErrorKind.MISSING_THOUGHT_SIGNATURE,
    ErrorKind.CONTENT_BLOCKED,
    ErrorKind.NOT_FOUND,
    ErrorKind.AUTH,
    ErrorKind.QUOTA_EXHAUSTED,
    ErrorKind.CIRCUIT_OPEN,
)
STOP_REASONS = {"not_retryable", "attempts_exhausted", "deadline", "retry_budget", "circuit_open"}


# --- fakes ---------------------------------------------------------------------------------------


@dataclass
class FakeClock:
    """Time moves only through sleep() and advance(); sleeps are recorded."""

    t: float = START
    sleeps: list[float] = field(default_factory=list)
    #: Shared with an observer to check that decisions are reported before sleeping.
    events: list[tuple[object, ...]] | None = None

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if self.events is not None:
            self.events.append(("sleep", seconds))
        self.t += seconds

    def advance(self, seconds: float) -> None:
        self.t += seconds


@dataclass
class Recorder:
    """A RetryObserver that keeps every call, in order and by type."""

    events: list[tuple[object, ...]] = field(default_factory=list)
    started: list[tuple[int, int]] = field(default_factory=list)
    failed: list[tuple[int, UpstreamError, RetryDecision]] = field(default_factory=list)

    def attempt_started(self, attempt: int, max_attempts: int) -> None:
        self.events.append(("started", attempt, max_attempts))
        self.started.append((attempt, max_attempts))

    def attempt_failed(self, attempt: int, error: UpstreamError, decision: RetryDecision) -> None:
        self.events.append(("failed", attempt, error, decision))
        self.failed.append((attempt, error, decision))


Outcome = UpstreamError | BaseException | str


class Script:
    """An attempt function playing a list of outcomes (the last one repeats).

    An exception is raised, anything else returned. ``took`` makes attempt i
    advance the clock by that many seconds first.
    """

    def __init__(self, clock: FakeClock, *outcomes: Outcome, took: Sequence[float] = ()) -> None:
        self.clock = clock
        self.outcomes = outcomes
        self.took = took
        self.timeouts: list[float | None] = []

    @property
    def calls(self) -> int:
        return len(self.timeouts)

    async def __call__(self, timeout: float | None) -> str:
        i = len(self.timeouts)
        self.timeouts.append(timeout)
        if i < len(self.took):
            self.clock.advance(self.took[i])
        outcome = self.outcomes[min(i, len(self.outcomes) - 1)]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


def err(kind: ErrorKind, retry_after: float | None = None, **kw: object) -> UpstreamError:
    return UpstreamError(kind, f"{kind.name} from upstream", retry_after=retry_after, **kw)  # type: ignore[arg-type]


def jitter(seed: int, *ceilings: float) -> list[float]:
    """The waits a full-jitter loop seeded with ``seed`` draws for these ceilings."""
    rng = random.Random(seed)
    return [rng.uniform(0.0, c) for c in ceilings]


# --- classification ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(ErrorKind))
def test_classify_covers_every_kind(kind: ErrorKind) -> None:
    c = classify(err(kind))
    if kind in RETRYABLE_KINDS:
        assert c.retryable and c.max_retries is None
    elif kind in ONCE_KINDS:
        assert c.retryable and c.max_retries == 1
    else:
        assert kind in NEVER_KINDS
        assert not c.retryable


def test_rate_limit_with_per_day_violation_is_not_retryable() -> None:
    daily = QuotaViolation(quota_id="GenerateRequestsPerDayPerProjectPerModel")
    minute = QuotaViolation(quota_id="GenerateRequestsPerMinutePerProjectPerModel")
    assert not classify(err(ErrorKind.RATE_LIMITED, quota_violations=(minute, daily))).retryable
    assert classify(err(ErrorKind.RATE_LIMITED, quota_violations=(minute,))).retryable


# --- policy and budget ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_attempts": 0},
        {"initial_backoff": -1.0},
        {"max_backoff": -1.0},
        {"max_upstream_delay": -1.0},
        {"backoff_multiplier": 0.5},
        {"attempt_timeout": 0.0},
        {"min_attempt_time": -0.1},
    ],
)
def test_policy_rejects_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_policy_defaults_and_backoff_ceiling() -> None:
    p = RetryPolicy()
    assert (p.max_attempts, p.initial_backoff, p.backoff_multiplier, p.max_backoff) == (3, 1.0, 2.0, 20.0)
    assert (p.max_upstream_delay, p.attempt_timeout) == (60.0, 120.0)
    assert [p.backoff_ceiling(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 20, 20]
    assert p.backoff_ceiling(100_000) == 20.0  # no OverflowError
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.max_attempts = 5  # type: ignore[misc]


def test_budget_counts_failed_retries_against_recent_requests() -> None:
    clock = FakeClock()
    b = RetryBudget(percent=25, min_retries=2, window=60.0, clock=clock.now)
    assert b.allowance == 2 and b.allow_retry()
    for _ in range(8):
        b.request_started()
    assert b.requests == 8 and b.allowance == 4.0
    for _ in range(3):
        b.retry_failed()
    assert b.failed_retries == 3 and b.allow_retry()
    b.retry_failed()
    assert not b.allow_retry()  # 4 failed retries: at the allowance
    b.request_started()
    b.request_started()
    assert b.allowance == 4.5 and b.allow_retry()  # new requests make room, a quarter each


def test_budget_forgets_what_left_its_window() -> None:
    clock = FakeClock()
    b = RetryBudget(percent=0, min_retries=1, window=10.0, clock=clock.now)
    b.retry_failed()
    assert not b.allow_retry()
    clock.advance(9.9)
    assert not b.allow_retry()
    clock.advance(0.1)
    assert b.failed_retries == 0 and b.allow_retry()


@pytest.mark.parametrize("kwargs", [{"percent": -1}, {"min_retries": -1}, {"window": 0}])
def test_budget_rejects_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryBudget(**kwargs)  # type: ignore[arg-type]


def test_monotonic_clock_is_immutable() -> None:
    with pytest.raises((dataclasses.FrozenInstanceError, AttributeError, TypeError)):
        MONOTONIC_CLOCK.now = lambda: 0.0  # type: ignore[method-assign]


async def test_real_clock_default_path() -> None:
    """The defaults (real clock, fresh random source) work; nothing waits on success."""
    outcome = await call_with_retries(lambda timeout: asyncio.sleep(0, result=timeout), policy=RetryPolicy())
    assert outcome.value == 120.0 and outcome.attempts == 1
    before = MONOTONIC_CLOCK.now()
    await MONOTONIC_CLOCK.sleep(0)
    assert MONOTONIC_CLOCK.now() >= before


# --- the loop ------------------------------------------------------------------------------------


async def test_success_first_try() -> None:
    clock, obs, budget = FakeClock(), Recorder(), RetryBudget()
    script = Script(clock, "image")
    outcome = await call_with_retries(
        script, policy=RetryPolicy(), budget=budget, observer=obs, clock=clock, rng=random.Random(SEED)
    )
    assert (outcome.value, outcome.attempts) == ("image", 1)
    assert clock.sleeps == [] and script.timeouts == [120.0]
    assert obs.events == [("started", 1, 3)]
    assert (budget.requests, budget.failed_retries) == (1, 0)


async def test_rate_limited_then_success_honours_retry_after_exactly() -> None:
    clock, obs = FakeClock(), Recorder()
    script = Script(clock, err(ErrorKind.RATE_LIMITED, retry_after=37.25), "image")
    outcome = await call_with_retries(script, policy=RetryPolicy(), observer=obs, clock=clock, rng=random.Random(SEED))
    assert outcome.attempts == 2
    assert clock.sleeps == [37.25]  # above max_backoff (20) but within max_upstream_delay (60): exact, no jitter
    assert obs.failed[0][2] == RetryDecision(will_retry=True, delay=37.25, reason="retryable")


async def test_unavailable_twice_then_success_with_jittered_waits() -> None:
    clock = FakeClock()
    script = Script(clock, err(ErrorKind.UNAVAILABLE), err(ErrorKind.UNAVAILABLE), "image")
    policy = RetryPolicy(initial_backoff=1.0, backoff_multiplier=2.0)
    outcome = await call_with_retries(script, policy=policy, clock=clock, rng=random.Random(SEED))
    assert outcome.attempts == 3
    assert clock.sleeps == jitter(SEED, 1.0, 2.0)
    assert 0 <= clock.sleeps[0] <= 1.0 and 0 <= clock.sleeps[1] <= 2.0


async def test_jitter_respects_max_backoff() -> None:
    clock = FakeClock()
    script = Script(clock, err(ErrorKind.UNAVAILABLE), err(ErrorKind.UNAVAILABLE), "ok")
    policy = RetryPolicy(initial_backoff=10.0, backoff_multiplier=10.0, max_backoff=15.0)
    await call_with_retries(script, policy=policy, clock=clock, rng=random.Random(SEED))
    assert clock.sleeps == jitter(SEED, 10.0, 15.0)


async def test_attempts_exhausted_raises_last_error() -> None:
    clock = FakeClock()
    errors = [err(ErrorKind.UNAVAILABLE, http_status=500 + i) for i in range(3)]
    script = Script(clock, *errors)
    with pytest.raises(RetryFailure) as info:
        await call_with_retries(script, policy=RetryPolicy(), clock=clock, rng=random.Random(SEED))
    failure = info.value
    assert failure.attempts == 3 and script.calls == 3
    assert failure.error is errors[2] and failure.__cause__ is errors[2]
    assert failure.stop_reason == "attempts_exhausted"
    assert failure.retry_delay is None  # no upstream delay known: no jittered guess passed on
    assert len(clock.sleeps) == 2


async def test_attempts_exhausted_on_rate_limit_carries_upstream_delay() -> None:
    clock = FakeClock()
    script = Script(clock, err(ErrorKind.RATE_LIMITED, retry_after=3.0))
    with pytest.raises(RetryFailure) as info:
        await call_with_retries(script, policy=RetryPolicy(), clock=clock)
    assert info.value.attempts == 3 and info.value.retry_delay == 3.0
    assert clock.sleeps == [3.0, 3.0]


@pytest.mark.parametrize("kind", NEVER_KINDS)
async def test_non_retryable_kinds_attempted_once(kind: ErrorKind) -> None:
    clock, obs, budget = FakeClock(), Recorder(), RetryBudget()
    script = Script(clock, err(kind, retry_after=1.0), "never reached")
    with pytest.raises(RetryFailure) as info:
        await call_with_retries(script, policy=RetryPolicy(max_attempts=5), budget=budget, observer=obs, clock=clock)
    assert script.calls == 1 and info.value.attempts == 1
    assert info.value.stop_reason == "not_retryable" and info.value.retry_delay is None
    assert clock.sleeps == []
    assert obs.failed[0][2] == RetryDecision(will_retry=False, delay=0.0, reason="not_retryable")
    # A content or argument error says nothing about upstream health: no failed retry counted.
    assert budget.failed_retries == 0


@pytest.mark.parametrize("kind", ONCE_KINDS)
async def test_malformed_and_no_image_retried_once_only(kind: ErrorKind) -> None:
    clock = FakeClock()
    script = Script(clock, err(kind))
    with pytest.raises(RetryFailure) as info:
        await call_with_retries(script, policy=RetryPolicy(max_attempts=5), clock=clock, rng=random.Random(SEED))
    assert script.calls == 2 and info.value.attempts == 2
    assert info.value.stop_reason == "attempts_exhausted" and info.value.retry_delay is None
    assert len(clock.sleeps) == 1


async def test_once_limit_is_per_kind() -> None:
    clock = FakeClock()
    script = Script(clock, err(ErrorKind.MALFORMED), err(ErrorKind.NO_IMAGE), "image")
    outcome = await call_with_retries(script, policy=RetryPolicy(), clock=clock, rng=random.Random(SEED))
    assert outcome.attempts == 3


async def test_once_kind_succeeds_on_its_retry() -> None:
    clock = FakeClock()
    script = Script(clock, err(ErrorKind.NO_IMAGE, finish_reason="NO_IMAGE"), "image")
    outcome = await call_with_retries(script, policy=RetryPolicy(), clock=clock, rng=random.Random(SEED))
    assert outcome.attempts == 2


async def test_per_day_quota_not_retried() -> None:
    daily = (QuotaViolation(quota_id="GenerateRequestsPerDayPerProjectPerModel"),)
    for error in (
        err(ErrorKind.QUOTA_EXHAUSTED, retry_after=30.0, quota_violations=daily),
        err(ErrorKind.RATE_LIMITED, retry_after=30.0, quota_violations=daily),
    ):
        clock = FakeClock()
        script = Script(clock, error, "never reached")
        with pytest.raises(RetryFailure) as info:
            await call_with_retries(script, policy=RetryPolicy(), clock=clock)
        assert script.calls == 1 and clock.sleeps == []
        assert info.value.stop_reason == "not_retryable" and info.value.error is error


async def test_upstream_delay_above_cap_fails_now_carrying_it() -> None:
    clock, obs = FakeClock(), Recorder()
    script = Script(clock, err(ErrorKind.RATE_LIMITED, retry_after=61.5), "never reached")
    with pytest.raises(RetryFailure) as info:
        await call_with_retries(script, policy=RetryPolicy(max_upstream_delay=60.0), observer=obs, clock=clock)
    assert script.calls == 1 and clock.sleeps == []
    assert info.value.stop_reason == "deadline" and info.value.retry_delay == 61.5
    assert obs.failed[0][2] == RetryDecision(will_retry=False, delay=61.5, reason="deadline")


async def test_upstream_delay_at_cap_is_waited() -> None:
    clock = FakeClock()
    script = Script(clock, err(ErrorKind.RATE_LIMITED, retry_after=60.0), "image")
    outcome = await call_with_retries(script, policy=RetryPolicy(max_upstream_delay=60.0), clock=clock)
    assert outcome.attempts == 2 and clock.sleeps == [60.0]


async def test_deadline_shorter_than_upstream_delay_fails_now() -> None:
    clock, obs = FakeClock(), Recorder()
    script = Script(clock, err(ErrorKind.RATE_LIMITED, retry_after=10.0), "never reached")
    with pytest.raises(RetryFailure) as info:
        await call_with_retries(script, policy=RetryPolicy(), deadline=START + 5.0, observer=obs, clock=clock)
    assert script.calls == 1 and clock.sleeps == [] and clock.t == START
    assert info.value.stop_reason == "deadline" and info.value.retry_delay == 10.0
    assert info.value.error.kind is ErrorKind.RATE_LIMITED  # the gRPC layer maps it to RESOURCE_EXHAUSTED
    assert obs.failed[0][2] == RetryDecision(will_retry=False, delay=10.0, reason="deadline")


async def test_deadline_shorter_than_jittered_wait_fails_now() -> None:
    clock = FakeClock()
    policy = RetryPolicy(initial_backoff=8.0, min_attempt_time=0.05)
    (wait,) = jitter(SEED, 8.0)
    # One hair too little time for the wait plus a minimal attempt.
    deadline = START + wait + 0.04
    script = Script(clock, err(ErrorKind.UNAVAILABLE), "never reached")
    with pytest.raises(RetryFailure) as info:
        await call_with_retries(script, policy=policy, deadline=deadline, clock=clock, rng=random.Random(SEED))
    assert clock.sleeps == [] and info.value.stop_reason == "deadline" and info.value.retry_delay == wait


async def test_upstream_timeout_retried_while_time_remains() -> None:
    clock = FakeClock()
    policy = RetryPolicy(attempt_timeout=10.0)
    timeout_error = err(ErrorKind.DEADLINE_EXCEEDED, http_status=504)
    script = Script(clock, timeout_error, timeout_error, timeout_error, took=[10.0, 10.0, 10.0])
    with pytest.raises(RetryFailure) as info:
        await call_with_retries(script, policy=policy, deadline=START + 21.0, clock=clock, rng=random.Random(0))
    # Attempt 1 ends at +10; wait w1 < 1; attempt 2 gets min(10, 11 - w1) = 10 and ends past +20;
    # less than a wait plus min_attempt_time remains, so no third attempt.
    assert script.calls == 2
    assert info.value.stop_reason == "deadline"
    assert script.timeouts[0] == 10.0


async def test_attempt_timeout_clipped_to_remaining_time() -> None:
    clock = FakeClock()
    policy = RetryPolicy(attempt_timeout=30.0)
    script = Script(clock, err(ErrorKind.UNAVAILABLE, retry_after=5.0), "image", took=[10.0])
    outcome = await call_with_retries(script, policy=policy, deadline=START + 40.0, clock=clock)
    assert outcome.attempts == 2
    # First: the policy's 30 s (40 s remain). Second: 40 - 10 (attempt) - 5 (wait) = 25 s remain.
    assert script.timeouts == [30.0, 25.0]


async def test_attempt_timeout_without_deadline_and_none() -> None:
    clock = FakeClock()
    script = Script(clock, "image")
    await call_with_retries(script, policy=RetryPolicy(attempt_timeout=None), clock=clock)
    await call_with_retries(script, policy=RetryPolicy(attempt_timeout=None), deadline=START + 7.0, clock=clock)
    await call_with_retries(script, policy=RetryPolicy(attempt_timeout=45.0), clock=clock)
    assert script.timeouts == [None, 7.0, 45.0]


async def test_deadline_already_passed_makes_no_attempt() -> None:
    clock, obs = FakeClock(), Recorder()
    script = Script(clock, "never reached")
    with pytest.raises(RetryFailure) as info:
        await call_with_retries(script, policy=RetryPolicy(), deadline=START, observer=obs, clock=clock)
    assert script.calls == 0 and obs.events == []
    assert info.value.attempts == 0 and info.value.stop_reason == "deadline"
    assert info.value.error.kind is ErrorKind.DEADLINE_EXCEEDED


async def test_budget_bounds_an_outage_but_successful_retries_cost_nothing() -> None:
    clock = FakeClock()
    budget = RetryBudget(percent=25, min_retries=2, window=60.0, clock=clock.now)
    policy = RetryPolicy(max_attempts=3)
    rng = random.Random(SEED)

    # Transient faults, however many: each retry succeeds and costs nothing.
    for _ in range(50):
        script = Script(clock, err(ErrorKind.UNAVAILABLE), err(ErrorKind.RATE_LIMITED, retry_after=1.0), "ok")
        outcome = await call_with_retries(script, policy=policy, budget=budget, clock=clock, rng=rng)
        assert outcome.attempts == 3
    assert budget.failed_retries == 0

    # A full outage: retries fail until they reach 2 + 25 % of the requests, then requests get one attempt.
    clock.advance(60.0)
    attempts = 0
    for _ in range(40):
        outage = Script(clock, err(ErrorKind.UNAVAILABLE))
        with pytest.raises(RetryFailure) as info:
            await call_with_retries(outage, policy=policy, budget=budget, clock=clock, rng=rng)
        attempts += outage.calls
        assert info.value.stop_reason in {"attempts_exhausted", "retry_budget"}
    assert info.value.stop_reason == "retry_budget" and info.value.attempts == 1
    assert info.value.retry_delay is not None and 0 <= info.value.retry_delay <= policy.backoff_ceiling(1)
    assert attempts <= 1.25 * 40 + 2 + 1  # + the one retry granted just below the allowance

    # Once the failed retries leave the window, a transient fault is retried again.
    clock.advance(60.0)
    recovered = Script(clock, err(ErrorKind.UNAVAILABLE), "ok")
    assert (await call_with_retries(recovered, policy=policy, budget=budget, clock=clock, rng=rng)).attempts == 2


async def test_observer_events_in_order_and_before_sleeping() -> None:
    obs = Recorder()
    clock = FakeClock(events=obs.events)
    e1 = err(ErrorKind.RATE_LIMITED, retry_after=4.0)
    e2 = err(ErrorKind.UNAVAILABLE)
    script = Script(clock, e1, e2, "image")
    outcome = await call_with_retries(script, policy=RetryPolicy(), observer=obs, clock=clock, rng=random.Random(SEED))
    (w2,) = jitter(SEED, 2.0)  # the 429 wait is upstream's: no draw for it
    assert outcome.attempts == 3
    assert obs.events == [
        ("started", 1, 3),
        ("failed", 1, e1, RetryDecision(True, 4.0, "retryable")),
        ("sleep", 4.0),
        ("started", 2, 3),
        ("failed", 2, e2, RetryDecision(True, w2, "retryable")),
        ("sleep", w2),
        ("started", 3, 3),
    ]


async def test_cancelled_error_from_attempt_propagates_unretried() -> None:
    clock, obs, budget = FakeClock(), Recorder(), RetryBudget()
    script = Script(clock, asyncio.CancelledError(), "never reached")
    with pytest.raises(asyncio.CancelledError):
        await call_with_retries(script, policy=RetryPolicy(), budget=budget, observer=obs, clock=clock)
    assert script.calls == 1 and obs.events == [("started", 1, 3)] and clock.sleeps == []
    assert budget.failed_retries == 0


async def test_cancellation_during_wait_propagates() -> None:
    sleeping = asyncio.Event()

    class BlockingClock(FakeClock):
        async def sleep(self, seconds: float) -> None:
            sleeping.set()
            await asyncio.Event().wait()  # forever, until cancelled

    clock = BlockingClock()
    script = Script(clock, err(ErrorKind.UNAVAILABLE), "never reached")
    task = asyncio.create_task(call_with_retries(script, policy=RetryPolicy(), clock=clock))
    await sleeping.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert script.calls == 1


async def test_other_exceptions_propagate_unchanged() -> None:
    clock = FakeClock()
    boom = ValueError("a bug, not an upstream failure")
    script = Script(clock, boom, "never reached")
    with pytest.raises(ValueError) as info:
        await call_with_retries(script, policy=RetryPolicy(), clock=clock)
    assert info.value is boom and script.calls == 1


async def test_each_decision_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    script = Script(clock, err(ErrorKind.RATE_LIMITED, retry_after=2.0, http_status=429), err(ErrorKind.AUTH))
    with caplog.at_level(logging.INFO, logger="imagegen_server.retry"), pytest.raises(RetryFailure):
        await call_with_retries(script, policy=RetryPolicy(), clock=clock)
    lines = [r.getMessage() for r in caplog.records if r.name == "imagegen_server.retry"]
    assert lines == [
        "upstream attempt 1/3 failed: RATE_LIMITED http=429; retrying in 2.00s",
        "upstream attempt 2/3 failed: AUTH; giving up (not_retryable)",
    ]


# --- properties ----------------------------------------------------------------------------------

policies = st.builds(
    RetryPolicy,
    max_attempts=st.integers(1, 6),
    initial_backoff=st.floats(0, 5),
    backoff_multiplier=st.floats(1, 4),
    max_backoff=st.floats(0, 30),
    max_upstream_delay=st.floats(0, 90),
    attempt_timeout=st.none() | st.floats(0.1, 200),
    min_attempt_time=st.floats(0, 1),
)
# One attempt: None succeeds, else fails with that kind; upstream delay; time the attempt takes.
steps = st.tuples(
    st.none() | st.sampled_from(list(ErrorKind)),
    st.none() | st.floats(0, 120),
    st.floats(0, 50),
)
budgets = st.none() | st.builds(
    RetryBudget, percent=st.floats(0, 100), min_retries=st.integers(0, 5), window=st.floats(1, 100)
)
PROPERTY_SETTINGS = settings(
    max_examples=400, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)


@PROPERTY_SETTINGS
@given(
    policy=policies,
    plan=st.lists(steps, min_size=1, max_size=8),
    deadline_in=st.none() | st.floats(0, 300),
    budget=budgets,
    seed=st.integers(0, 2**32),
)
def test_loop_respects_its_bounds(
    policy: RetryPolicy,
    plan: list[tuple[ErrorKind | None, float | None, float]],
    deadline_in: float | None,
    budget: RetryBudget | None,
    seed: int,
) -> None:
    clock = FakeClock()
    obs = Recorder()
    deadline = None if deadline_in is None else START + deadline_in
    calls: list[tuple[float, float | None]] = []  # (start time, timeout)
    raised: list[UpstreamError] = []

    async def attempt(timeout: float | None) -> str:
        kind, retry_after, took = plan[min(len(calls), len(plan) - 1)]
        calls.append((clock.now(), timeout))
        # A real attempt never outlives its timeout: it fails with DEADLINE_EXCEEDED instead.
        if timeout is not None and took >= timeout:
            clock.advance(timeout)
            error = err(ErrorKind.DEADLINE_EXCEEDED)
        else:
            clock.advance(took)
            if kind is None:
                return "image"
            error = err(kind, retry_after=retry_after)
        raised.append(error)
        raise error

    async def run() -> int | RetryFailure:
        try:
            outcome = await call_with_retries(
                attempt,
                policy=policy,
                budget=budget,
                deadline=deadline,
                observer=obs,
                clock=clock,
                rng=random.Random(seed),
            )
        except RetryFailure as failure:
            return failure
        return outcome.attempts

    result = asyncio.run(run())
    succeeded = not isinstance(result, RetryFailure)
    attempts = result if not isinstance(result, RetryFailure) else result.attempts

    # Attempts: never above the maximum; every one was reported.
    assert attempts == len(calls) <= policy.max_attempts
    assert obs.started == [(n, policy.max_attempts) for n in range(1, attempts + 1)]
    assert len(obs.failed) == len(raised) == attempts - (1 if succeeded else 0)
    assert [n for n, _, _ in obs.failed] == list(range(1, len(raised) + 1))
    assert [e for _, e, _ in obs.failed] == raised
    decisions = [d for _, _, d in obs.failed]
    # Every decision but a final failure's says "retry", and each retry is exactly one sleep of that delay.
    retries = [d for d in decisions if d.will_retry]
    assert [d.delay for d in retries] == clock.sleeps
    event(result.stop_reason if isinstance(result, RetryFailure) else "succeeded")
    if isinstance(result, RetryFailure):
        assert result.stop_reason in STOP_REASONS
        if attempts:
            assert len(retries) == len(decisions) - 1
            assert result.error is raised[-1]
            assert decisions[-1].reason == result.stop_reason
            assert result.retry_delay is None or decisions[-1].delay == result.retry_delay
        else:
            assert deadline == START  # only an already-passed deadline skips every attempt
    else:
        assert len(retries) == len(decisions)

    # Waits: each is the honoured upstream delay (<= max_upstream_delay) or a jittered backoff under the cap.
    for n, (error, wait) in enumerate(zip(raised, clock.sleeps, strict=False), start=1):
        assert wait >= 0
        if error.retry_after is not None:
            assert wait == error.retry_after <= policy.max_upstream_delay
        else:
            assert wait <= policy.backoff_ceiling(n) <= policy.max_backoff
        assert wait <= max(policy.max_backoff, policy.max_upstream_delay)

    # Deadline: no wait ends later than deadline - min_attempt_time, so no waiting past it; every
    # attempt starts before it with a timeout that does not reach past it.
    for start, timeout in calls:
        if deadline is not None:
            assert start < deadline
            assert timeout is not None and 0 < timeout <= deadline - start
        if policy.attempt_timeout is not None:
            assert timeout is not None and timeout <= policy.attempt_timeout
        if deadline is None and policy.attempt_timeout is None:
            assert timeout is None
    if deadline is not None:
        assert sum(clock.sleeps) <= deadline - START
        for n in range(1, len(calls)):
            # calls[n] starts right after the sleep that followed attempt n.
            assert calls[n][0] + policy.min_attempt_time < deadline

    # Kinds: never-retried kinds end the loop; once-kinds fail at most twice.
    for error in raised[:-1]:
        assert error.kind not in NEVER_KINDS
    for kind in ONCE_KINDS:
        assert sum(e.kind is kind for e in raised) <= 2

    if budget is not None:
        # Each retry needed room in the budget; only failed retries are counted.
        failed_retries = sum(1 for e in raised[1:] if classify(e).retryable)
        assert budget.failed_retries <= failed_retries
        if any(d.reason == "retry_budget" for d in decisions):
            assert not budget.allow_retry()
