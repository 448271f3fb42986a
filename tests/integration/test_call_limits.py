"""No call waits forever: a stalled upstream body fails the attempt (idle timeout, retried),
and a call without a deadline still ends at the server's maximum call duration.

Real server, real emulator over HTTP; ``slow_body:S`` sends the headers and part of the
body (all SSE events but the last), then stalls for S seconds.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest

from imagegen.v1 import image_generation_service_pb2 as pb
from imagegen.v1 import image_generation_service_pb2_grpc as pb_grpc
from imagegen_server.emulator import Emulator
from imagegen_server.emulator.scenarios import Scenario
from tests.conftest import ServerFactory
from tests.integration.status_helpers import details_of

Stub = pb_grpc.ImageGenerationServiceStub

#: Far longer than any test runs: a stall that only the timeouts under test can end.
FOREVER = "600"


async def _aborted(scenario: Scenario, count: int) -> None:
    """Wait until the emulator saw ``count`` requests hang up (noticed asynchronously)."""
    await scenario.wait_for(lambda s: s.aborted >= count, timeout=5.0)


async def test_a_unary_body_that_stalls_is_retried_then_fails_as_upstream_timeout(
    make_server: ServerFactory, emulator: Emulator
) -> None:
    stall = emulator.scenario(f"slow_body:{FOREVER}")
    async with (
        make_server(upstream_idle_timeout=0.3, max_attempts=2) as server,
        grpc.aio.insecure_channel(server.target) as channel,
    ):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await Stub(channel).Generate(pb.GenerateRequest(prompt=f"x {stall.marker}"), timeout=30)
    d = details_of(info.value)
    assert (d.code, d.reason, d.metadata["attempts"]) == (grpc.StatusCode.DEADLINE_EXCEEDED, "UPSTREAM_TIMEOUT", "2")
    assert "idle timeout" in d.message
    await _aborted(stall, 2)
    assert (stall.stats.received, stall.stats.completed) == (2, 0)


@pytest.mark.parametrize("rpc", ["unary", "stream"])
async def test_a_stalled_answer_is_a_retryable_timeout(
    make_server: ServerFactory, emulator: Emulator, rpc: str
) -> None:
    # thoughts:2 makes the SSE answer several events, so the stall comes after real progress.
    stall_then_ok = emulator.scenario(f"slow_body:{FOREVER}+thoughts:2", "ok")
    async with make_server(upstream_idle_timeout=0.3) as server, grpc.aio.insecure_channel(server.target) as channel:
        stub = Stub(channel)
        if rpc == "unary":
            generation = (await stub.Generate(pb.GenerateRequest(prompt=f"x {stall_then_ok.marker}"))).generation
            assert generation.attempts == 2
        else:
            call = stub.GenerateStream(pb.GenerateStreamRequest(prompt=f"x {stall_then_ok.marker}"), timeout=30)
            events = [e async for e in call]
            failed = [e.attempt_failed for e in events if e.WhichOneof("event") == "attempt_failed"]
            assert [(f.attempt, f.reason, f.will_retry) for f in failed] == [(1, "UPSTREAM_TIMEOUT", True)]
            assert "idle timeout" in failed[0].message
            # The first attempt's drafts arrived before the stall: the stall was mid-stream.
            assert any(e.WhichOneof("event") == "preview" for e in events)
            assert events[-1].completed.attempts == 2
    assert stall_then_ok.stats.received == 2
    await _aborted(stall_then_ok, 1)


@pytest.mark.parametrize("caller_timeout", [None, 60.0])
async def test_a_silent_upstream_ends_at_the_max_call_duration_and_frees_the_slot(
    make_server: ServerFactory, emulator: Emulator, caller_timeout: float | None
) -> None:
    silent = emulator.scenario(f"latency:{FOREVER}")
    # 1.5 s: the next call below (milliseconds, under a second on a loaded machine) must fit in it.
    async with (
        make_server(max_call_duration=1.5, max_concurrency=1, queue_timeout=0.2) as server,
        grpc.aio.insecure_channel(server.target) as channel,
    ):
        stub = Stub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Generate(pb.GenerateRequest(prompt=f"x {silent.marker}"), timeout=caller_timeout)
        d = details_of(info.value)
        assert (d.code, d.reason) == (grpc.StatusCode.DEADLINE_EXCEEDED, "MAX_DURATION_EXCEEDED")
        assert d.metadata["maxCallDuration"] == "1.5s" and d.metadata["attempts"] == "1"
        assert "maximum call duration" in d.message
        await _aborted(silent, 1)
        # The one concurrency slot is free again: the next call is served, not OVERLOADED.
        assert (await stub.Generate(pb.GenerateRequest(prompt="next"), timeout=10)).generation.image.data


async def test_a_callers_own_shorter_deadline_is_not_blamed_on_the_server(stub: Stub, emulator: Emulator) -> None:
    silent = emulator.scenario(f"latency:{FOREVER}")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Generate(pb.GenerateRequest(prompt=f"x {silent.marker}"), timeout=0.5)
    d = details_of(info.value)
    assert (d.code, d.reason) == (grpc.StatusCode.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED")
    assert "maxCallDuration" not in d.metadata
    await _aborted(silent, 1)


async def test_a_duplicate_waiting_without_deadline_also_ends(make_server: ServerFactory, emulator: Emulator) -> None:
    silent = emulator.scenario(f"latency:{FOREVER}")
    request = pb.GenerateRequest(prompt=f"x {silent.marker}", options=pb.GenerationOptions(request_id="silent-1"))
    async with make_server(max_call_duration=0.5) as server, grpc.aio.insecure_channel(server.target) as channel:
        stub = Stub(channel)
        results = await asyncio.gather(stub.Generate(request), stub.Generate(request), return_exceptions=True)
    assert all(isinstance(r, grpc.aio.AioRpcError) for r in results)
    codes = {details_of(r).code for r in results if isinstance(r, grpc.aio.AioRpcError)}
    assert codes == {grpc.StatusCode.DEADLINE_EXCEEDED}
