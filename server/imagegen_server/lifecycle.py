"""What happens to a generation, reported to whoever watches (metrics, logs, breakers).

The pipeline reports each happening of a request's life to one
:class:`GenerationObserver` and never counts or gauges anything itself;
:class:`imagegen_server.observability.Metrics` is one observer, and
:class:`ObserverGroup` fans out to several. Every method has a no-op default,
so an observer overrides only what it watches and a new happening can be added
without touching existing observers.

Observers are called synchronously from the request's task: they must be
quick, must not block and must not raise.
"""

from __future__ import annotations

from collections.abc import Iterable

from imagegen_server.breaker import CircuitState
from imagegen_server.gemini.errors import UpstreamError
from imagegen_server.gemini.types import UpstreamResult
from imagegen_server.retry import RetryDecision


class GenerationObserver:
    """Receives a generation's lifecycle; every method defaults to doing nothing.

    ``model`` is the upstream model the happening concerns.
    """

    def attempt_started(self, model: str, attempt: int, max_attempts: int) -> None:
        """Upstream attempt ``attempt`` (1-based) of at most ``max_attempts`` begins."""

    def attempt_failed(self, model: str, attempt: int, error: UpstreamError, decision: RetryDecision) -> None:
        """An attempt failed with ``error``; ``decision`` says whether and why (not) it is retried."""

    def upstream_answered(self, model: str, attempt: int, result: UpstreamResult) -> None:
        """Attempt ``attempt`` returned ``result`` (the model version that answered, usage); reported just
        before :meth:`attempt_succeeded`."""

    def attempt_succeeded(self, model: str, attempt: int) -> None:
        """Attempt ``attempt`` returned an image."""

    def retry_waiting(self, model: str, attempt: int, delay: float) -> None:
        """After failed attempt ``attempt``, the next one starts in ``delay`` seconds."""

    def generation_done(self, model: str, attempts: int, elapsed: float) -> None:
        """The request got its image after ``attempts`` attempts, ``elapsed`` seconds after it arrived."""

    def generation_failed(
        self, model: str, attempts: int, error: UpstreamError, stop_reason: str, elapsed: float
    ) -> None:
        """The retry loop gave up: ``error`` was the last failure, ``stop_reason`` why no retry followed."""

    def model_fallback(self, from_model: str, to_model: str, reason: str) -> None:
        """A request moved from ``from_model`` to ``to_model`` (``reason``: unavailable, rate_limited, circuit_open)."""

    def circuit_changed(self, model: str, state: CircuitState, retry_after: float) -> None:
        """``model``'s circuit breaker moved to ``state`` (when open: the probe is ``retry_after`` seconds away)."""


class ObserverGroup(GenerationObserver):
    """Reports every happening to each of ``observers``, in order."""

    def __init__(self, observers: Iterable[GenerationObserver]) -> None:
        self._observers = tuple(observers)

    def attempt_started(self, model: str, attempt: int, max_attempts: int) -> None:
        """Fan out."""
        for observer in self._observers:
            observer.attempt_started(model, attempt, max_attempts)

    def attempt_failed(self, model: str, attempt: int, error: UpstreamError, decision: RetryDecision) -> None:
        """Fan out."""
        for observer in self._observers:
            observer.attempt_failed(model, attempt, error, decision)

    def upstream_answered(self, model: str, attempt: int, result: UpstreamResult) -> None:
        """Fan out."""
        for observer in self._observers:
            observer.upstream_answered(model, attempt, result)

    def attempt_succeeded(self, model: str, attempt: int) -> None:
        """Fan out."""
        for observer in self._observers:
            observer.attempt_succeeded(model, attempt)

    def retry_waiting(self, model: str, attempt: int, delay: float) -> None:
        """Fan out."""
        for observer in self._observers:
            observer.retry_waiting(model, attempt, delay)

    def generation_done(self, model: str, attempts: int, elapsed: float) -> None:
        """Fan out."""
        for observer in self._observers:
            observer.generation_done(model, attempts, elapsed)

    def generation_failed(
        self, model: str, attempts: int, error: UpstreamError, stop_reason: str, elapsed: float
    ) -> None:
        """Fan out."""
        for observer in self._observers:
            observer.generation_failed(model, attempts, error, stop_reason, elapsed)

    def circuit_changed(self, model: str, state: CircuitState, retry_after: float) -> None:
        """Fan out."""
        for observer in self._observers:
            observer.circuit_changed(model, state, retry_after)

    def model_fallback(self, from_model: str, to_model: str, reason: str) -> None:
        """Fan out."""
        for observer in self._observers:
            observer.model_fallback(from_model, to_model, reason)
