"""Idempotency through the real server and emulator: a duplicate keeps its own
deadline, takes over when the first call gives up on its own, and the result
cache is bounded by bytes."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from imagegen.v1 import image_generation_service_pb2 as pb
from imagegen.v1 import image_generation_service_pb2_grpc as pb_grpc
from imagegen_server.emulator import Emulator
from tests.conftest import ServerFactory
from tests.integration.status_helpers import details_of

Stub = pb_grpc.ImageGenerationServiceStub


def _request(prompt: str, request_id: str) -> pb.GenerateRequest:
    return pb.GenerateRequest(prompt=prompt, options=pb.GenerationOptions(request_id=request_id, seed=1))


async def test_a_duplicate_takes_over_when_the_first_call_runs_out_of_its_own_deadline(
    stub: Stub, emulator: Emulator
) -> None:
    # The first call's attempt outlives its 1 s deadline; the duplicate has 30 s.
    scenario = emulator.scenario("latency:2", "ok")
    request = _request(f"a fox {scenario.marker}", "takeover-1")
    first = asyncio.ensure_future(stub.Generate(request, timeout=1.0))
    await scenario.wait_for(lambda s: s.received == 1)
    duplicate = asyncio.ensure_future(stub.Generate(request, timeout=30))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await first
    assert details_of(info.value).reason == "DEADLINE_EXCEEDED"
    generation = (await duplicate).generation
    assert generation.image.data and generation.request_id == "takeover-1"
    assert scenario.stats.received == 2, "the duplicate ran the request itself"
    repeat = (await stub.Generate(request, timeout=30)).generation
    assert repeat.generation_id == generation.generation_id and scenario.stats.received == 2


async def test_a_duplicate_takes_over_when_the_first_caller_hangs_up(stub: Stub, emulator: Emulator) -> None:
    scenario = emulator.scenario("latency:2", "ok")
    request = _request(f"a fox {scenario.marker}", "takeover-2")
    first = stub.Generate(request, timeout=30)
    await scenario.wait_for(lambda s: s.received == 1)
    duplicate = asyncio.ensure_future(stub.Generate(request, timeout=30))
    await asyncio.sleep(0.1)  # let the duplicate reach the server and wait
    first.cancel()
    assert (await duplicate).generation.image.data
    await scenario.wait_for(lambda s: s.aborted == 1 and s.completed == 1)
    assert scenario.stats.received == 2


async def test_a_duplicate_keeps_its_own_shorter_deadline_and_the_first_call_goes_on(
    stub: Stub, emulator: Emulator
) -> None:
    scenario = emulator.scenario("latency:1")
    request = _request(f"a fox {scenario.marker}", "own-deadline")
    first = asyncio.ensure_future(stub.Generate(request, timeout=30))
    await scenario.wait_for(lambda s: s.received == 1)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Generate(request, timeout=0.3)
    d = details_of(info.value)
    assert (d.code, d.reason) == (grpc.StatusCode.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED"), "our status, with details"
    assert (await first).generation.image.data
    assert (scenario.stats.received, scenario.stats.completed, scenario.stats.aborted) == (1, 1, 0)


async def test_a_shared_upstream_failure_reaches_the_duplicate(stub: Stub, emulator: Emulator) -> None:
    scenario = emulator.scenario("latency:0.5+prompt_blocked")
    request = _request(f"a fox {scenario.marker}", "shared-failure")
    results = await asyncio.gather(stub.Generate(request), stub.Generate(request), return_exceptions=True)
    reasons = [details_of(r).reason for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert reasons == ["CONTENT_BLOCKED", "CONTENT_BLOCKED"]
    assert scenario.stats.received == 1


async def test_the_result_cache_is_bounded_by_bytes(stub: Stub, make_server: ServerFactory, emulator: Emulator) -> None:
    # One result's size, measured through the default server: the small server keeps one, not two.
    probe = emulator.scenario("ok")
    size = (await stub.Generate(_request(f"probe {probe.marker}", "probe"))).generation.ByteSize()
    a, b = emulator.scenario("ok"), emulator.scenario("ok")
    async with (
        make_server(idempotency_max_bytes=int(size * 1.5)) as server,
        grpc.aio.insecure_channel(server.target) as channel,
    ):
        small = Stub(channel)
        for scenario, request_id in ((a, "a"), (b, "b"), (b, "b"), (a, "a")):
            await small.Generate(_request(f"probe {scenario.marker}", request_id))
    assert b.stats.received == 1, "the newest result was kept"
    assert a.stats.received == 2, "the oldest result was evicted"
