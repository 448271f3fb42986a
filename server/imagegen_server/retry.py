"""The one retry loop every RPC goes through (unary and streaming alike).

:func:`call_with_retries` runs an upstream attempt until it succeeds or the
policy says stop. It decides on the :class:`~imagegen_server.gemini.errors.ErrorKind`
of each :class:`~imagegen_server.gemini.errors.UpstreamError`:

================================  ==========================================
kind                              retried?
================================  ==========================================
RATE_LIMITED                      yes, after ``retry_after`` when upstream sent
                                  one (not at all if a quota violation is
                                  per-day)
UNAVAILABLE, DEADLINE_EXCEEDED    yes, with full-jitter exponential backoff
MALFORMED, NO_IMAGE               once (at most two attempts end in that kind)
everything else                   never (argument, precondition, signature,
                                  content, not found, auth, per-day quota)
================================  ==========================================

Every retry also needs an attempt left, an upstream delay no longer than
``max_upstream_delay``, time before the caller's deadline for the wait plus a
minimal attempt, and room in the model's :class:`RetryBudget`. When any of
these is missing the loop raises :class:`RetryFailure` at once, carrying the
delay a later retry would need so the gRPC layer can put it in ``RetryInfo``,
and why it stopped (one of :data:`STOP_REASONS`).

Time and randomness are injected (:class:`Clock`, :class:`random.Random`) so
tests run without real sleeping and reproduce exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Final, Generic, NoReturn, Protocol, TypeVar, assert_never

from imagegen_server.breaker import ModelCircuit
from imagegen_server.gemini.errors import ErrorKind, UpstreamError

__all__ = [
    "MONOTONIC_CLOCK",
    "STOP_REASONS",
    "Clock",
    "MonotonicClock",
    "RetryBudget",
    "RetryClassification",
    "RetryDecision",
    "RetryFailure",
    "RetryObserver",
    "RetryOutcome",
    "RetryPolicy",
    "call_with_retries",
    "classify",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Stop reasons (RetryDecision.reason / RetryFailure.stop_reason): the names of
# imagegen.v1.RetryStopReason without prefix, in lower case. Plain strings so they
# go straight into logs, metrics labels and the ErrorInfo metadata ``stopReason``.
#: Not a stop: the decision to retry.
RETRYABLE: Final = "retryable"
#: A retry cannot fix it (argument, content, per-day quota...).
NOT_RETRYABLE: Final = "not_retryable"
#: The policy's attempts are used up (or the one retry a malformed/no-image answer gets).
ATTEMPTS_EXHAUSTED: Final = "attempts_exhausted"
#: The wait would pass the caller's deadline, or is longer than the server waits for upstream.
DEADLINE: Final = "deadline"
#: The model's :class:`RetryBudget` allows no further retry.
RETRY_BUDGET: Final = "retry_budget"
#: The model's circuit breaker is open.
CIRCUIT_OPEN: Final = "circuit_open"

#: Every reason a retry loop stops with.
STOP_REASONS: Final = frozenset({NOT_RETRYABLE, ATTEMPTS_EXHAUSTED, DEADLINE, RETRY_BUDGET, CIRCUIT_OPEN})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently to retry one request.

    Full jitter: the wait before retry ``n`` (after attempt ``n`` failed) is
    ``uniform(0, min(max_backoff, initial_backoff * backoff_multiplier ** (n - 1)))``,
    unless upstream asked for a specific delay, which is honoured exactly.
    """

    #: Attempts in total, including the first.
    max_attempts: int = 3
    #: Ceiling of the first computed wait, in seconds.
    initial_backoff: float = 1.0
    #: Growth of the ceiling per attempt.
    backoff_multiplier: float = 2.0
    #: Cap on one computed (jittered) wait, in seconds.
    max_backoff: float = 20.0
    #: Longest upstream-requested delay (RetryInfo / Retry-After) we wait for;
    #: a longer one fails the request at once, carrying the delay to the caller.
    max_upstream_delay: float = 60.0
    #: Timeout of one attempt, in seconds; ``None`` for none (the deadline still clips it).
    attempt_timeout: float | None = 120.0
    #: Least time an attempt needs to be worth starting: a retry whose wait would
    #: leave less than this before the deadline is not made. Also absorbs the
    #: few milliseconds a real sleep may overshoot.
    min_attempt_time: float = 0.05

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.initial_backoff < 0 or self.max_backoff < 0 or self.max_upstream_delay < 0:
            raise ValueError("backoffs and max_upstream_delay must be >= 0")
        if self.backoff_multiplier < 1:
            raise ValueError(f"backoff_multiplier must be >= 1, got {self.backoff_multiplier}")
        if self.attempt_timeout is not None and self.attempt_timeout <= 0:
            raise ValueError(f"attempt_timeout must be > 0 or None, got {self.attempt_timeout}")
        if self.min_attempt_time < 0:
            raise ValueError(f"min_attempt_time must be >= 0, got {self.min_attempt_time}")

    def backoff_ceiling(self, attempt: int) -> float:
        """The upper bound of the jittered wait after failed attempt ``attempt`` (1-based)."""
        try:
            growth = self.initial_backoff * self.backoff_multiplier ** (attempt - 1)
        except OverflowError:
            # Huge attempt numbers: the cap applies anyway.
            growth = math.inf
        return min(self.max_backoff, growth)


class RetryBudget:
    """Bounds the retries that fail, as a share of recent requests, for one upstream model.

    Envoy's retry budget lets active retries reach ``budget_percent`` of active
    requests, never fewer than ``min_retry_concurrency``; gRPC's A6 keeps a token
    bucket refilled only by successes. Neither fits a gateway serving few, slow,
    expensive requests whose retries mostly wait (RetryInfo, backoff): A6 turns
    retries off after a handful of failures on a quiet server, and a
    concurrency share counts every waiting request as load. This budget counts
    over time instead: within the last ``window`` seconds, retries whose attempt
    failed may number at most ``percent`` % of the requests started plus
    ``min_retries`` (the floor that keeps a quiet gateway retrying).

    The retries of a request that succeeds cost nothing (:meth:`refund`): they
    are what the budget exists to allow, and they prove upstream is serving. So
    transient faults never use it up, however many came before; in a full
    outage every retry fails, and upstream
    attempts over any ``window`` stay at most ``(1 + percent/100) x requests +
    min_retries`` (plus the retries already under way when it ran out, at most
    one per concurrency slot). As in gRPC, only failures of retryable kinds are
    counted: a blocked prompt says nothing about upstream health.

    Time comes from ``clock`` (injected for tests). Meant to be used within one
    event loop; it does no locking.
    """

    __slots__ = ("_clock", "_failed_retries", "_min_retries", "_percent", "_requests", "_window")

    def __init__(
        self,
        percent: float = 20.0,
        min_retries: int = 20,
        window: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if percent < 0:
            raise ValueError(f"percent must be >= 0, got {percent}")
        if min_retries < 0:
            raise ValueError(f"min_retries must be >= 0, got {min_retries}")
        if window <= 0:
            raise ValueError(f"window must be > 0, got {window}")
        self._percent = float(percent)
        self._min_retries = int(min_retries)
        self._window = float(window)
        self._clock = clock
        #: Start times of the requests, and end times of the failed retries, within the window.
        self._requests: deque[float] = deque()
        self._failed_retries: deque[float] = deque()

    def _prune(self, now: float) -> None:
        horizon = now - self._window
        for times in (self._requests, self._failed_retries):
            while times and times[0] <= horizon:
                times.popleft()

    @property
    def requests(self) -> int:
        """Requests started within the window."""
        self._prune(self._clock())
        return len(self._requests)

    @property
    def failed_retries(self) -> int:
        """Retries that failed within the window."""
        self._prune(self._clock())
        return len(self._failed_retries)

    @property
    def allowance(self) -> float:
        """Failed retries the window may hold before retries stop."""
        return self._min_retries + self._percent / 100.0 * self.requests

    def request_started(self) -> None:
        """A request makes its first attempt."""
        now = self._clock()
        self._prune(now)
        self._requests.append(now)

    def retry_failed(self) -> float:
        """A retry (an attempt after the first) failed with a retryable kind; returns its receipt for :meth:`refund`."""
        now = self._clock()
        self._prune(now)
        self._failed_retries.append(now)
        return now

    def refund(self, receipts: Iterable[float]) -> None:
        """The request whose failed retries these were succeeded after all: they cost nothing."""
        for receipt in receipts:
            with contextlib.suppress(ValueError):  # already out of the window
                self._failed_retries.remove(receipt)

    def allow_retry(self) -> bool:
        """Whether a retry may be made now."""
        return self.failed_retries < self.allowance

    def __repr__(self) -> str:
        return (
            f"RetryBudget(failed_retries={self.failed_retries}, requests={self.requests}, "
            f"percent={self._percent:g}, min_retries={self._min_retries}, window={self._window:g})"
        )


class Clock(Protocol):
    """Where the retry loop reads the time and waits; tests inject a fake."""

    def now(self) -> float:
        """Seconds on a monotonic timeline (deadlines are on the same one)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds``; must stay cancellable."""
        ...


@dataclass(frozen=True, slots=True)
class MonotonicClock:
    """The real clock: :func:`time.monotonic` and :func:`asyncio.sleep`."""

    def now(self) -> float:
        """Seconds from :func:`time.monotonic`."""
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        """:func:`asyncio.sleep` (cancellation propagates)."""
        await asyncio.sleep(seconds)


#: The clock used unless one is injected.
MONOTONIC_CLOCK: Final[Clock] = MonotonicClock()


@dataclass(frozen=True, slots=True)
class RetryDecision:
    """What the loop decided after one failed attempt."""

    #: True when another attempt follows after ``delay`` seconds.
    will_retry: bool
    #: Seconds until the next attempt; when stopping, the delay a retry would have
    #: needed (0.0 when none is known or none would help).
    delay: float
    #: ``"retryable"`` when retrying, else why not: one of :data:`STOP_REASONS`.
    reason: str


class RetryObserver(Protocol):
    """Receives every step of the loop, e.g. to forward it on a stream.

    Calls happen before any waiting, so a ``will_retry`` decision reaches the
    caller when the wait starts, not when it ends.
    """

    def attempt_started(self, attempt: int, max_attempts: int) -> None:
        """Attempt ``attempt`` (1-based) of at most ``max_attempts`` is about to start."""
        ...

    def attempt_failed(self, attempt: int, error: UpstreamError, decision: RetryDecision) -> None:
        """Attempt ``attempt`` failed with ``error``; ``decision`` says what happens next."""
        ...


class RetryFailure(Exception):
    """The loop gave up; ``error`` is the last attempt's failure.

    ``retry_delay`` is the delay the caller should wait before trying again
    (for ``google.rpc.RetryInfo``), when one is known: the wait the loop did
    not make because of the deadline, the budget or the cap on upstream
    delays, or upstream's own delay when attempts ran out. ``None`` when
    retrying would not help or no delay is known.
    """

    def __init__(
        self,
        error: UpstreamError,
        *,
        attempts: int,
        retry_delay: float | None,
        stop_reason: str,
    ) -> None:
        kind = error.kind.name
        super().__init__(f"gave up after {attempts} attempt(s) ({stop_reason}): {kind}: {error.message}")
        self.error = error
        self.attempts = attempts
        self.retry_delay = retry_delay
        self.stop_reason = stop_reason


@dataclass(frozen=True, slots=True)
class RetryOutcome(Generic[T]):
    """A successful result and how many attempts it took."""

    value: T
    attempts: int


@dataclass(frozen=True, slots=True)
class RetryClassification:
    """Whether an error kind may be retried, and how many times at most."""

    retryable: bool
    #: Most retries after failures of this kind; ``None`` for "as the policy allows".
    max_retries: int | None = None


_RETRY = RetryClassification(retryable=True)
_RETRY_ONCE = RetryClassification(retryable=True, max_retries=1)
_NEVER = RetryClassification(retryable=False, max_retries=0)


def classify(error: UpstreamError) -> RetryClassification:
    """Whether ``error`` may be retried and how often (see the module's table)."""
    match error.kind:
        case ErrorKind.RATE_LIMITED:
            # A per-day quota resets hours from now: a retry within this request
            # cannot succeed. Normally the client already says QUOTA_EXHAUSTED;
            # checking the violations too keeps a misclassified 429 from looping.
            if any(v.per_day for v in error.quota_violations):
                return _NEVER
            return _RETRY
        case ErrorKind.UNAVAILABLE | ErrorKind.DEADLINE_EXCEEDED:
            return _RETRY
        case ErrorKind.CIRCUIT_OPEN:
            # Made by the loop itself when the breaker refuses; retrying now would be refused too.
            return _NEVER
        case ErrorKind.MALFORMED | ErrorKind.NO_IMAGE:
            # Often a one-off (a truncated body, a model that answered in text);
            # a second identical failure means the request itself provokes it.
            return _RETRY_ONCE
        case (
            ErrorKind.INVALID_ARGUMENT
            | ErrorKind.FAILED_PRECONDITION
            | ErrorKind.MISSING_THOUGHT_SIGNATURE
            | ErrorKind.CONTENT_BLOCKED
            | ErrorKind.NOT_FOUND
            | ErrorKind.AUTH
            | ErrorKind.QUOTA_EXHAUSTED
        ):
            # The same request gets the same answer: retrying only adds load.
            return _NEVER
        case _:
            # mypy --strict fails here if a new ErrorKind is not placed above.
            assert_never(error.kind)


def _stop(reason: str, retry_delay: float | None) -> tuple[RetryDecision, float | None]:
    return RetryDecision(will_retry=False, delay=retry_delay or 0.0, reason=reason), retry_delay


def _decide(
    error: UpstreamError,
    *,
    attempt: int,
    failures_of_kind: int,
    policy: RetryPolicy,
    budget: RetryBudget | None,
    deadline: float | None,
    now: float,
    rng: random.Random,
) -> tuple[RetryDecision, float | None]:
    """The decision after failed attempt ``attempt`` and, when stopping, the caller's retry delay.

    Checks run from "retrying cannot help" to "retrying could help, later", so
    the reason reported is the most fundamental one.
    """
    classification = classify(error)
    if not classification.retryable:
        return _stop(NOT_RETRYABLE, None)
    if classification.max_retries is not None and failures_of_kind > classification.max_retries:
        # The kind's own retry was made and failed the same way: its attempts are used up.
        return _stop(ATTEMPTS_EXHAUSTED, None)
    upstream_delay = None if error.retry_after is None else max(0.0, error.retry_after)
    if attempt >= policy.max_attempts:
        # Only upstream's own delay is worth passing on; a jittered guess is not.
        return _stop(ATTEMPTS_EXHAUSTED, upstream_delay)
    if upstream_delay is not None:
        if upstream_delay > policy.max_upstream_delay:
            # Longer than this server waits for upstream: the caller may wait it out instead.
            logger.info(
                "upstream asked for %.1fs, more than the %.1fs we wait", upstream_delay, policy.max_upstream_delay
            )
            return _stop(DEADLINE, upstream_delay)
        wait = upstream_delay
    else:
        wait = rng.uniform(0.0, policy.backoff_ceiling(attempt))
    if deadline is not None and now + wait + policy.min_attempt_time >= deadline:
        # Sleeping would only burn the caller's remaining time; fail now and let
        # them decide, telling them how long we would have waited. (>=: the next
        # attempt needs some time left even when min_attempt_time is 0.)
        return _stop(DEADLINE, wait)
    if budget is not None and not budget.allow_retry():
        return _stop(RETRY_BUDGET, wait)
    return RetryDecision(will_retry=True, delay=wait, reason=RETRYABLE), None


async def call_with_retries(
    attempt: Callable[[float | None], Awaitable[T]],
    *,
    policy: RetryPolicy,
    budget: RetryBudget | None = None,
    circuit: ModelCircuit | None = None,
    deadline: float | None = None,
    observer: RetryObserver | None = None,
    clock: Clock = MONOTONIC_CLOCK,
    rng: random.Random | None = None,
) -> RetryOutcome[T]:
    """Run ``attempt`` until it succeeds or the policy says stop.

    ``attempt(timeout)`` gets the per-attempt timeout: ``policy.attempt_timeout``
    clipped to the time left before ``deadline`` (absolute, on ``clock``'s
    timeline); ``None`` only when both are unset. It raises
    :class:`UpstreamError` on failure. Any other exception, notably
    :class:`asyncio.CancelledError`, propagates unchanged and is never retried;
    a cancellation during the wait propagates too.

    With a ``circuit``, every attempt first asks the model's breaker: when it
    refuses, the loop stops with ``circuit_open`` and a synthetic CIRCUIT_OPEN
    error (reported to the observer as a failed attempt that was never
    started), and a retry whose wait would end before the circuit lets calls
    through again is not waited for. Each outcome is reported to the circuit.

    Returns the value and the number of attempts made. Raises
    :class:`RetryFailure` when giving up, with ``attempts=0`` and a synthetic
    DEADLINE_EXCEEDED error if the deadline had passed before the first attempt.
    """
    if rng is None:
        rng = random.Random()
    failures_by_kind: dict[ErrorKind, int] = {}
    last_error: UpstreamError | None = None
    number = 0
    #: This request's failed retries, refunded if it succeeds.
    receipts: list[float] = []
    while True:
        number += 1
        timeout = policy.attempt_timeout
        if deadline is not None:
            remaining = deadline - clock.now()
            if remaining <= 0:
                # Reached only before the first attempt, or when a real sleep
                # overshot the min_attempt_time margin: no time for an attempt.
                expired = last_error or UpstreamError(
                    ErrorKind.DEADLINE_EXCEEDED, "the caller's deadline passed before the first attempt"
                )
                raise RetryFailure(expired, attempts=number - 1, retry_delay=None, stop_reason=DEADLINE)
            timeout = remaining if timeout is None else min(timeout, remaining)
        probe = False
        if circuit is not None:
            admission = await circuit.admit()
            if not admission.allowed:
                _circuit_refused(number, circuit, admission.retry_after, observer)
            probe = admission.probe
        if budget is not None and number == 1:
            budget.request_started()
        if observer is not None:
            observer.attempt_started(number, policy.max_attempts)
        try:
            value = await attempt(timeout)
        except UpstreamError as error:
            if circuit is not None:
                await circuit.attempt_done(error, probe=probe)
            last_error = error
            failures_by_kind[error.kind] = failures_by_kind.get(error.kind, 0) + 1
            if budget is not None and number > 1 and classify(error).retryable:
                # A retry that failed: load that did not help (yet).
                receipts.append(budget.retry_failed())
            decision, retry_delay = _decide(
                error,
                attempt=number,
                failures_of_kind=failures_by_kind[error.kind],
                policy=policy,
                budget=budget,
                deadline=deadline,
                now=clock.now(),
                rng=rng,
            )
            if decision.will_retry and circuit is not None:
                blocked = await circuit.blocked_for()
                if blocked is not None and blocked > decision.delay:
                    # The circuit opened (maybe on this very failure): waiting would only meet it.
                    decision, retry_delay = _stop(CIRCUIT_OPEN, blocked)
            _log(number, policy.max_attempts, error, decision)
            # Report before sleeping so a stream can say "retrying in 4.0 s" now.
            if observer is not None:
                observer.attempt_failed(number, error, decision)
            if not decision.will_retry:
                if circuit is not None:
                    await circuit.request_failed(error, counts=_counts_against_circuit(error, decision.reason))
                raise RetryFailure(
                    error, attempts=number, retry_delay=retry_delay, stop_reason=decision.reason
                ) from error
            await clock.sleep(decision.delay)
            continue
        except BaseException:
            if probe and circuit is not None:
                # Cancelled mid-probe: let the next request probe. (In-memory: completes without suspending.)
                await circuit.probe_abandoned()
            raise
        if circuit is not None:
            await circuit.attempt_done(None, probe=probe)
        if budget is not None and receipts:
            budget.refund(receipts)
        if number > 1:
            logger.info("upstream attempt %d/%d succeeded", number, policy.max_attempts)
        return RetryOutcome(value=value, attempts=number)


def _circuit_refused(
    number: int, circuit: ModelCircuit, retry_after: float, observer: RetryObserver | None
) -> NoReturn:
    """Stop before attempt ``number``: the model's circuit is open."""
    error = UpstreamError(
        ErrorKind.CIRCUIT_OPEN,
        f"{circuit.model} failed repeatedly; its circuit breaker is open, "
        f"the next call is let through in {retry_after:.1f}s",
        model=circuit.model,
        retry_after=retry_after,
    )
    decision = RetryDecision(will_retry=False, delay=retry_after, reason=CIRCUIT_OPEN)
    logger.info("circuit of %s is open: no attempt %d; giving up (circuit_open)", circuit.model, number)
    if observer is not None:
        observer.attempt_failed(number, error, decision)
    raise RetryFailure(error, attempts=number - 1, retry_delay=retry_after, stop_reason=CIRCUIT_OPEN)


def _counts_against_circuit(error: UpstreamError, stop_reason: str) -> bool:
    """Whether a request that stopped this way shows the model overloaded (not the caller's short deadline)."""
    if stop_reason in (ATTEMPTS_EXHAUSTED, RETRY_BUDGET):
        return True
    return stop_reason == DEADLINE and error.kind in (ErrorKind.UNAVAILABLE, ErrorKind.RATE_LIMITED)


def _log(attempt: int, max_attempts: int, error: UpstreamError, decision: RetryDecision) -> None:
    """One concise line per decision; the error message is left to the final status."""
    status = f" http={error.http_status}" if error.http_status is not None else ""
    if decision.will_retry:
        logger.info(
            "upstream attempt %d/%d failed: %s%s; retrying in %.2fs",
            attempt,
            max_attempts,
            error.kind.name,
            status,
            decision.delay,
        )
    else:
        logger.info(
            "upstream attempt %d/%d failed: %s%s; giving up (%s)",
            attempt,
            max_attempts,
            error.kind.name,
            status,
            decision.reason,
        )
