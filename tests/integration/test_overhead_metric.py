"""`imagegen_gateway_overhead_seconds`: an RPC's time minus its upstream attempts and retry backoff."""

from __future__ import annotations

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from imagegen.v1 import image_generation_service_pb2 as pb
from imagegen.v1 import image_generation_service_pb2_grpc as pb_grpc
from imagegen_server.emulator import Emulator
from tests.conftest import ServerFactory

GENERATE = "imagegen.v1.ImageGenerationService/Generate"
STREAM = "imagegen.v1.ImageGenerationService/GenerateStream"


def _sums(server_metrics: bytes) -> dict[tuple[str, str], float]:
    """(sample name, method or model) -> value, for histogram sums and counts and counters."""
    out: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(server_metrics.decode()):
        for sample in family.samples:
            if sample.name.endswith(("_sum", "_count", "_total")):
                key = sample.labels.get("method") or sample.labels.get("model", "")
                out[(sample.name, key)] = out.get((sample.name, key), 0.0) + sample.value
    return out


async def test_overhead_is_rpc_time_minus_upstream_and_backoff(make_server: ServerFactory, emulator: Emulator) -> None:
    flaky = emulator.scenario("overloaded", "latency:0.2+ok")
    async with make_server(initial_backoff=0.05) as server, grpc.aio.insecure_channel(server.target) as channel:
        stub = pb_grpc.ImageGenerationServiceStub(channel)
        await stub.Generate(pb.GenerateRequest(prompt=f"a fox {flaky.marker}"))
        async for _ in stub.GenerateStream(pb.GenerateStreamRequest(prompt="a cat")):
            pass
        await stub.ListModels(pb.ListModelsRequest())
        sums = _sums(server.metrics.exposition())
        backoff = sums[("imagegen_retry_wait_seconds_total", "")]
    assert backoff > 0  # the first attempt failed: one wait
    # Every call that reached upstream is observed once; ListModels never reaches upstream.
    assert sums[("imagegen_gateway_overhead_seconds_count", GENERATE)] == 1
    assert sums[("imagegen_gateway_overhead_seconds_count", STREAM)] == 1
    assert ("imagegen_gateway_overhead_seconds_count", "imagegen.v1.ImageGenerationService/ListModels") not in sums
    # Overhead = RPC time - upstream attempts - backoff, from the same clock readings.
    rpc = sums[("imagegen_rpc_duration_seconds_sum", GENERATE)] + sums[("imagegen_rpc_duration_seconds_sum", STREAM)]
    upstream = sum(v for (name, _), v in sums.items() if name == "imagegen_upstream_attempt_duration_seconds_sum")
    overhead = (
        sums[("imagegen_gateway_overhead_seconds_sum", GENERATE)]
        + sums[("imagegen_gateway_overhead_seconds_sum", STREAM)]
    )
    assert overhead == pytest.approx(rpc - upstream - backoff, abs=1e-6)
    assert 0 < overhead < rpc
