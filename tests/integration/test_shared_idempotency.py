"""Request ids across replicas through a real redis-server: two stores (two replicas' views) on one Redis,
then two real servers on one Redis and one emulator."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack

import grpc
import pytest

from imagegen.v1 import image_generation_service_pb2 as pb
from imagegen.v1 import image_generation_service_pb2_grpc as pb_grpc
from imagegen.v1 import image_pb2
from imagegen_server import errors
from imagegen_server.app import RunningServer
from imagegen_server.emulator import Emulator
from imagegen_server.errors import ServiceError
from imagegen_server.idempotency import Abandoned, FingerprintMismatch, IdempotencyKey, MemoryIdempotencyStore
from imagegen_server.sharedstate.connection import SharedState
from imagegen_server.sharedstate.idempotency import RedisIdempotencyStore
from imagegen_server.sharedstate.stores import GENERATION_CODEC
from tests.conftest import ServerFactory
from tests.integration.status_helpers import details_of
from tests.redis_server import OPERATION_TIMEOUT, RedisServer

Store = RedisIdempotencyStore[image_pb2.Generation]
KEY = IdempotencyKey("anonymous", "Generate", "req-1")
FP = b"fingerprint-1"


def _generation(name: str, size: int = 10) -> image_pb2.Generation:
    return image_pb2.Generation(generation_id=name, image=image_pb2.Image(data=b"x" * size, mime_type="image/png"))


@pytest.fixture
async def make_store(redis_server: RedisServer) -> AsyncIterator[Callable[..., Store]]:
    """Stores as separate replicas would have them (own clients); their renewals stopped at the end."""
    made: list[tuple[Store, SharedState]] = []

    def make(*, fail_open: bool = True, lease_seconds: float = 10.0, max_result_bytes: int = 1 << 20) -> Store:
        state = SharedState.from_url(redis_server.url, fail_open=fail_open, timeout=OPERATION_TIMEOUT)
        local: MemoryIdempotencyStore[image_pb2.Generation] = MemoryIdempotencyStore(
            ttl=60, max_bytes=1 << 20, sizeof=lambda g: g.ByteSize(), clock=lambda: 0.0
        )
        store = RedisIdempotencyStore(
            state,
            ttl=60,
            max_result_bytes=max_result_bytes,
            codec=GENERATION_CODEC,
            fallback=local,
            lease_seconds=lease_seconds,
        )
        made.append((store, state))
        return store

    yield make
    for store, state in made:
        await store.aclose()
        await state.aclose()


async def test_a_duplicate_on_another_replica_gets_the_owners_result(make_store: Callable[..., Store]) -> None:
    a, b = make_store(), make_store()
    owner = await a.claim(KEY, FP)
    follower = await b.claim(KEY, FP)
    assert owner.owner and not follower.owner
    waiting = asyncio.ensure_future(b.wait(follower, 5))
    await asyncio.sleep(0.2)
    assert not waiting.done(), "the follower waits while the owner works"
    await a.resolve(owner, _generation("g1"))
    assert (await waiting).generation_id == "g1"
    # A repeat after the owner finished reads the stored result, on either replica.
    repeat = await b.claim(KEY, FP)
    assert not repeat.owner and (await b.wait(repeat, 1)).generation_id == "g1"


async def test_the_same_id_for_a_different_request_is_refused_across_replicas(
    make_store: Callable[..., Store],
) -> None:
    a, b = make_store(), make_store()
    owner = await a.claim(KEY, FP)
    with pytest.raises(FingerprintMismatch):
        await b.claim(KEY, b"another request")
    await a.resolve(owner, _generation("g1"))
    with pytest.raises(FingerprintMismatch):
        await b.claim(KEY, b"another request")


async def test_keys_of_other_callers_and_methods_are_separate(make_store: Callable[..., Store]) -> None:
    a = make_store()
    first = await a.claim(KEY, FP)
    other_caller = await a.claim(IdempotencyKey("render-farm", "Generate", "req-1"), FP)
    other_method = await a.claim(IdempotencyKey("anonymous", "Refine", "req-1"), FP)
    assert first.owner and other_caller.owner and other_method.owner


async def test_a_failure_every_duplicate_would_meet_reaches_the_remote_one(make_store: Callable[..., Store]) -> None:
    a, b = make_store(), make_store()
    owner = await a.claim(KEY, FP)
    follower = await b.claim(KEY, FP)
    blocked = errors.invalid_request([errors.FieldViolation("prompt", "blocked")], {"requestId": "req-1"})
    waiting = asyncio.ensure_future(b.wait(follower, 5))
    await a.fail(owner, blocked)
    with pytest.raises(ServiceError) as info:
        await waiting
    assert info.value.status == blocked.status
    assert (await b.claim(KEY, FP)).owner, "failures are not kept: the next request really retries"


async def test_an_abandoned_key_is_taken_over_by_one_duplicate(make_store: Callable[..., Store]) -> None:
    a, b, c = make_store(), make_store(), make_store()
    owner = await a.claim(KEY, FP)
    followers = [await b.claim(KEY, FP), await c.claim(KEY, FP)]
    waits = [asyncio.ensure_future(s.wait(f, 5)) for s, f in zip((b, c), followers, strict=True)]
    await a.abandon(owner)
    for waiting in waits:
        with pytest.raises(Abandoned):
            await waiting
    again = [await b.claim(KEY, FP), await c.claim(KEY, FP)]
    assert [claim.owner for claim in again] == [True, False], "exactly one duplicate becomes the owner"


async def test_when_the_owner_dies_its_lease_expires_and_a_duplicate_takes_over(
    make_store: Callable[..., Store],
) -> None:
    # A 1.2 s lease, renewed every third of it, survives a renewal 0.8 s late (a loaded machine).
    a, b = make_store(lease_seconds=1.2), make_store(lease_seconds=1.2)
    owner = await a.claim(KEY, FP)
    follower = await b.claim(KEY, FP)
    # The owner keeps its lease alive past its first lifetime...
    with pytest.raises(TimeoutError):
        await b.wait(follower, 2.0)
    # ...then its replica dies: no renewal, no answer.
    await a.aclose()
    with pytest.raises(Abandoned):
        await b.wait(follower, 6.0)
    assert (await b.claim(KEY, FP)).owner
    assert owner.owner


async def test_a_result_over_the_size_limit_reaches_only_the_owners_replica(
    make_store: Callable[..., Store],
) -> None:
    a, b = make_store(max_result_bytes=100), make_store(max_result_bytes=100)
    owner = await a.claim(KEY, FP)
    local = await a.claim(KEY, FP)
    remote = await b.claim(KEY, FP)
    waits = [asyncio.ensure_future(a.wait(local, 5)), asyncio.ensure_future(b.wait(remote, 5))]
    await a.resolve(owner, _generation("big", size=1000))
    assert (await waits[0]).generation_id == "big"
    with pytest.raises(Abandoned):
        await waits[1]


async def test_failing_open_without_redis_deduplicates_within_the_replica(
    make_store: Callable[..., Store], redis_server: RedisServer
) -> None:
    redis_server.stop()
    a = make_store(fail_open=True)
    owner = await a.claim(KEY, FP)
    duplicate = await a.claim(KEY, FP)
    assert owner.owner and not duplicate.owner, "in-process dedup still works"
    await a.resolve(owner, _generation("local"))
    assert (await a.wait(duplicate, 1)).generation_id == "local"


async def test_failing_closed_without_redis_refuses_request_ids(
    make_store: Callable[..., Store], redis_server: RedisServer
) -> None:
    redis_server.stop()
    with pytest.raises(ServiceError) as info:
        await make_store(fail_open=False).claim(KEY, FP)
    assert info.value.code is grpc.StatusCode.UNAVAILABLE
    assert info.value.error_info().reason == "SHARED_STATE_UNAVAILABLE"


async def test_a_remote_duplicate_whose_redis_goes_away_runs_the_request_itself_when_failing_open(
    make_store: Callable[..., Store], redis_server: RedisServer
) -> None:
    a, b = make_store(), make_store()
    await a.claim(KEY, FP)
    follower = await b.claim(KEY, FP)
    assert not follower.owner
    await redis_server.astop()
    with pytest.raises(Abandoned):
        await b.wait(follower, 5)
    assert (await b.claim(KEY, FP)).owner, "claimed in the replica's own store"


async def test_a_remote_duplicate_whose_redis_goes_away_is_refused_when_failing_closed(
    make_store: Callable[..., Store], redis_server: RedisServer
) -> None:
    a, b = make_store(fail_open=False), make_store(fail_open=False)
    await a.claim(KEY, FP)
    follower = await b.claim(KEY, FP)
    await redis_server.astop()
    with pytest.raises(ServiceError) as info:
        await b.wait(follower, 5)
    assert info.value.error_info().reason == "SHARED_STATE_UNAVAILABLE"


# --- through real servers ---------------------------------------------------------------------------------


async def _two_servers(stack: AsyncExitStack, make_server: ServerFactory, url: str) -> list[RunningServer]:
    return [
        await stack.enter_async_context(make_server(state_url=url, state_timeout=OPERATION_TIMEOUT)) for _ in range(2)
    ]


async def _stub(stack: AsyncExitStack, server: RunningServer) -> pb_grpc.ImageGenerationServiceStub:
    channel = await stack.enter_async_context(grpc.aio.insecure_channel(server.target))
    return pb_grpc.ImageGenerationServiceStub(channel)


async def test_two_servers_on_one_redis_make_one_upstream_call_for_a_duplicated_id(
    make_server: ServerFactory, emulator: Emulator, redis_server: RedisServer
) -> None:
    scenario = emulator.scenario("latency:1")
    request = pb.GenerateRequest(
        prompt=f"a fox {scenario.marker}", options=pb.GenerationOptions(request_id="twice", seed=1)
    )
    async with AsyncExitStack() as stack:
        servers = await _two_servers(stack, make_server, redis_server.url)
        stubs = [await _stub(stack, s) for s in servers]
        replies = await asyncio.gather(*(stub.Generate(request, timeout=30) for stub in stubs))
        assert scenario.stats.received == 1
        assert replies[0].generation.generation_id == replies[1].generation.generation_id
        assert replies[0].generation.image.data == replies[1].generation.image.data
        # The stream on the other replica, later, gets the stored result too.
        stream = [m async for m in stubs[1].GenerateStream(request, timeout=30)]
        assert stream[-1].completed.generation_id == replies[0].generation.generation_id
        assert scenario.stats.received == 1


async def test_a_server_failing_closed_refuses_request_ids_while_redis_is_down_and_recovers(
    make_server: ServerFactory, emulator: Emulator, redis_server: RedisServer
) -> None:
    async with AsyncExitStack() as stack:
        server = await stack.enter_async_context(
            make_server(state_url=redis_server.url, state_timeout=OPERATION_TIMEOUT, state_fail_mode="closed")
        )
        stub = await _stub(stack, server)
        await redis_server.astop()
        without_id = await stub.Generate(pb.GenerateRequest(prompt="a fox"), timeout=30)
        assert without_id.generation.image.data, "a request without an id needs no shared state"
        with_id = pb.GenerateRequest(prompt="a fox", options=pb.GenerationOptions(request_id="closed-1"))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Generate(with_id, timeout=30)
        d = details_of(info.value)
        assert (d.code, d.reason) == (grpc.StatusCode.UNAVAILABLE, "SHARED_STATE_UNAVAILABLE")
        assert d.retry_delay is not None and d.retry_delay > 0
        await redis_server.astart()
        await asyncio.sleep(1.1)  # the connection rests a second after a failure before trying again
        assert (await stub.Generate(with_id, timeout=30)).generation.image.data
        text = server.metrics.exposition().decode()
        assert 'imagegen_shared_state_errors_total{operation="idempotency"}' in text
