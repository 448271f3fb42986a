"""Client-side retries, shared by both clients: the policy and one call's bookkeeping."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import grpc

from imagegen.errors import ImagegenError, QuotaExhaustedError, from_grpc_error, reason_name
from imagegen.v1.error_reason_pb2 import ErrorReason

__all__ = ["Attempts", "ClientRetry"]

#: Reasons that mean the server rejected the call before doing any upstream work.
_REJECTED_BEFORE_WORK = frozenset(
    reason_name(r)
    for r in (
        ErrorReason.ERROR_REASON_SHUTTING_DOWN,
        ErrorReason.ERROR_REASON_OVERLOADED,
        ErrorReason.ERROR_REASON_MEMORY_OVERLOADED,
        ErrorReason.ERROR_REASON_CALLER_QUOTA_EXCEEDED,
        ErrorReason.ERROR_REASON_CIRCUIT_OPEN,
    )
)
_UPSTREAM_TIMEOUT = reason_name(ErrorReason.ERROR_REASON_UPSTREAM_TIMEOUT)

#: Codes worth retrying when the request carries a request id (the server then
#: deduplicates, so a retry never pays for a second generation).
_RETRYABLE_WITH_ID = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED}
)


@dataclass(frozen=True, slots=True)
class ClientRetry:
    """Optional client-side retries. Off unless passed as ``retry=`` to a client.

    The server already retries its upstream (Gemini) calls, so the client only
    retries where a second attempt is safe and cannot cost a second paid
    generation:

    * **Always:** a call the server rejected before any upstream work: reason
      ``SHUTTING_DOWN``, ``OVERLOADED`` or ``MEMORY_OVERLOADED`` (the server's
      limits), ``CALLER_QUOTA_EXCEEDED`` (your quota) or ``CIRCUIT_OPEN`` (the
      model's circuit breaker), and ``UNAVAILABLE`` without details (the server
      could not be reached).
    * **Only when the call has a** ``request_id``: any retryable code as well:
      ``UNAVAILABLE``, ``RESOURCE_EXHAUSTED`` (not ``UPSTREAM_QUOTA_EXHAUSTED``),
      ``ABORTED``, and ``DEADLINE_EXCEEDED`` with reason ``UPSTREAM_TIMEOUT``. The
      server deduplicates by request id, so a retry joins or reuses the first
      generation.
    * **Streams** are retried only before their first event; once an event has
      arrived, errors are raised to the caller.

    The wait before attempt *n+1* is the server's ``RetryInfo`` delay when it
    sent one, otherwise ``min(initial_backoff * backoff_multiplier**(n-1),
    max_backoff)`` reduced by up to ``jitter`` (a fraction). A ``RetryInfo`` delay
    longer than ``max_retry_after`` is not waited for: the error is raised. The
    call's ``timeout`` covers all attempts and waits together; no retry starts
    if its wait would pass the deadline.
    """

    #: Total attempts, the first included (1 disables retries).
    max_attempts: int = 3
    #: Wait before the first retry, in seconds.
    initial_backoff: float = 0.5
    #: Upper bound of the computed backoff, in seconds.
    max_backoff: float = 10.0
    #: Growth factor of the backoff per attempt.
    backoff_multiplier: float = 2.0
    #: Random reduction of the computed backoff, as a fraction in [0, 1].
    jitter: float = 0.2
    #: Longest server-suggested ``RetryInfo`` delay the client will wait, in seconds.
    max_retry_after: float = 60.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.initial_backoff < 0 or self.max_backoff < 0 or self.backoff_multiplier < 1:
            raise ValueError("backoffs must be >= 0 and backoff_multiplier >= 1")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError("jitter must be between 0 and 1")

    def is_retryable(self, error: ImagegenError, *, idempotent: bool) -> bool:
        """Whether ``error`` may be retried under the rules above."""
        if error.reason in _REJECTED_BEFORE_WORK:
            return True
        if error.code is grpc.StatusCode.UNAVAILABLE and not error.reason:
            return True
        if not idempotent or isinstance(error, QuotaExhaustedError):
            return False
        if error.code in _RETRYABLE_WITH_ID:
            return True
        return error.code is grpc.StatusCode.DEADLINE_EXCEEDED and error.reason == _UPSTREAM_TIMEOUT

    def backoff(self, attempt: int) -> float:
        """The computed wait after failed attempt number ``attempt`` (1-based), jitter applied."""
        base = min(self.initial_backoff * self.backoff_multiplier ** max(0, attempt - 1), self.max_backoff)
        return base * (1.0 - self.jitter * random.random())

    def next_delay(
        self, error: ImagegenError, *, attempt: int, idempotent: bool, remaining: float | None
    ) -> float | None:
        """Seconds to wait before retrying after failed attempt ``attempt``, or ``None`` to give up.

        ``remaining`` is the time left before the call's deadline (``None``: no deadline).
        """
        if attempt >= self.max_attempts or not self.is_retryable(error, idempotent=idempotent):
            return None
        if error.retry_after is not None:
            if error.retry_after > self.max_retry_after:
                return None
            delay = error.retry_after
        else:
            delay = self.backoff(attempt)
        if remaining is not None and delay >= remaining:
            return None
        return delay


class Attempts:
    """The retry bookkeeping of one call: attempt count, deadline and the give-up decision.

    Shared by the sync and async clients, which keep the I/O (the call and the wait,
    blocking or awaited)::

        attempts = Attempts(policy, idempotent=spec.idempotent, timeout=timeout)
        while True:
            try:
                return method(request, timeout=attempts.remaining(), metadata=metadata)
            except grpc.RpcError as err:
                delay = attempts.retry_delay(err)  # raises the typed error when giving up
            time.sleep(delay)
    """

    def __init__(self, policy: ClientRetry, *, idempotent: bool, timeout: float | None) -> None:
        self._policy = policy
        self._idempotent = idempotent
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._attempt = 1

    def remaining(self) -> float | None:
        """Seconds left before the call's deadline (``None``: no deadline), the next attempt's timeout."""
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def retry_delay(self, err: grpc.RpcError, *, after_events: bool = False) -> float:
        """Seconds to wait before the next attempt; raises ``err`` as an :class:`ImagegenError` to give up.

        ``after_events``: the failed attempt was a stream that already delivered
        events; it is never retried.
        """
        error = from_grpc_error(err)
        delay = None
        if not after_events:
            delay = self._policy.next_delay(
                error, attempt=self._attempt, idempotent=self._idempotent, remaining=self.remaining()
            )
        if delay is None:
            raise error from err
        self._attempt += 1
        return delay
