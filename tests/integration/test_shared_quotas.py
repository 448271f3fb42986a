"""Per-caller quotas across replicas through a real redis-server: two limiters (two replicas' views) on one
Redis, then two real servers with one tokens file."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from pathlib import Path

import grpc
import pytest

from imagegen.v1 import image_generation_service_pb2 as pb
from imagegen.v1 import image_generation_service_pb2_grpc as pb_grpc
from imagegen_server.auth import Quota
from imagegen_server.errors import ServiceError
from imagegen_server.quotas import Lease, LocalCallerLimiter, QuotaExceeded
from imagegen_server.sharedstate.connection import SharedState
from imagegen_server.sharedstate.quotas import RedisCallerLimiter
from tests.conftest import ServerFactory
from tests.integration.status_helpers import details_of
from tests.redis_server import OPERATION_TIMEOUT, RedisServer

Make = Callable[..., RedisCallerLimiter]


@pytest.fixture
async def make_limiter(redis_server: RedisServer) -> AsyncIterator[Make]:
    """Limiters as separate replicas would have them (own clients); their renewals stopped at the end."""
    made: list[tuple[RedisCallerLimiter, SharedState]] = []

    def make(*, fail_open: bool = True, lease_seconds: float = 30.0) -> RedisCallerLimiter:
        state = SharedState.from_url(redis_server.url, fail_open=fail_open, timeout=OPERATION_TIMEOUT)
        limiter = RedisCallerLimiter(state, fallback=LocalCallerLimiter(), lease_seconds=lease_seconds)
        made.append((limiter, state))
        return limiter

    yield make
    for limiter, state in made:
        await limiter.aclose()
        await state.aclose()


async def _admitted(limiter: RedisCallerLimiter, caller: str, quota: Quota) -> Lease | None:
    try:
        return await limiter.acquire(caller, quota)
    except QuotaExceeded:
        return None


async def _eventually_admitted(limiter: RedisCallerLimiter, caller: str, quota: Quota, within: float) -> Lease:
    for _ in range(int(within / 0.05)):
        lease = await _admitted(limiter, caller, quota)
        if lease is not None:
            return lease
        await asyncio.sleep(0.05)
    raise AssertionError(f"{caller} was not admitted within {within} s")


async def test_one_callers_rate_holds_across_replicas(make_limiter: Make) -> None:
    a, b = make_limiter(), make_limiter()
    quota = Quota(requests_per_minute=6, burst=3)
    results = [await _admitted(limiter, "alice", quota) for limiter in (a, b, a, b, a, b)]
    assert sum(r is not None for r in results) == 3, "the burst is the caller's, not each replica's"
    with pytest.raises(QuotaExceeded) as info:
        await b.acquire("alice", quota)
    assert info.value.quota == "requests_per_minute" and info.value.limit == 6
    assert 0 < info.value.retry_after <= 10.0, "one token per 10 s at 6 a minute"
    assert await _admitted(a, "bob", quota) is not None, "another caller has its own bucket"


async def test_one_callers_concurrency_holds_across_replicas_and_comes_back_on_release(make_limiter: Make) -> None:
    a, b = make_limiter(), make_limiter()
    quota = Quota(max_concurrent=2)
    first, second = await a.acquire("alice", quota), await b.acquire("alice", quota)
    with pytest.raises(QuotaExceeded) as info:
        await a.acquire("alice", quota)
    assert info.value.quota == "max_concurrent"
    first.release()
    await _eventually_admitted(b, "alice", quota, within=2.0)
    second.release()


async def test_a_dead_replicas_calls_stop_counting_after_the_lease_time(make_limiter: Make) -> None:
    # Renewed every 0.4 s, a 1.2 s lease survives a renewal 0.8 s late (a loaded machine).
    a, b = make_limiter(lease_seconds=1.2), make_limiter(lease_seconds=1.2)
    quota = Quota(max_concurrent=1)
    await a.acquire("alice", quota)
    # While replica a lives it renews its call's lease: still counted after two lease times.
    await asyncio.sleep(2.5)
    assert await _admitted(b, "alice", quota) is None
    # Replica a dies without releasing: its lease runs out and the slot comes back.
    await a.aclose()
    await _eventually_admitted(b, "alice", quota, within=6.0)


async def test_failing_open_without_redis_each_replica_counts_on_its_own(
    make_limiter: Make, redis_server: RedisServer
) -> None:
    redis_server.stop()
    a, b = make_limiter(fail_open=True), make_limiter(fail_open=True)
    quota = Quota(requests_per_minute=60, burst=1)
    assert await _admitted(a, "alice", quota) is not None
    assert await _admitted(a, "alice", quota) is None, "the replica still enforces the quota itself"
    assert await _admitted(b, "alice", quota) is not None, "but not across replicas"


async def test_failing_closed_without_redis_refuses_callers_with_quotas(
    make_limiter: Make, redis_server: RedisServer
) -> None:
    redis_server.stop()
    with pytest.raises(ServiceError) as info:
        await make_limiter(fail_open=False).acquire("alice", Quota(requests_per_minute=60))
    assert info.value.code is grpc.StatusCode.UNAVAILABLE
    assert info.value.error_info().reason == "SHARED_STATE_UNAVAILABLE"


# --- through real servers ---------------------------------------------------------------------------------

TOKEN = "quota-token"
AUTH = (("authorization", f"Bearer {TOKEN}"),)


def tokens_file(directory: Path, **quota: int) -> Path:
    """A tokens file with one caller, ``limited``, holding ``TOKEN`` and ``quota``."""
    path = directory / "tokens.toml"
    digest = hashlib.sha256(TOKEN.encode()).hexdigest()
    lines = "".join(f"{k} = {v}\n" for k, v in quota.items())
    path.write_text(f'[[callers]]\nname = "limited"\ntoken_sha256 = "{digest}"\n{lines}')
    return path


async def test_two_servers_on_one_redis_enforce_one_quota(
    make_server: ServerFactory, redis_server: RedisServer, tmp_path: Path
) -> None:
    tokens = tokens_file(tmp_path, requests_per_minute=4, burst=4)
    async with AsyncExitStack() as stack:
        servers = [
            await stack.enter_async_context(
                make_server(
                    state_url=redis_server.url,
                    state_timeout=OPERATION_TIMEOUT,
                    auth_tokens_file=str(tokens),
                    state_fail_mode="closed",
                )
            )
            for _ in range(2)
        ]
        stubs = []
        for server in servers:
            channel = await stack.enter_async_context(grpc.aio.insecure_channel(server.target))
            stubs.append(pb_grpc.ImageGenerationServiceStub(channel))
        outcomes: list[str] = []
        for i in range(6):
            try:
                await stubs[i % 2].Generate(pb.GenerateRequest(prompt="a fox"), metadata=AUTH, timeout=30)
                outcomes.append("ok")
            except grpc.aio.AioRpcError as err:
                d = details_of(err)
                assert d.code is grpc.StatusCode.RESOURCE_EXHAUSTED, d
                outcomes.append(d.reason)
        assert outcomes == ["ok"] * 4 + ["CALLER_QUOTA_EXCEEDED"] * 2
