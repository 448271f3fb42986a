"""Access logs and Prometheus metrics for every RPC, whichever transport carries it.

:class:`RpcObserver` is what every RPC goes through: the gRPC
:class:`ObservabilityInterceptor` and the REST gateway both wrap each call in
:meth:`RpcObserver.observe`. Each RPC gets one access line (method, status
code, duration, caller, attempts, request and generation ids; never request bodies or
the API key; fields as :mod:`imagegen_server.logs` writes them) and is counted
in a per-server :class:`Metrics` registry, served over HTTP by
:func:`metrics_app`. :class:`Metrics` also observes the pipeline's generation
lifecycle (:mod:`imagegen_server.lifecycle`) to count upstream attempts and
retry waits; :class:`AttemptsRecorder` puts the attempts on the access line.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import grpc
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from imagegen_server.breaker import CircuitState
from imagegen_server.caller import current_caller
from imagegen_server.gemini.errors import ErrorKind, UpstreamError
from imagegen_server.gemini.types import UpstreamResult
from imagegen_server.lifecycle import GenerationObserver
from imagegen_server.logs import RpcLogContext, bind_rpc, current_generation, current_rpc, unbind_rpc
from imagegen_server.quoting import cut, escape_controls
from imagegen_server.retry import RetryDecision

if TYPE_CHECKING:
    from imagegen_server.tracing import Tracing

log = logging.getLogger("imagegen_server.access")


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
        self.overhead_seconds = Histogram(
            "imagegen_gateway_overhead_seconds",
            "What the gateway adds to a call that reached upstream, by method: its wall time minus the "
            "time in upstream attempts and retry backoff (queueing for a slot and sending the answer included).",
            ["method"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=self.registry,
        )
        self.upstream_attempts = Counter(
            "imagegen_upstream_attempts",
            "Upstream Gemini attempts by model and outcome (ok or the failure kind).",
            ["model", "outcome"],
            registry=self.registry,
        )
        self.upstream_seconds = Histogram(
            "imagegen_upstream_attempt_duration_seconds",
            "Wall time of each upstream attempt, by model and outcome (ok or the failure kind).",
            ["model", "outcome"],
            buckets=(0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 45, 60, 90, 120, 180),
            registry=self.registry,
        )
        self.generation_attempts = Histogram(
            "imagegen_generation_attempts",
            "Upstream attempts a finished generation took, by model and outcome (ok or the last failure kind).",
            ["model", "outcome"],
            buckets=(1, 2, 3, 4, 5, 8),
            registry=self.registry,
        )
        self.upstream_tokens = Counter(
            "imagegen_upstream_tokens",
            "Tokens Gemini reported for answered attempts, by model and kind (input, output).",
            ["model", "kind"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "imagegen_queue_depth",
            "Requests waiting for a concurrency slot (--max-concurrency); they get OVERLOADED after --queue-timeout.",
            registry=self.registry,
        )
        self.received_bytes = Counter(
            "imagegen_received_bytes",
            "Request bytes received, by method (the protobuf message over gRPC, the JSON body over REST).",
            ["method"],
            registry=self.registry,
        )
        self.sent_bytes = Counter(
            "imagegen_sent_bytes",
            "Response bytes sent, by method (protobuf messages over gRPC, JSON bodies and events over REST).",
            ["method"],
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

    def watch_queue(self, depth: Callable[[], int]) -> None:
        """Read the queue depth from ``depth`` at each scrape (the pipeline's waiting requests)."""
        self.queue_depth.set_function(depth)

    def attempt_started(self, model: str, attempt: int, max_attempts: int) -> None:
        """Start the attempt's clock (per RPC)."""
        outcome = _OUTCOME.get()
        if outcome is not None:
            outcome.attempt_started_at = time.monotonic()

    def attempt_failed(self, model: str, attempt: int, error: UpstreamError, decision: RetryDecision) -> None:
        """Count the failed attempt by its kind and, when no retry follows, why."""
        if error.kind is not ErrorKind.CIRCUIT_OPEN:  # an attempt the breaker did not let through
            self.upstream_attempts.labels(model, error.kind.name).inc()
            self._attempt_ended(model, error.kind.name)
        if not decision.will_retry:
            self.retry_stops.labels(model, decision.reason).inc()

    def upstream_answered(self, model: str, attempt: int, result: UpstreamResult) -> None:
        """Count the tokens Gemini reported."""
        self.upstream_tokens.labels(model, "input").inc(result.usage.prompt_tokens)
        self.upstream_tokens.labels(model, "output").inc(result.usage.output_tokens)

    def attempt_succeeded(self, model: str, attempt: int) -> None:
        """Count the successful attempt."""
        self.upstream_attempts.labels(model, "ok").inc()
        self._attempt_ended(model, "ok")

    def _attempt_ended(self, model: str, outcome: str) -> None:
        """Observe the attempt's duration when its start was seen (inside an RPC)."""
        rpc = _OUTCOME.get()
        if rpc is not None and rpc.attempt_started_at is not None:
            took = time.monotonic() - rpc.attempt_started_at
            self.upstream_seconds.labels(model, outcome).observe(took)
            rpc.attempt_started_at = None
            rpc.upstream_seconds += took
            rpc.upstream_attempts += 1

    def retry_waiting(self, model: str, attempt: int, delay: float) -> None:
        """Add the backoff about to be waited."""
        self.retry_wait_seconds.inc(delay)
        rpc = _OUTCOME.get()
        if rpc is not None:
            rpc.backoff_seconds += delay

    def generation_done(self, model: str, attempts: int, elapsed: float) -> None:
        """Count a generation that got its image."""
        self.generations.labels(model, "ok").inc()
        self.generation_attempts.labels(model, "ok").observe(attempts)

    def generation_failed(
        self, model: str, attempts: int, error: UpstreamError, stop_reason: str, elapsed: float
    ) -> None:
        """Count a generation the retry loop gave up on, by its last failure."""
        self.generations.labels(model, error.kind.name).inc()
        self.generation_attempts.labels(model, error.kind.name).observe(attempts)

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


class AttemptsRecorder(GenerationObserver):
    """Writes how many upstream attempts a request made into its RPC's access line."""

    def generation_done(self, model: str, attempts: int, elapsed: float) -> None:
        """Record the attempts of a generation that got its image."""
        _record_attempts(attempts)

    def generation_failed(
        self, model: str, attempts: int, error: UpstreamError, stop_reason: str, elapsed: float
    ) -> None:
        """Record the attempts of a generation that failed for good."""
        _record_attempts(attempts)


def _record_attempts(attempts: int) -> None:
    rpc = current_rpc()
    if rpc is not None:
        rpc.attempts = attempts


Metadata = Iterable[tuple[str, str | bytes]]


def request_id_of(request: Any, metadata: Metadata | None) -> str:
    """The request id a call names: ``options.request_id``, else its ``x-request-id`` metadata (128 chars)."""
    options = getattr(request, "options", None)
    rid = getattr(options, "request_id", "") if options is not None else ""
    if not rid:
        rid = next((v for k, v in metadata or () if k == "x-request-id" and isinstance(v, str)), "")
    # The caller's text: one access-log line stays one line, whatever it contains.
    return escape_controls(cut(str(rid), 128))


def trace_id_of(metadata: Metadata | None) -> str:
    """The trace id of a W3C ``traceparent`` in ``metadata`` (32 hex digits), or ``""``."""
    for key, value in metadata or ():
        if key.lower() != "traceparent" or not isinstance(value, str):
            continue
        parts = value.strip().split("-")
        if len(parts) >= 4 and len(parts[1]) == 32 and parts[1] != "0" * 32:
            try:
                int(parts[1], 16)
            except ValueError:
                return ""
            return parts[1].lower()
    return ""


class RpcObserver:
    """What every RPC goes through, whichever transport carries it (gRPC or REST).

    :meth:`observe` binds the RPC's log context, counts it in flight, and at
    its end writes the one access line and counts its code and duration.
    """

    def __init__(self, metrics: Metrics, *, log_prompts: bool = False, tracing: Tracing | None = None) -> None:
        self.metrics = metrics
        self._log_prompts = log_prompts
        self._tracing = tracing

    @contextlib.contextmanager
    def observe(
        self,
        method: str,
        request: Any,
        metadata: Metadata | None,
        *,
        transport: str = "grpc",
        span_attributes: Mapping[str, str] | None = None,
    ) -> Iterator[RpcOutcome]:
        """Observe one RPC of ``method`` (``package.Service/Method``) until the block ends.

        ``transport`` is ``grpc`` or ``rest`` (the REST gateway), for traces, and ``span_attributes``
        what the transport adds to the RPC's span (the HTTP method and path of a REST call).

        The block sets the outcome's ``code`` when it ends with an error status; an
        exception leaving the block without one counts as CANCELLED or UNKNOWN.
        """
        context = RpcLogContext(
            method=method, request_id=request_id_of(request, metadata), trace_id=trace_id_of(metadata)
        )
        outcome = RpcOutcome(context, request)
        with contextlib.ExitStack() as stack:
            span = None
            if self._tracing is not None:
                span = stack.enter_context(
                    self._tracing.rpc(method, _text(metadata), transport=transport, attributes=span_attributes)
                )
                context.trace_id, context.span_id = span.trace_id, span.span_id
            token = bind_rpc(context)
            outcome_token = _OUTCOME.set(outcome)
            self.metrics.in_flight.labels(method).inc()
            started = time.monotonic()
            try:
                yield outcome
            except asyncio.CancelledError:
                outcome.code = outcome.code or "CANCELLED"
                raise
            except BaseException:
                outcome.code = outcome.code or "UNKNOWN"
                raise
            finally:
                self._finish(outcome, time.monotonic() - started)
                if span is not None:
                    span.code = outcome.code
                # A stream closed from elsewhere (garbage collection) runs this in another context.
                with contextlib.suppress(ValueError):
                    unbind_rpc(token)
                    _OUTCOME.reset(outcome_token)

    def _finish(self, outcome: RpcOutcome, elapsed: float) -> None:
        context = outcome.context
        code = outcome.code or "OK"
        self.metrics.in_flight.labels(context.method).dec()
        caller = current_caller()
        context.caller = escape_controls(caller.name)
        self.metrics.rpcs.labels(context.method, code, caller.label).inc()
        self.metrics.rpc_seconds.labels(context.method).observe(elapsed)
        if outcome.upstream_attempts:
            gateway = elapsed - outcome.upstream_seconds - outcome.backoff_seconds
            self.metrics.overhead_seconds.labels(context.method).observe(max(gateway, 0.0))
        if outcome.received:
            self.metrics.received_bytes.labels(context.method).inc(outcome.received)
        if outcome.sent:
            self.metrics.sent_bytes.labels(context.method).inc(outcome.sent)
        generation = current_generation()
        extra: dict[str, object] = {
            "caller": context.caller,
            "method": context.method,
            "code": code,
            "duration": round(elapsed, 6),
            "attempts": context.attempts,
            "generation_id": "" if generation == "-" else generation,
            "request_id": context.request_id,
            "trace_id": context.trace_id,
            "span_id": context.span_id,
        }
        if self._log_prompts:
            extra["prompt"] = getattr(outcome.request, "prompt", None) or None
        log.info(
            "%s %s %.3fs caller=%s requestId=%s",
            context.method.rsplit("/", 1)[-1],
            code,
            elapsed,
            context.caller,
            context.request_id or "-",
            extra=extra,
        )


def _text(metadata: Metadata | None) -> dict[str, str]:
    """The text entries of ``metadata`` (binary ``-bin`` values dropped), for propagators."""
    return {key: value for key, value in metadata or () if isinstance(value, str)}


class RpcOutcome:
    """One observed RPC as its transport reports it: its request (once decoded) and how it ended."""

    __slots__ = (
        "attempt_started_at",
        "backoff_seconds",
        "code",
        "context",
        "received",
        "request",
        "sent",
        "upstream_attempts",
        "upstream_seconds",
    )

    def __init__(self, context: RpcLogContext, request: Any) -> None:
        self.context = context
        self.request = request
        #: The status code's name when the RPC failed; None while it has not.
        self.code: str | None = None
        #: Bytes received and sent so far, as the transport counts them.
        self.received = 0
        self.sent = 0
        #: When the upstream attempt in progress began (monotonic clock), for its duration.
        self.attempt_started_at: float | None = None
        #: Upstream attempts timed so far, the seconds they took and the retry backoff between them:
        #: the RPC's time minus these is what the gateway itself added (its overhead).
        self.upstream_attempts = 0
        self.upstream_seconds = 0.0
        self.backoff_seconds = 0.0


#: The RPC the current task serves (tasks it starts inherit the reference), for per-RPC measurements.
_OUTCOME: ContextVar[RpcOutcome | None] = ContextVar("imagegen_rpc_outcome", default=None)


def message_size(message: Any) -> int:
    """The encoded size of a protobuf message, or of one already serialized (0 for anything else)."""
    if isinstance(message, bytes):  # service.add_to_server hands gRPC serialized responses
        return len(message)
    size = getattr(message, "ByteSize", None)
    return int(size()) if callable(size) else 0


class ObservabilityInterceptor(grpc.aio.ServerInterceptor):
    """Logs and counts every unary and server-streaming gRPC call through an :class:`RpcObserver`."""

    def __init__(self, observer: RpcObserver) -> None:
        self._observer = observer

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        """Wrap the method's handler so it is logged and counted."""
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method.lstrip("/")
        if handler.unary_unary is not None:
            return handler._replace(unary_unary=self._wrap_unary(method, handler.unary_unary))  # type: ignore[attr-defined, no-any-return]
        if handler.unary_stream is not None:
            return handler._replace(unary_stream=self._wrap_stream(method, handler.unary_stream))  # type: ignore[attr-defined, no-any-return]
        return handler

    def _wrap_unary(self, method: str, inner: Callable[..., Any]) -> Callable[..., Any]:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            with self._observer.observe(method, request, context.invocation_metadata()) as outcome:
                outcome.received = message_size(request)
                try:
                    response = await inner(request, context)
                except BaseException as exc:
                    outcome.code = _code_name(context, exc)
                    raise
                outcome.sent = message_size(response)
                return response

        return wrapper

    def _wrap_stream(self, method: str, inner: Callable[..., Any]) -> Callable[..., Any]:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            with self._observer.observe(method, request, context.invocation_metadata()) as outcome:
                outcome.received = message_size(request)
                try:
                    messages = inner(request, context)
                    if inspect.isawaitable(messages):
                        # A handler that streams with context.write() (e.g. health Watch).
                        await messages
                    else:
                        async for message in messages:
                            outcome.sent += message_size(message)
                            yield message
                except BaseException as exc:
                    outcome.code = _code_name(context, exc)
                    raise

        return wrapper


def _code_name(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException) -> str:
    if isinstance(exc, asyncio.CancelledError):
        return "CANCELLED"
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    return "UNKNOWN"
