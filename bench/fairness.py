"""Issue 12's fairness figures: a second caller's median latency while another caller floods the gateway.

Usage: ``python -m bench.fairness``. Loopback only, in-process server and emulator (every upstream call
answers after 0.5 s), about a minute. Three runs, each measuring the steady caller (9 calls, one at a
time) alone and then during a flood of 16 concurrent workers:

* ``quota``: the flooder has a quota (300/min, burst 10, 3 concurrent) and 4 upstream slots;
* ``no quota, fair``: the flooder has no quota, 4 slots queued per caller (round-robin);
* ``no quota, FIFO``: the same with one FIFO queue for all callers (what the server did before).
"""

from __future__ import annotations

import asyncio
import hashlib
import statistics
import tempfile
import time
from pathlib import Path

import imagegen
from imagegen_server.app import run_server
from imagegen_server.config import ServerConfig
from imagegen_server.emulator import Emulator

LATENCY = 0.5
STEADY_CALLS = 9
WORKERS = 16


class FifoSlots:
    """The old behaviour, for comparison: one FIFO queue whoever calls (an asyncio.Semaphore)."""

    def __init__(self, capacity: int) -> None:
        self._semaphore = asyncio.Semaphore(capacity)

    async def acquire(self, caller: str) -> None:
        await self._semaphore.acquire()

    def release(self) -> None:
        self._semaphore.release()

    def waiting(self, caller: str | None = None) -> int:
        return 0


def _sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def _steady(client: imagegen.AsyncClient, marker: str) -> float:
    latencies = []
    for i in range(STEADY_CALLS):
        start = time.perf_counter()
        await client.generate(f"steady {i} {marker}")
        latencies.append(time.perf_counter() - start)
        await asyncio.sleep(0.05)
    return statistics.median(latencies)


async def _run(emulator: Emulator, name: str, flood_quota: str, fifo: bool) -> str:
    marker = emulator.scenario(f"latency:{LATENCY}+ok").marker
    with tempfile.TemporaryDirectory() as tmp:
        tokens = Path(tmp) / "tokens.toml"
        tokens.write_text(
            f'[[callers]]\nname = "flood"\ntoken_sha256 = "{_sha("flood")}"\n{flood_quota}\n'
            f'[[callers]]\nname = "steady"\ntoken_sha256 = "{_sha("steady")}"\n'
        )
        config = ServerConfig(
            port=0,
            upstream_url=emulator.base_url,
            api_key=emulator.api_key,
            auth_tokens_file=str(tokens),
            max_concurrency=4,
            queue_timeout=30,
        )
        async with (
            run_server(config) as server,
            imagegen.AsyncClient(server.target, bearer_token="steady") as steady,
            imagegen.AsyncClient(server.target, bearer_token="flood", timeout=60) as flood,
        ):
            if fifo:
                server.pipeline._slots = FifoSlots(config.max_concurrency)  # type: ignore[assignment]
            alone = await _steady(steady, marker)
            done = asyncio.Event()
            counts = {"ok": 0, "refused": 0}

            async def flooder(n: int) -> None:
                i = 0
                while not done.is_set():
                    i += 1
                    try:
                        await flood.generate(f"flood {n}.{i} {marker}")
                        counts["ok"] += 1
                    except imagegen.RateLimitError:
                        counts["refused"] += 1
                        await asyncio.sleep(0.02)

            workers = [asyncio.create_task(flooder(n)) for n in range(WORKERS)]
            await asyncio.sleep(1.0)
            flooded = await _steady(steady, marker)
            done.set()
            await asyncio.gather(*workers)
    return (
        f"{name:<16} steady p50 alone {alone * 1000:4.0f} ms, flooded {flooded * 1000:5.0f} ms, "
        f"ratio {flooded / alone:5.2f}; flooder {counts['ok']} ok, {counts['refused']} refused"
    )


async def main() -> None:
    """Run the three cases and print one line each."""
    async with Emulator(port=0) as emulator:
        quota = "requests_per_minute = 300\nburst = 10\nmax_concurrent = 3"
        print(await _run(emulator, "quota", quota, fifo=False), flush=True)
        print(await _run(emulator, "no quota, fair", "", fifo=False), flush=True)
        print(await _run(emulator, "no quota, FIFO", "", fifo=True), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
