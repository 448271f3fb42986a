"""OpenTelemetry: a SERVER span per RPC continuing the caller's traceparent, a CLIENT span per upstream attempt,
GenAI attributes, the retry stop reason, the trace id in the logs; nothing imported when tracing is off."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from typing import Any

import aiohttp
import grpc
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from imagegen.v1 import image_generation_service_pb2 as pb
from imagegen.v1 import image_generation_service_pb2_grpc as pb_grpc
from imagegen_server.app import RunningServer, run_server
from imagegen_server.config import ConfigError, ServerConfig
from imagegen_server.emulator import Emulator
from imagegen_server.tracing import Tracing, _exporters, _latest_genai, start_tracing

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_SPAN}-01"
GENERATE = "imagegen.v1.ImageGenerationService/Generate"


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    yield exporter
    exporter.clear()


@pytest.fixture
async def traced(server_config: ServerConfig, exporter: InMemorySpanExporter) -> AsyncIterator[RunningServer]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    async with run_server(replace(server_config, http_port=0), tracing=Tracing(provider)) as server:
        yield server


def _by_kind(spans: tuple[ReadableSpan, ...], kind: SpanKind) -> list[ReadableSpan]:
    return sorted((s for s in spans if s.kind == kind), key=lambda s: s.start_time or 0)


def _attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


async def test_rpc_span_continues_the_callers_trace_with_one_span_per_attempt(
    traced: RunningServer, exporter: InMemorySpanExporter, emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="imagegen_server.access")
    flaky = emulator.scenario("overloaded", "ok")
    async with grpc.aio.insecure_channel(traced.target) as channel:
        await pb_grpc.ImageGenerationServiceStub(channel).Generate(
            pb.GenerateRequest(prompt=f"a fox {flaky.marker}", options=pb.GenerationOptions(request_id="t1")),
            metadata=(("traceparent", TRACEPARENT),),
        )
    spans = exporter.get_finished_spans()
    (rpc,) = _by_kind(spans, SpanKind.SERVER)
    first, second = _by_kind(spans, SpanKind.CLIENT)
    assert rpc.name == GENERATE
    assert rpc.context is not None and rpc.parent is not None
    assert format(rpc.context.trace_id, "032x") == TRACE_ID and format(rpc.parent.span_id, "016x") == PARENT_SPAN
    assert all(a.parent is not None and a.parent.span_id == rpc.context.span_id for a in (first, second))
    model = "gemini-3.1-flash-image"
    for key, value in {
        "gen_ai.operation.name": "generate_content",
        "gen_ai.system": "gcp.gemini",
        "gen_ai.request.model": model,
        "rpc.system": "grpc",
        "rpc.method": "Generate",
        "imagegen.attempts": 2,
        "rpc.grpc.status_code": 0,
    }.items():
        assert _attrs(rpc)[key] == value, key
    assert "gen_ai.provider.name" not in _attrs(rpc)  # the v1.36 conventions unless opted in
    assert _attrs(rpc)["gen_ai.response.model"] and _attrs(rpc)["gen_ai.usage.output_tokens"] > 0
    assert rpc.status.status_code == StatusCode.UNSET
    assert first.name == f"generate_content {model}" and first.status.status_code == StatusCode.ERROR
    assert _attrs(first)["error.type"] == "UNAVAILABLE" and _attrs(first)["imagegen.retry.will_retry"] is True
    assert _attrs(second)["gen_ai.usage.input_tokens"] > 0 and "error.type" not in _attrs(second)
    # The access line carries the same trace and span ids.
    line = next(r for r in caplog.records if getattr(r, "request_id", "") == "t1")
    assert line.trace_id == TRACE_ID and line.span_id == format(rpc.context.span_id, "016x")  # type: ignore[attr-defined]


async def test_a_failed_generation_records_the_stop_reason(
    traced: RunningServer, exporter: InMemorySpanExporter, emulator: Emulator
) -> None:
    blocked = emulator.scenario("prompt_blocked")
    async with grpc.aio.insecure_channel(traced.target) as channel:
        with pytest.raises(grpc.aio.AioRpcError):
            await pb_grpc.ImageGenerationServiceStub(channel).Generate(pb.GenerateRequest(prompt=f"x {blocked.marker}"))
    spans = exporter.get_finished_spans()
    (rpc,) = _by_kind(spans, SpanKind.SERVER)
    (attempt,) = _by_kind(spans, SpanKind.CLIENT)
    assert rpc.status.status_code == StatusCode.ERROR and rpc.status.description.startswith("INVALID_ARGUMENT")
    assert _attrs(rpc)["imagegen.retry.stop_reason"] == "not_retryable"
    assert _attrs(rpc)["error.type"] == "CONTENT_BLOCKED" and _attrs(rpc)["rpc.grpc.status_code"] == 3
    assert _attrs(attempt)["imagegen.retry.stop_reason"] == "not_retryable"
    assert rpc.context is not None and format(rpc.context.trace_id, "032x") != TRACE_ID  # a new trace


async def test_rest_calls_are_traced_too(traced: RunningServer, exporter: InMemorySpanExporter) -> None:
    async with aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{traced.http_port}/v1/images:generateStream"
        async with http.post(url, json={"prompt": "a cat"}, headers={"traceparent": TRACEPARENT}) as resp:
            assert resp.status == 200
            await resp.read()
    (rpc,) = _by_kind(exporter.get_finished_spans(), SpanKind.SERVER)
    assert rpc.name == "imagegen.v1.ImageGenerationService/GenerateStream"
    assert rpc.context is not None and format(rpc.context.trace_id, "032x") == TRACE_ID
    assert _attrs(rpc)["imagegen.transport"] == "rest" and "rpc.system" not in _attrs(rpc)
    assert _attrs(rpc)["http.request.method"] == "POST" and _attrs(rpc)["url.path"] == "/v1/images:generateStream"
    assert len(_by_kind(exporter.get_finished_spans(), SpanKind.CLIENT)) == 1


def test_tracing_is_off_unless_asked() -> None:
    assert start_tracing(ServerConfig(), env={}) is None
    assert start_tracing(ServerConfig(), env={"OTEL_TRACES_EXPORTER": "none"}) is None
    assert start_tracing(ServerConfig(otel=True), env={"OTEL_SDK_DISABLED": "true"}) is None
    tracing = start_tracing(ServerConfig(), env={"OTEL_TRACES_EXPORTER": "console"})
    assert tracing is not None
    tracing.shutdown()


async def test_latest_genai_conventions_on_opt_in(server_config: ServerConfig, exporter: InMemorySpanExporter) -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    async with (
        run_server(server_config, tracing=Tracing(provider, latest_genai=True)) as server,
        grpc.aio.insecure_channel(server.target) as channel,
    ):
        await pb_grpc.ImageGenerationServiceStub(channel).Generate(pb.GenerateRequest(prompt="a cat"))
    for span in exporter.get_finished_spans():
        assert _attrs(span)["gen_ai.provider.name"] == "gcp.gemini" and "gen_ai.system" not in _attrs(span)
    assert _latest_genai({"OTEL_SEMCONV_STABILITY_OPT_IN": "http, gen_ai_latest_experimental"})
    assert not _latest_genai({"OTEL_SEMCONV_STABILITY_OPT_IN": "http"}) and not _latest_genai({})


def test_exporters_come_from_otel_traces_exporter() -> None:
    (otlp,) = _exporters({})  # otlp over gRPC by default
    assert type(otlp).__name__ == "OTLPSpanExporter" and "grpc" in type(otlp).__module__
    otlp.shutdown()
    with pytest.raises(ConfigError, match="no span exporter 'zipkinn'"):
        _exporters({"OTEL_TRACES_EXPORTER": "zipkinn"})


def test_no_opentelemetry_import_when_tracing_is_off() -> None:
    # redis-py imports parts of OpenTelemetry when it is installed; running a server must add nothing.
    code = (
        "import asyncio, sys\n"
        "from imagegen_server.app import run_server\n"
        "from imagegen_server.config import ServerConfig\n"
        "before = {m for m in sys.modules if m.startswith('opentelemetry')}\n"
        "async def main():\n"
        "    async with run_server(ServerConfig(port=0, http_port=0)):\n"
        "        pass\n"
        "asyncio.run(main())\n"
        "added = {m for m in sys.modules if m.startswith('opentelemetry')} - before\n"
        "print(sorted(added), 'opentelemetry.sdk.trace' in sys.modules)\n"
    )
    env = {"PATH": "/usr/bin:/bin", "IMAGEGEN_EMULATOR_IMAGE_PROFILE": "small"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60, check=True)
    assert done.stdout.strip() == "[] False"
