"""SIGTERM to a real `imagegen serve` process with 100 calls in flight.

Every call ends OK (it finished within the grace) or UNAVAILABLE with ErrorInfo
SHUTTING_DOWN and RetryInfo (it was still running when the grace ended), never a
bare transport status; the process exits by itself within the grace.
"""

from __future__ import annotations

import asyncio
import signal

import grpc

from imagegen.v1 import image_generation_service_pb2 as pb
from imagegen.v1 import image_generation_service_pb2_grpc as pb_grpc
from imagegen_server.emulator import Emulator
from tests.integration.status_helpers import details_of
from tests.integration.test_serve_process import serving

Stub = pb_grpc.ImageGenerationServiceStub

CALLS = 100
GRACE = 3.0


async def _unary(stub: Stub, prompt: str) -> str:
    try:
        await stub.Generate(pb.GenerateRequest(prompt=prompt), timeout=60)
    except grpc.aio.AioRpcError as err:
        return _outcome(err)
    return "OK"


async def _stream(stub: Stub, prompt: str) -> str:
    kinds = []
    try:
        async for event in stub.GenerateStream(pb.GenerateStreamRequest(prompt=prompt), timeout=60):
            kinds.append(event.WhichOneof("event"))
    except grpc.aio.AioRpcError as err:
        return _outcome(err)
    assert kinds[-1] == "completed", kinds
    return "OK"


def _outcome(err: grpc.aio.AioRpcError) -> str:
    d = details_of(err)
    if not d.reason:
        return f"{d.code.name}: no details: {err.details()}"
    return f"{d.code.name}/{d.reason}/retry={d.retry_delay}/gen={bool(d.metadata.get('generationId'))}"


async def test_sigterm_with_100_calls_in_flight_ends_each_with_ok_or_details() -> None:
    async with Emulator(port=0, api_key=None) as emulator:
        quick = emulator.scenario("latency:0.3")  # done well within the grace
        stuck = emulator.scenario("latency:600")  # still running when the grace ends
        async with (
            serving(
                "--port",
                "0",
                "--upstream-url",
                emulator.base_url,
                "--shutdown-grace",
                str(GRACE),
                "--max-concurrency",
                str(CALLS),
            ) as server,
            grpc.aio.insecure_channel(server.target) as channel,
        ):
            stub = Stub(channel)
            scenarios = [quick if i % 4 < 2 else stuck for i in range(CALLS)]
            calls = [
                asyncio.ensure_future((_unary if i % 2 else _stream)(stub, f"call {i} {scenario.marker}"))
                for i, scenario in enumerate(scenarios)
            ]
            # Every call reached upstream: the stuck ones are surely in flight at SIGTERM,
            # the quick ones are done or finish during the grace (on a loaded machine, maybe not).
            await stuck.wait_for(lambda s: s.received == CALLS // 2, timeout=60)
            await quick.wait_for(lambda s: s.received == CALLS // 2, timeout=60)
            finished_before = sum(call.done() for call in calls)
            server.proc.send_signal(signal.SIGTERM)
            outcomes = await asyncio.gather(*calls)
            exit_code = await asyncio.wait_for(server.proc.wait(), GRACE + 10)
        assert exit_code == 0
        cut = "UNAVAILABLE/SHUTTING_DOWN/retry=1.0/gen=True"
        assert set(outcomes) <= {"OK", cut}, outcomes
        assert all(o == cut for o, s in zip(outcomes, scenarios, strict=True) if s is stuck)
        assert outcomes.count("OK") >= finished_before
        assert outcomes.count(cut) >= CALLS // 2
        # Ending a call aborts its upstream request.
        await stuck.wait_for(lambda s: s.aborted == CALLS // 2, timeout=10)
