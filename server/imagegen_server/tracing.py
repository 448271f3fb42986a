"""OpenTelemetry traces (the optional ``imagegen[otel]`` extra): a span per RPC, one per upstream attempt under it.

Off unless asked for (``--otel``, or ``OTEL_TRACES_EXPORTER`` set to an
exporter), and then nothing of OpenTelemetry is even imported: zero cost.
When on, :func:`start_tracing` builds a tracer provider the standard way:
resource from ``OTEL_SERVICE_NAME``/``OTEL_RESOURCE_ATTRIBUTES`` (service name
``imagegen`` by default), sampler from ``OTEL_TRACES_SAMPLER``, exporters named
by ``OTEL_TRACES_EXPORTER`` (``otlp``, the default, ``console``, ``none``)
configured by their own ``OTEL_EXPORTER_OTLP_*`` variables, batched
(``OTEL_BSP_*``).

Spans follow the GenAI semantic conventions, still in development: the v1.36
attributes by default, the newer ones when ``OTEL_SEMCONV_STABILITY_OPT_IN``
lists ``gen_ai_latest_experimental`` (as OpenTelemetry's own instrumentations
do): the provider is ``gen_ai.system = gcp.gemini``, or
``gen_ai.provider.name = gcp.gemini`` with the opt-in. The RPC span (kind
SERVER, continuing the caller's W3C ``traceparent``) is
``gen_ai.operation.name = generate_content`` with ``gen_ai.request.model``,
``gen_ai.response.model``, ``gen_ai.usage.input_tokens`` /
``output_tokens``, the attempts and the retry stop reason; each upstream
attempt is a CLIENT span under it with the same GenAI attributes, its failure
kind (``error.type``) and whether a retry follows.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

import grpc

from imagegen_server.config import ConfigError, ServerConfig
from imagegen_server.gemini.errors import UpstreamError
from imagegen_server.gemini.types import UpstreamResult
from imagegen_server.lifecycle import GenerationObserver
from imagegen_server.retry import RetryDecision

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span

log = logging.getLogger(__name__)

#: The GenAI provider of every upstream call (semantic conventions' well-known value for Gemini's API).
PROVIDER = "gcp.gemini"
#: The operation of an image generation (GenAI conventions: multimodal generateContent-style calls).
OPERATION = "generate_content"
#: RPCs that are not a generation (no GenAI attributes).
_NOT_GENERATION = ("ListModels",)


def tracing_requested(config: ServerConfig, env: Mapping[str, str] | None = None) -> bool:
    """Whether traces are on: ``--otel`` or an exporter in ``OTEL_TRACES_EXPORTER``, unless ``OTEL_SDK_DISABLED``."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    return config.otel or (exporters not in ("", "none"))


def start_tracing(config: ServerConfig, env: Mapping[str, str] | None = None) -> Tracing | None:
    """The server's tracing from the ``OTEL_*`` environment, or None when it is off.

    Raises :class:`ConfigError` when tracing is asked for but the ``otel`` extra
    is not installed, or ``OTEL_TRACES_EXPORTER`` names an unknown exporter.
    """
    env = os.environ if env is None else env
    if not tracing_requested(config, env):
        return None
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise ConfigError(
            f"tracing (--otel or OTEL_TRACES_EXPORTER) needs the otel extra: pip install 'imagegen[otel]' ({exc.name})"
        ) from None
    attributes = {} if env.get("OTEL_SERVICE_NAME") else {"service.name": "imagegen"}
    provider = TracerProvider(resource=Resource.create(attributes))
    for exporter in _exporters(env):
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return Tracing(provider, owned=True, latest_genai=_latest_genai(env))


def _latest_genai(env: Mapping[str, str]) -> bool:
    """Whether ``OTEL_SEMCONV_STABILITY_OPT_IN`` asks for the latest (experimental) GenAI conventions."""
    opted = env.get("OTEL_SEMCONV_STABILITY_OPT_IN", "")
    return "gen_ai_latest_experimental" in (part.strip() for part in opted.split(","))


def _exporters(env: Mapping[str, str]) -> list[Any]:
    """The span exporters ``OTEL_TRACES_EXPORTER`` names (``otlp`` by default), from their entry points."""
    names = [n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "otlp").split(",") if n.strip()]
    protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc"
    available = {e.name: e for e in entry_points(group="opentelemetry_traces_exporter")}
    exporters = []
    otlp = "otlp_proto_http" if protocol.startswith("http") else "otlp_proto_grpc"
    for name in (otlp if n == "otlp" else n for n in names if n != "none"):
        if name not in available:
            known = ", ".join(sorted({"otlp", "none", *available}))
            raise ConfigError(f"OTEL_TRACES_EXPORTER: no span exporter {name!r} installed (known: {known})")
        exporters.append(available[name].load()())
    return exporters


@dataclass(slots=True)
class _RpcTrace:
    """The spans of one RPC: its own, and the upstream attempt in progress."""

    span: Span
    generation: bool
    attempt: Span | None = None


#: The RPC the current task serves; the retry task inherits the reference.
_TRACE: ContextVar[_RpcTrace | None] = ContextVar("imagegen_trace", default=None)


class Tracing(GenerationObserver):
    """Spans for RPCs (:meth:`rpc`) and, as a lifecycle observer, for their upstream attempts."""

    def __init__(self, provider: TracerProvider, *, owned: bool = False, latest_genai: bool = False) -> None:
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._provider = provider
        self._owned = owned
        self._tracer = provider.get_tracer("imagegen_server")
        self._propagator = TraceContextTextMapPropagator()
        provider_key = "gen_ai.provider.name" if latest_genai else "gen_ai.system"
        #: The GenAI attributes every generation span has (the conventions' version chosen at start).
        self._genai = {"gen_ai.operation.name": OPERATION, provider_key: PROVIDER}

    @contextlib.contextmanager
    def rpc(
        self,
        method: str,
        metadata: Mapping[str, str],
        *,
        transport: str = "grpc",
        attributes: Mapping[str, str] | None = None,
    ) -> Iterator[RpcSpan]:
        """A SERVER span for ``method`` (``package.Service/Method``), continuing the caller's ``traceparent``.

        ``transport``: ``grpc``, or ``rest`` for a call through the REST gateway (no ``rpc.system`` then);
        ``attributes``: more span attributes from the transport.
        """
        from opentelemetry import context as otel_context
        from opentelemetry import trace

        parent = self._propagator.extract(carrier=dict(metadata))
        service, _, name = method.rpartition("/")
        span_attributes: dict[str, Any] = {
            **(attributes or {}),
            "rpc.service": service,
            "rpc.method": name,
            "imagegen.transport": transport,
        }
        if transport == "grpc":
            span_attributes["rpc.system"] = "grpc"
        generation = name not in _NOT_GENERATION
        if generation:
            span_attributes.update(self._genai)
        span = self._tracer.start_span(method, context=parent, kind=trace.SpanKind.SERVER, attributes=span_attributes)
        state = _RpcTrace(span, generation)
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        trace_token = _TRACE.set(state)
        handle = RpcSpan(span)
        try:
            yield handle
        finally:
            if state.attempt is not None:  # the caller left mid-attempt
                state.attempt.end()
            handle.finish()
            with contextlib.suppress(ValueError):
                _TRACE.reset(trace_token)
            otel_context.detach(token)

    def attempt_started(self, model: str, attempt: int, max_attempts: int) -> None:
        """Open the attempt's CLIENT span under the RPC's."""
        from opentelemetry import trace

        state = _TRACE.get()
        if state is None:
            return
        if attempt == 1:
            state.span.set_attribute("gen_ai.request.model", model)
        if state.attempt is not None:
            state.attempt.end()
        state.attempt = self._tracer.start_span(
            f"{OPERATION} {model}",
            context=trace.set_span_in_context(state.span),
            kind=trace.SpanKind.CLIENT,
            attributes={
                **self._genai,
                "gen_ai.request.model": model,
                "imagegen.attempt": attempt,
                "imagegen.max_attempts": max_attempts,
            },
        )

    def attempt_failed(self, model: str, attempt: int, error: UpstreamError, decision: RetryDecision) -> None:
        """Close the attempt's span as an error: its kind, whether a retry follows, and if not, why."""
        from opentelemetry.trace import Status, StatusCode

        span = self._take_attempt()
        if span is None:
            return
        span.set_attribute("error.type", error.kind.name)
        span.set_attribute("imagegen.retry.will_retry", decision.will_retry)
        if decision.will_retry:
            span.set_attribute("imagegen.retry.delay", decision.delay)
        else:
            span.set_attribute("imagegen.retry.stop_reason", decision.reason)
        span.set_status(Status(StatusCode.ERROR, error.kind.name))
        span.end()

    def upstream_answered(self, model: str, attempt: int, result: UpstreamResult) -> None:
        """Close the attempt's span with the model that answered and the tokens used; the RPC's gets them too."""
        state = _TRACE.get()
        answered: dict[str, Any] = {
            "gen_ai.response.model": result.model_version or model,
            "gen_ai.usage.input_tokens": result.usage.prompt_tokens,
            "gen_ai.usage.output_tokens": result.usage.output_tokens,
        }
        span = self._take_attempt()
        if span is not None:
            span.set_attributes(answered)
            span.end()
        if state is not None:
            state.span.set_attributes(answered)

    def generation_done(self, model: str, attempts: int, elapsed: float) -> None:
        """Record the attempts on the RPC's span."""
        state = _TRACE.get()
        if state is not None:
            state.span.set_attribute("imagegen.attempts", attempts)

    def generation_failed(
        self, model: str, attempts: int, error: UpstreamError, stop_reason: str, elapsed: float
    ) -> None:
        """Record the attempts, the last failure and the retry stop reason on the RPC's span."""
        state = _TRACE.get()
        if state is not None:
            failed: dict[str, Any] = {"imagegen.attempts": attempts, "imagegen.retry.stop_reason": stop_reason}
            state.span.set_attributes({**failed, "error.type": error.kind.name})

    def _take_attempt(self) -> Span | None:
        state = _TRACE.get()
        if state is None or state.attempt is None:
            return None
        span, state.attempt = state.attempt, None
        return span

    def shutdown(self) -> None:
        """Flush and stop the exporters (only a provider this object built)."""
        if self._owned:
            self._provider.shutdown()


class RpcSpan:
    """The RPC's span as the transports see it: its ids for the logs, its end status."""

    __slots__ = ("_span", "code", "message")

    def __init__(self, span: Span) -> None:
        self._span = span
        #: The status code's name (None: OK) and message, set by the transport.
        self.code: str | None = None
        self.message = ""

    @property
    def trace_id(self) -> str:
        """The trace id, 32 hex digits."""
        return format(self._span.get_span_context().trace_id, "032x")

    @property
    def span_id(self) -> str:
        """The span id, 16 hex digits."""
        return format(self._span.get_span_context().span_id, "016x")

    def finish(self) -> None:
        """End the span with the RPC's status (ERROR unless OK)."""
        from opentelemetry.trace import Status, StatusCode

        code = grpc.StatusCode.__members__.get(self.code or "OK", grpc.StatusCode.UNKNOWN)
        self._span.set_attribute("rpc.grpc.status_code", code.value[0])
        if self.code and self.code != "OK":
            self._span.set_status(Status(StatusCode.ERROR, f"{self.code}: {self.message}".rstrip(": ")))
        self._span.end()
