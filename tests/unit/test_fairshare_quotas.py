"""FairSlots (round-robin across callers, FIFO per caller) and the local per-caller quotas, with a fake clock."""

from __future__ import annotations

import asyncio

import pytest

from imagegen_server.auth import Quota
from imagegen_server.fairshare import FairSlots
from imagegen_server.inflight import RequestBytes
from imagegen_server.quotas import LocalCallerLimiter, QuotaExceeded, burst_of


async def test_waiting_callers_take_turns_and_each_callers_calls_keep_their_order() -> None:
    slots = FairSlots(1)
    await slots.acquire("flood")  # the one slot is busy
    served: list[str] = []

    async def call(caller: str, n: int) -> None:
        await slots.acquire(caller)
        served.append(f"{caller}{n}")
        slots.release()

    # The flooder queues five calls before the others queue one or two each.
    tasks = [asyncio.create_task(call("flood", i)) for i in range(5)]
    await asyncio.sleep(0)
    tasks += [asyncio.create_task(call("quiet", 0)), asyncio.create_task(call("other", 0))]
    await asyncio.sleep(0)
    tasks.append(asyncio.create_task(call("quiet", 1)))
    await asyncio.sleep(0)
    assert slots.waiting() == 8 and slots.waiting("flood") == 5
    slots.release()
    await asyncio.gather(*tasks)
    assert served == ["flood0", "quiet0", "other0", "flood1", "quiet1", "flood2", "flood3", "flood4"]
    assert slots.in_use == 0 and slots.waiting() == 0


async def test_a_wait_that_times_out_leaves_no_slot_taken_and_no_queue_entry() -> None:
    slots = FairSlots(1)
    await slots.acquire("a")
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await slots.acquire("b")
    assert slots.waiting() == 0
    slots.release()
    assert slots.in_use == 0
    await slots.acquire("c")  # free again: taken at once
    assert slots.in_use == 1


async def test_a_slot_handed_over_as_the_wait_is_cancelled_is_passed_on() -> None:
    slots = FairSlots(1)
    await slots.acquire("a")
    waiter = asyncio.create_task(slots.acquire("b"))
    nxt = asyncio.create_task(slots.acquire("c"))
    await asyncio.sleep(0)
    slots.release()  # hands the slot to b...
    waiter.cancel()  # ...which leaves before running
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await asyncio.wait_for(nxt, 1)  # c got it
    assert slots.in_use == 1 and slots.waiting() == 0


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def now(self) -> float:
        return self.t


async def test_requests_per_minute_is_a_token_bucket_with_retry_after() -> None:
    clock = FakeClock()
    limiter = LocalCallerLimiter(clock.now)
    quota = Quota(requests_per_minute=60, burst=3)
    for _ in range(3):
        (await limiter.acquire("a", quota)).release()
    with pytest.raises(QuotaExceeded) as exceeded:
        await limiter.acquire("a", quota)
    assert exceeded.value.quota == "requests_per_minute" and exceeded.value.retry_after == pytest.approx(1.0)
    # Another caller has its own bucket.
    await limiter.acquire("b", quota)
    clock.t += 0.5
    with pytest.raises(QuotaExceeded) as again:
        await limiter.acquire("a", quota)
    assert again.value.retry_after == pytest.approx(0.5)
    clock.t += 0.5
    await limiter.acquire("a", quota)
    # The default burst is a tenth of a minute's worth, at least one.
    assert burst_of(Quota(requests_per_minute=600)) == 60 and burst_of(Quota(requests_per_minute=5)) == 1


async def test_max_concurrent_counts_running_calls() -> None:
    limiter = LocalCallerLimiter(FakeClock().now)
    quota = Quota(max_concurrent=2)
    first, second = await limiter.acquire("a", quota), await limiter.acquire("a", quota)
    with pytest.raises(QuotaExceeded) as exceeded:
        await limiter.acquire("a", quota)
    assert exceeded.value.quota == "max_concurrent" and exceeded.value.retry_after > 0
    first.release()
    first.release()  # idempotent
    assert limiter.running("a") == 1
    third = await limiter.acquire("a", quota)
    second.release()
    third.release()
    assert limiter.running("a") == 0


def test_request_bytes_bound() -> None:
    bound = RequestBytes(100)
    assert bound.try_reserve(60) and not bound.try_reserve(50) and bound.held == 60
    bound.release(60)
    assert bound.try_reserve(100) and bound.held == 100


def test_the_default_memory_bound_is_sized_for_the_machine() -> None:
    from imagegen_server.inflight import default_bound, usable_memory

    assert usable_memory() > 0
    bound = default_bound(64 << 20)
    assert 64 << 20 <= bound <= 1 << 30
    assert bound == max(64 << 20, min(usable_memory() // 64, 1 << 30))
    assert default_bound(2 << 30) == 2 << 30  # never below one largest message
