"""Circuit breakers across replicas through a real redis-server: two breakers (two replicas) on one Redis,
then two real servers on one Redis and one emulator."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack

import grpc
import pytest

from imagegen.v1 import image_generation_service_pb2 as pb
from imagegen.v1 import image_generation_service_pb2_grpc as pb_grpc
from imagegen_server.breaker import BreakerPolicy, CircuitBreaker, CircuitListener, CircuitState
from imagegen_server.emulator import Emulator
from imagegen_server.sharedstate.breaker import RedisBreakerStore
from imagegen_server.sharedstate.connection import SharedState
from tests.conftest import ServerFactory
from tests.integration.status_helpers import details_of
from tests.redis_server import OPERATION_TIMEOUT, RedisServer

MODEL = "gemini-3.1-flash-image"
POLICY = BreakerPolicy(failure_threshold=2, open_seconds=0.5, max_open_seconds=2.0, probe_timeout=5.0)


class WallClock:
    """The replicas' (synchronised) wall clock, moved by the test: an open time passes exactly, whatever the load."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def wall_clock() -> WallClock:
    return WallClock()


@pytest.fixture
async def make_breaker(
    redis_server: RedisServer, wall_clock: WallClock
) -> AsyncIterator[Callable[..., CircuitBreaker]]:
    """Breakers as separate replicas would have them (own clients, one wall clock)."""
    states: list[SharedState] = []

    def make(listener: CircuitListener | None = None) -> CircuitBreaker:
        state = SharedState.from_url(redis_server.url, fail_open=True, timeout=OPERATION_TIMEOUT)
        states.append(state)
        return CircuitBreaker(POLICY, store=RedisBreakerStore(state, ttl=60), clock=wall_clock, listener=listener)

    yield make
    for state in states:
        await state.aclose()


async def test_a_circuit_opened_on_one_replica_fails_fast_on_the_other_and_one_probe_closes_it(
    make_breaker: Callable[..., CircuitBreaker], wall_clock: WallClock
) -> None:
    seen_by_a: list[CircuitState] = []
    a = make_breaker(lambda model, state, retry_after: seen_by_a.append(state))
    b = make_breaker()
    await a.request_failed(MODEL)
    await b.request_failed(MODEL)  # failures count across replicas: two in a row, one on each
    assert (await a.state(MODEL)).state is CircuitState.OPEN
    refused = await b.admit(MODEL)
    assert not refused.allowed and 0 < refused.retry_after <= POLICY.open_seconds
    wall_clock.now += POLICY.open_seconds + 0.1
    probe = await b.admit(MODEL)
    assert probe.allowed and probe.probe
    assert not (await a.admit(MODEL)).allowed, "one probe for all replicas"
    await b.served(MODEL)
    assert (await a.admit(MODEL)).allowed and (await a.state(MODEL)).state is CircuitState.CLOSED
    # A replica reports (to its metrics and log) each state it meets, also when another replica made it:
    # a only looked while b probed, and after.
    assert seen_by_a == [CircuitState.HALF_OPEN, CircuitState.CLOSED]


async def test_without_redis_each_replica_keeps_its_own_breaker(
    make_breaker: Callable[..., CircuitBreaker], redis_server: RedisServer
) -> None:
    a, b = make_breaker(), make_breaker()
    await redis_server.astop()
    await a.request_failed(MODEL)
    await a.request_failed(MODEL)
    assert not (await a.admit(MODEL)).allowed, "the replica's own breaker still protects upstream"
    assert (await b.admit(MODEL)).allowed


async def test_two_servers_on_one_redis_share_the_circuit(
    make_server: ServerFactory, emulator: Emulator, redis_server: RedisServer
) -> None:
    outage = emulator.scenario("overloaded")
    settings = {
        "state_url": redis_server.url,
        "state_timeout": OPERATION_TIMEOUT,
        "max_attempts": 1,
        "breaker_failure_threshold": 2,
        "breaker_open_seconds": 30.0,
    }
    async with AsyncExitStack() as stack:
        stubs = []
        for _ in range(2):
            server = await stack.enter_async_context(make_server(**settings))
            channel = await stack.enter_async_context(grpc.aio.insecure_channel(server.target))
            stubs.append(pb_grpc.ImageGenerationServiceStub(channel))
        request = pb.GenerateRequest(prompt=f"a fox {outage.marker}")
        for _ in range(2):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stubs[0].Generate(request, timeout=30)
            assert details_of(info.value).reason == "UPSTREAM_UNAVAILABLE"
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stubs[1].Generate(request, timeout=30)
        d = details_of(info.value)
        assert (d.code, d.reason) == (grpc.StatusCode.UNAVAILABLE, "CIRCUIT_OPEN")
        assert d.retry_delay is not None and 0 < d.retry_delay <= 30
        assert outage.stats.received == 2, "the other replica failed fast, without an upstream attempt"
