"""Overload handling through the real server and emulator: retry budget, circuit breaker, fallback models.

Every test scripts the real emulator per request (a scenario marker in the
prompt) and calls the real grpc.aio server with a raw stub. Upstream attempts
are counted where they arrive: the emulator's ``scenario.stats.received``.
"""

from __future__ import annotations

import grpc
import pytest

from imagegen.v1 import image_generation_service_pb2 as pb
from imagegen.v1 import image_generation_service_pb2_grpc as pb_grpc
from imagegen_server.emulator import Emulator
from tests.conftest import ServerFactory
from tests.integration.status_helpers import Details, details_of

Stub = pb_grpc.ImageGenerationServiceStub

#: Transient faults of every kind the retry loop retries (503, 504, 500, per-minute 429, a cut body).
TRANSIENT = ("overloaded", "timeout", "internal", "rate_limit:0.01", "cut_body")


async def fail(stub: Stub, prompt: str, **options: object) -> Details:
    """Call Generate, expecting an error; its decoded details."""
    request = pb.GenerateRequest(prompt=prompt, options=pb.GenerationOptions(**options))  # type: ignore[arg-type]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Generate(request, timeout=10)
    return details_of(info.value)


async def stream_events(stub: Stub, prompt: str, **options: object) -> list[pb.GenerateStreamResponse]:
    """Every event of a GenerateStream that ends well."""
    request = pb.GenerateStreamRequest(prompt=prompt, options=pb.GenerationOptions(**options))  # type: ignore[arg-type]
    return [event async for event in stub.GenerateStream(request, timeout=10)]


# --- Sequence: history never starves a lone caller's retries ------------------------------------


async def test_sequence_requests_with_transient_faults_keep_their_retries(
    make_server: ServerFactory, emulator: Emulator
) -> None:
    """Ten requests that each met two transient faults, then one more: all get their attempts.

    (The old A6 token bucket, 10 tokens and 0.1 back per success, refused the
    third request's second retry.)
    """
    async with make_server() as server, grpc.aio.insecure_channel(server.target) as channel:
        stub = Stub(channel)
        for i in range(11):
            scenario = emulator.scenario(TRANSIENT[i % len(TRANSIENT)], TRANSIENT[(i + 1) % len(TRANSIENT)], "ok")
            response = await stub.Generate(pb.GenerateRequest(prompt=f"cat {scenario.marker}"), timeout=10)
            assert response.generation.attempts == 3 == scenario.stats.received, f"request {i}"


async def test_sequence_after_ten_failed_requests_the_next_transient_fault_is_retried(
    make_server: ServerFactory, emulator: Emulator
) -> None:
    """A fresh server sees ten requests fail on every attempt, then a request with one transient fault."""
    async with make_server() as server, grpc.aio.insecure_channel(server.target) as channel:
        stub = Stub(channel)
        for i in range(10):
            scenario = emulator.scenario(TRANSIENT[i % len(TRANSIENT)])
            details = await fail(stub, f"cat {scenario.marker}")
            assert details.metadata["attempts"] == "3" and details.metadata["stopReason"] == "attempts_exhausted"
            assert scenario.stats.received == 3
        scenario = emulator.scenario("overloaded", "ok")
        events = await stream_events(stub, f"cat {scenario.marker}")
    failed = [e.attempt_failed for e in events if e.HasField("attempt_failed")]
    assert len(failed) == 1 and failed[0].will_retry and failed[0].reason == "UPSTREAM_UNAVAILABLE"
    assert events[-1].completed.attempts == 2 == scenario.stats.received
