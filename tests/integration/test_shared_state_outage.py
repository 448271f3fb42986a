"""Redis going away and coming back while two real servers serve (failing open, the default): they keep
serving on their own state, log the outage once and its end once, count it, and share again afterwards.
A hung Redis (SIGSTOP) never hangs a call."""

from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack

import grpc
import pytest

from imagegen.v1 import image_generation_service_pb2 as pb
from imagegen.v1 import image_generation_service_pb2_grpc as pb_grpc
from imagegen_server.app import RunningServer
from imagegen_server.emulator import Emulator
from imagegen_server.sharedstate.connection import RETRY_INTERVAL
from tests.conftest import ServerFactory
from tests.redis_server import OPERATION_TIMEOUT, RedisServer

Stub = pb_grpc.ImageGenerationServiceStub
LOGGER = "imagegen_server.sharedstate.connection"


async def _start(stack: AsyncExitStack, make_server: ServerFactory, url: str) -> tuple[list[RunningServer], list[Stub]]:
    servers, stubs = [], []
    for _ in range(2):
        # The outage below is a stopped Redis (refused at once): the timeout only has to outlast a loaded machine.
        server = await stack.enter_async_context(make_server(state_url=url, state_timeout=OPERATION_TIMEOUT))
        channel = await stack.enter_async_context(grpc.aio.insecure_channel(server.target))
        servers.append(server)
        stubs.append(Stub(channel))
    return servers, stubs


async def _both(stubs: list[Stub], emulator: Emulator, request_id: str) -> int:
    """Send one request id to both servers at once; how many upstream calls it made."""
    scenario = emulator.scenario("latency:0.5")
    request = pb.GenerateRequest(
        prompt=f"a fox {scenario.marker}", options=pb.GenerationOptions(request_id=request_id, seed=1)
    )
    replies = await asyncio.gather(*(stub.Generate(request, timeout=30) for stub in stubs))
    assert all(reply.generation.image.data for reply in replies), "every caller is served"
    return scenario.stats.received


def _errors(server: RunningServer) -> float:
    text = server.metrics.exposition().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("imagegen_shared_state_errors_total{")
    )


async def test_failing_open_serves_through_an_outage_logs_it_once_and_recovers(
    make_server: ServerFactory, emulator: Emulator, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    async with AsyncExitStack() as stack:
        servers, stubs = await _start(stack, make_server, redis_server.url)
        assert await _both(stubs, emulator, "before") == 1

        await redis_server.astop()
        calls = [await _both(stubs, emulator, f"during-{i}") for i in range(3)]
        # Each replica deduplicates on its own: one call per replica, never a refusal.
        assert calls == [2, 2, 2]
        local = emulator.scenario("latency:0.5")
        request = pb.GenerateRequest(
            prompt=f"a fox {local.marker}", options=pb.GenerationOptions(request_id="same-replica", seed=1)
        )
        await asyncio.gather(stubs[0].Generate(request, timeout=30), stubs[0].Generate(request, timeout=30))
        assert local.stats.received == 1, "duplicates on one replica still share one call"
        assert all(_errors(server) > 0 for server in servers)
        down = [r for r in caplog.records if "unreachable" in r.getMessage()]
        assert len(down) == 2, "one warning per replica, not one per call"

        await redis_server.astart()
        await asyncio.sleep(RETRY_INTERVAL + 0.1)
        assert await _both(stubs, emulator, "after") == 1, "shared again once Redis answers"
        back = [r for r in caplog.records if "reachable again" in r.getMessage()]
        assert len(back) == 2
        assert all("redis://" in r.getMessage() for r in down + back)


async def test_a_hung_redis_never_hangs_a_call(
    make_server: ServerFactory, emulator: Emulator, redis_server: RedisServer
) -> None:
    async with AsyncExitStack() as stack:
        server = await stack.enter_async_context(make_server(state_url=redis_server.url, state_timeout=0.3))
        channel = await stack.enter_async_context(grpc.aio.insecure_channel(server.target))
        stub = Stub(channel)
        request = pb.GenerateRequest(prompt="a fox", options=pb.GenerationOptions(request_id="hung"))
        assert (await stub.Generate(request, timeout=30)).generation.image.data
        redis_server.pause()
        try:
            fresh = pb.GenerateRequest(prompt="a fox", options=pb.GenerationOptions(request_id="while-hung"))
            # Served from this replica's own state once the Redis call times out (0.3 s), well within 10 s.
            assert (await stub.Generate(fresh, timeout=10)).generation.image.data
            assert _errors(server) > 0
        finally:
            redis_server.resume()
