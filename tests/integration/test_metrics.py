"""Metrics for operators over a real /metrics scrape: upstream attempts and latency by model and outcome,
attempts per generation, tokens, bytes in and out per method (gRPC and REST), queue depth."""

from __future__ import annotations

import asyncio

import aiohttp
import grpc
from prometheus_client.parser import text_string_to_metric_families

from imagegen.v1 import image_generation_service_pb2 as pb
from imagegen.v1 import image_generation_service_pb2_grpc as pb_grpc
from imagegen_server.emulator import Emulator
from tests.conftest import ServerFactory

MODEL = "gemini-3.1-flash-image"
GENERATE = "imagegen.v1.ImageGenerationService/Generate"
STREAM = "imagegen.v1.ImageGenerationService/GenerateStream"


async def _scrape(http: aiohttp.ClientSession, port: int | None) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
        text = await resp.text()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _get(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_upstream_latency_attempts_tokens_and_bytes(make_server: ServerFactory, emulator: Emulator) -> None:
    flaky = emulator.scenario("overloaded", "ok")
    async with (
        make_server(metrics_port=0, http_port=0) as server,
        grpc.aio.insecure_channel(server.target) as channel,
        aiohttp.ClientSession() as http,
    ):
        request = pb.GenerateRequest(prompt=f"a fox {flaky.marker}")
        response = await pb_grpc.ImageGenerationServiceStub(channel).Generate(request)
        url = f"http://127.0.0.1:{server.http_port}/v1/images:generateStream"
        async with http.post(url, json={"prompt": "a cat"}) as resp:
            streamed = await resp.read()
        samples = await _scrape(http, server.metrics_port)
    assert _get(samples, "imagegen_upstream_attempts_total", model=MODEL, outcome="UNAVAILABLE") == 1
    assert _get(samples, "imagegen_upstream_attempts_total", model=MODEL, outcome="ok") == 2
    failed = _get(samples, "imagegen_upstream_attempt_duration_seconds_count", model=MODEL, outcome="UNAVAILABLE")
    ok = _get(samples, "imagegen_upstream_attempt_duration_seconds_count", model=MODEL, outcome="ok")
    assert (failed, ok) == (1, 2)
    assert _get(samples, "imagegen_upstream_attempt_duration_seconds_sum", model=MODEL, outcome="ok") > 0
    # One generation took 2 attempts, the other 1.
    assert _get(samples, "imagegen_generation_attempts_bucket", model=MODEL, outcome="ok", le="1.0") == 1
    assert _get(samples, "imagegen_generation_attempts_bucket", model=MODEL, outcome="ok", le="2.0") == 2
    assert _get(samples, "imagegen_upstream_tokens_total", model=MODEL, kind="output") > 0
    # Bytes: the protobuf sizes over gRPC, the JSON body and SSE events over REST.
    assert _get(samples, "imagegen_received_bytes_total", method=GENERATE) == request.ByteSize()
    assert _get(samples, "imagegen_sent_bytes_total", method=GENERATE) == response.ByteSize()
    assert _get(samples, "imagegen_received_bytes_total", method=STREAM) == len(b'{"prompt": "a cat"}')
    assert _get(samples, "imagegen_sent_bytes_total", method=STREAM) == len(streamed)
    assert _get(samples, "imagegen_queue_depth") == 0


async def test_queue_depth_counts_requests_waiting_for_a_slot(make_server: ServerFactory, emulator: Emulator) -> None:
    # The first call to reach upstream holds the one slot for 1.5 s; the two queued behind it answer at once.
    slow = emulator.scenario("latency:1.5+ok", "ok")
    async with (
        make_server(metrics_port=0, max_concurrency=1, queue_timeout=10.0) as server,
        grpc.aio.insecure_channel(server.target) as channel,
        aiohttp.ClientSession() as http,
    ):
        stub = pb_grpc.ImageGenerationServiceStub(channel)
        calls = [
            asyncio.ensure_future(stub.Generate(pb.GenerateRequest(prompt=f"x{i} {slow.marker}"))) for i in range(3)
        ]
        depth = 0.0
        for _ in range(100):  # bounded: until two wait behind the one holding the slot
            depth = _get(await _scrape(http, server.metrics_port), "imagegen_queue_depth")
            if depth == 2:
                break
            await asyncio.sleep(0.02)
        assert depth == 2
        await asyncio.gather(*calls)
        assert _get(await _scrape(http, server.metrics_port), "imagegen_queue_depth") == 0
