"""The in-process idempotency store: sharing, takeover signals, byte budget, TTL, key scoping."""

from __future__ import annotations

import asyncio

import pytest

from imagegen_server.idempotency import (
    ENTRY_OVERHEAD,
    Abandoned,
    FingerprintMismatch,
    IdempotencyKey,
    IdempotencyStore,
    MemoryIdempotencyStore,
)


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def store(max_bytes: int = 10_000, ttl: float = 60.0, clock: Clock | None = None) -> MemoryIdempotencyStore[bytes]:
    return MemoryIdempotencyStore(ttl=ttl, max_bytes=max_bytes, sizeof=len, clock=clock or Clock())


def key(request_id: str, caller: str = "") -> IdempotencyKey:
    return IdempotencyKey(caller=caller, method="Generate", request_id=request_id)


def test_the_memory_store_is_an_idempotency_store() -> None:
    _: IdempotencyStore[bytes] = store()  # mypy checks the protocol


def test_keys_are_scoped_by_caller_and_method() -> None:
    assert str(key("r1")) != str(key("r1", caller="alice"))
    assert str(IdempotencyKey("a|Generate", "x", "r")) != str(IdempotencyKey("a", "Generate|x", "r"))


async def test_duplicates_share_the_owners_result_and_repeats_reuse_it() -> None:
    s = store()
    owner = await s.claim(key("r1"), b"fp")
    dup = await s.claim(key("r1"), b"fp")
    assert owner.owner and not dup.owner
    waiting = asyncio.ensure_future(s.wait(dup, 5))
    await s.resolve(owner, b"image")
    assert await waiting == b"image"
    repeat = await s.claim(key("r1"), b"fp")
    assert not repeat.owner and await s.wait(repeat, 0) == b"image"
    with pytest.raises(FingerprintMismatch):
        await s.claim(key("r1"), b"other request")
    assert (await s.claim(key("r1", caller="bob"), b"other request")).owner


async def test_a_waiter_times_out_without_disturbing_the_owner() -> None:
    s = store()
    owner = await s.claim(key("r1"), b"fp")
    dup = await s.claim(key("r1"), b"fp")
    with pytest.raises(TimeoutError):
        await s.wait(dup, 0.01)
    await s.resolve(owner, b"image")
    assert await s.wait(dup, 1) == b"image"


async def test_a_shared_failure_reaches_waiters_and_is_not_kept() -> None:
    s = store()
    owner = await s.claim(key("r1"), b"fp")
    dup = await s.claim(key("r1"), b"fp")
    await s.fail(owner, ValueError("upstream said no"))
    with pytest.raises(ValueError, match="upstream said no"):
        await s.wait(dup, 1)
    assert (await s.claim(key("r1"), b"fp")).owner, "a retry after a failure really retries"


async def test_an_abandoned_key_is_taken_over_by_one_waiter() -> None:
    s = store()
    owner = await s.claim(key("r1"), b"fp")
    dups = [await s.claim(key("r1"), b"fp") for _ in range(2)]
    await s.abandon(owner)
    for dup in dups:
        with pytest.raises(Abandoned):
            await s.wait(dup, 1)
    first, second = [await s.claim(key("r1"), b"fp") for _ in range(2)]
    assert first.owner and not second.owner
    await s.resolve(first, b"image")
    assert await s.wait(second, 1) == b"image"
    # The old owner's late report cannot touch the new owner's entry.
    await s.fail(owner, ValueError("late"))
    assert await s.wait(await s.claim(key("r1"), b"fp"), 0) == b"image"


async def test_the_byte_budget_evicts_the_oldest_results() -> None:
    overhead = ENTRY_OVERHEAD + len(str(key("r1")))
    s = store(max_bytes=2 * (overhead + 1000))
    for name in ("r1", "r2", "r3"):
        claim = await s.claim(key(name), b"fp")
        await s.resolve(claim, b"x" * 1000)
    assert len(s) == 2 and s.used_bytes <= 2 * (overhead + 1000)
    assert (await s.claim(key("r1"), b"fp")).owner, "the oldest result was evicted"
    assert not (await s.claim(key("r3"), b"fp")).owner


async def test_a_result_larger_than_the_budget_is_delivered_but_not_kept() -> None:
    s = store(max_bytes=2000)
    owner = await s.claim(key("big"), b"fp")
    dup = await s.claim(key("big"), b"fp")
    await s.resolve(owner, b"x" * 5000)
    assert await s.wait(dup, 1) == b"x" * 5000
    assert len(s) == 0 and s.used_bytes == 0


async def test_pending_entries_are_never_evicted() -> None:
    s = store(max_bytes=1)
    owners = [await s.claim(key(f"r{i}"), b"fp") for i in range(3)]
    for i in range(3):
        assert not (await s.claim(key(f"r{i}"), b"fp")).owner
    for claim in owners:
        await s.resolve(claim, b"done")
    assert len(s) == 0 and s.used_bytes == 0


async def test_results_expire_after_the_ttl() -> None:
    clock = Clock()
    s = store(ttl=10, clock=clock)
    await s.resolve(await s.claim(key("r1"), b"fp"), b"image")
    clock.t = 9
    assert not (await s.claim(key("r1"), b"fp")).owner
    clock.t = 11
    assert (await s.claim(key("r1"), b"fp")).owner
