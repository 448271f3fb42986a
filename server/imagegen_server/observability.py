"""Access logs and Prometheus metrics for every RPC, as one server interceptor.

Each RPC gets one log line (method, status code, duration, caller, request and
generation ids; never request bodies or the API key) and is counted in a
per-server :class:`Metrics` registry, served over HTTP by :func:`metrics_app`.
:class:`Metrics` also observes the pipeline's generation lifecycle
(:mod:`imagegen_server.lifecycle`) to count upstream attempts and retry waits.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextvars import ContextVar
from typing import Any

import grpc
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from imagegen_server.breaker import CircuitState
from imagegen_server.caller import current_caller
from imagegen_server.gemini.errors import ErrorKind, UpstreamError
from imagegen_server.lifecycle import GenerationObserver
from imagegen_server.quoting import cut, escape_controls
from imagegen_server.retry import RetryDecision

log = logging.getLogger("imagegen_server.access")

#: The generation the current task works on. Each RPC runs in its own task, and
#: tasks it starts (the retry loop) inherit a copy, so every log line of a
#: request can name it without passing ids through every function.
_GENERATION: ContextVar[str] = ContextVar("imagegen_generation", default="-")


def bind_generation(generation_id: str) -> None:
    """Tag log records of the current RPC (and tasks it starts) with ``generation_id``."""
    _GENERATION.set(generation_id)


class GenerationLogFilter(logging.Filter):
    """Adds ``%(generation)s`` to every record: the id of the generation being served, or ``-``."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Annotate the record; never drops it."""
        record.generation = _GENERATION.get()
        return True


class SafeLogFilter(logging.Filter):
    """Makes every record safe to write: control characters escaped, so one record is one line
    (a caller's newline cannot forge a log line), and the given secrets redacted (defence in depth:
    the API key is scrubbed where upstream text enters, this catches whatever slips past).

    Tracebacks keep their lines; only secrets are taken out of them.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        # Short values are test placeholders; redacting them would mangle ordinary words.
        self._secrets = tuple(secret for secret in secrets if len(secret) >= 8)

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "[REDACTED]")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record's message (and traceback text) in place; never drops it."""
        record.msg, record.args = escape_controls(self._redact(record.getMessage())), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self._redact(record.stack_info)
        return True


class Metrics(GenerationObserver):
    """The server's Prometheus metrics, in their own registry (no global state).

    The interceptor counts RPCs; the generation counters are fed by observing
    the pipeline (it reports happenings, this class decides what to count).
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.rpcs = Counter(
            "imagegen_rpcs",
            "Finished RPCs by method, status code and caller (a tokens-file name, anonymous or other).",
            ["method", "code", "caller"],
            registry=self.registry,
        )
        self.rpc_seconds = Histogram(
            "imagegen_rpc_duration_seconds",
            "RPC wall time by method.",
            ["method"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160),
            registry=self.registry,
        )
        self.in_flight = Gauge("imagegen_rpcs_in_flight", "RPCs being served.", ["method"], registry=self.registry)
        self.upstream_attempts = Counter(
            "imagegen_upstream_attempts",
            "Upstream Gemini attempts by outcome (ok or the failure kind).",
            ["outcome"],
            registry=self.registry,
        )
        self.retry_wait_seconds = Counter(
            "imagegen_retry_wait_seconds", "Seconds spent waiting between upstream attempts.", registry=self.registry
        )
        self.retry_stops = Counter(
            "imagegen_retry_stops",
            "Upstream failures after which no retry followed, by model and stop reason "
            "(attempts_exhausted, deadline, retry_budget, circuit_open, not_retryable).",
            ["model", "reason"],
            registry=self.registry,
        )
        self.circuit_state = Gauge(
            "imagegen_circuit_state",
            "Circuit breaker state per upstream model: 0 closed, 1 half-open (probing), 2 open (failing fast).",
            ["model"],
            registry=self.registry,
        )
        self.circuit_transitions = Counter(
            "imagegen_circuit_transitions",
            "Circuit breaker state changes, by model and the state entered.",
            ["model", "state"],
            registry=self.registry,
        )
        self.model_fallbacks = Counter(
            "imagegen_model_fallbacks",
            "Requests moved to a fallback model, by the model given up on, the fallback and why.",
            ["from_model", "to_model", "reason"],
            registry=self.registry,
        )
        self.generations = Counter(
            "imagegen_generations",
            "Generations that reached upstream, by model and outcome (ok or the last failure kind).",
            ["model", "outcome"],
            registry=self.registry,
        )
        self.shared_state_errors = Counter(
            "imagegen_shared_state_errors",
            "Shared-state operations Redis did not serve (unreachable, timed out, or resting after a failure),"
            " by operation (idempotency, quota, breaker, ping); each was served by the fail mode instead.",
            ["operation"],
            registry=self.registry,
        )

    def shared_state_error(self, operation: str) -> None:
        """Count a shared-state operation Redis did not serve."""
        self.shared_state_errors.labels(operation).inc()

    def attempt_failed(self, model: str, attempt: int, error: UpstreamError, decision: RetryDecision) -> None:
        """Count the failed attempt by its kind and, when no retry follows, why."""
        if error.kind is not ErrorKind.CIRCUIT_OPEN:  # an attempt the breaker did not let through
            self.upstream_attempts.labels(error.kind.name).inc()
        if not decision.will_retry:
            self.retry_stops.labels(model, decision.reason).inc()

    def attempt_succeeded(self, model: str, attempt: int) -> None:
        """Count the successful attempt."""
        self.upstream_attempts.labels("ok").inc()

    def retry_waiting(self, model: str, attempt: int, delay: float) -> None:
        """Add the backoff about to be waited."""
        self.retry_wait_seconds.inc(delay)

    def generation_done(self, model: str, attempts: int, elapsed: float) -> None:
        """Count a generation that got its image."""
        self.generations.labels(model, "ok").inc()

    def generation_failed(
        self, model: str, attempts: int, error: UpstreamError, stop_reason: str, elapsed: float
    ) -> None:
        """Count a generation the retry loop gave up on, by its last failure."""
        self.generations.labels(model, error.kind.name).inc()

    def model_fallback(self, from_model: str, to_model: str, reason: str) -> None:
        """Count the move to a fallback model."""
        self.model_fallbacks.labels(from_model, to_model, reason).inc()

    def circuit_changed(self, model: str, state: CircuitState, retry_after: float) -> None:
        """Track the model's circuit state."""
        self.circuit_state.labels(model).set(_CIRCUIT_STATE_VALUE[state])
        self.circuit_transitions.labels(model, state.value).inc()

    def exposition(self) -> bytes:
        """The metrics in Prometheus text format."""
        return generate_latest(self.registry)


_CIRCUIT_STATE_VALUE = {CircuitState.CLOSED: 0, CircuitState.HALF_OPEN: 1, CircuitState.OPEN: 2}


def metrics_app(metrics: Metrics) -> web.Application:
    """An aiohttp app serving ``GET /metrics``."""

    async def handle(_: web.Request) -> web.Response:
        return web.Response(body=metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", handle)
    return app


def _request_id(request: Any, metadata: tuple[tuple[str, str | bytes], ...] | None) -> str:
    options = getattr(request, "options", None)
    rid = getattr(options, "request_id", "") if options is not None else ""
    if not rid:
        rid = next((v for k, v in metadata or () if k == "x-request-id" and isinstance(v, str)), "")
    # The caller's text: one access-log line stays one line, whatever it contains.
    return escape_controls(cut(str(rid), 128))


class ObservabilityInterceptor(grpc.aio.ServerInterceptor):
    """Logs and counts every unary and server-streaming RPC."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        """Wrap the method's handler so it is logged and counted."""
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method.rsplit("/", 1)[-1]
        if handler.unary_unary is not None:
            return handler._replace(unary_unary=self._wrap_unary(method, handler.unary_unary))  # type: ignore[attr-defined, no-any-return]
        if handler.unary_stream is not None:
            return handler._replace(unary_stream=self._wrap_stream(method, handler.unary_stream))  # type: ignore[attr-defined, no-any-return]
        return handler

    def _wrap_unary(self, method: str, inner: Callable[..., Any]) -> Callable[..., Any]:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            started = self._start(method)
            code = "OK"
            try:
                return await inner(request, context)
            except BaseException as exc:
                code = _code_name(context, exc)
                raise
            finally:
                self._finish(method, code, started, request, context)

        return wrapper

    def _wrap_stream(self, method: str, inner: Callable[..., Any]) -> Callable[..., Any]:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            started = self._start(method)
            code = "OK"
            try:
                messages = inner(request, context)
                if inspect.isawaitable(messages):
                    # A handler that streams with context.write() (e.g. health Watch).
                    await messages
                else:
                    async for message in messages:
                        yield message
            except BaseException as exc:
                code = _code_name(context, exc)
                raise
            finally:
                self._finish(method, code, started, request, context)

        return wrapper

    def _start(self, method: str) -> float:
        self._metrics.in_flight.labels(method).inc()
        return time.monotonic()

    def _finish(
        self, method: str, code: str, started: float, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        elapsed = time.monotonic() - started
        self._metrics.in_flight.labels(method).dec()
        caller = current_caller()
        self._metrics.rpcs.labels(method, code, caller.label).inc()
        self._metrics.rpc_seconds.labels(method).observe(elapsed)
        log.info(
            "%s %s %.3fs caller=%s requestId=%s",
            method,
            code,
            elapsed,
            escape_controls(caller.name),
            _request_id(request, context.invocation_metadata()) or "-",  # type: ignore[arg-type]
        )


def _code_name(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException) -> str:
    import asyncio

    if isinstance(exc, asyncio.CancelledError):
        return "CANCELLED"
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    return "UNKNOWN"
