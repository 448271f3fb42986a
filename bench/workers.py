"""``imagegen serve --workers N`` against ``--workers 1``: requests/s of the real command, side by side.

Both servers run as ``python -m imagegen_cli serve`` (the console script's code) against the same
emulator, at the same time on different ports, and runs alternate between them. The kernel spreads
*connections* over the workers (``SO_REUSEPORT``), so the load comes from several SDK clients, each on
its own connection (``grpc.use_local_subchannel_pool``: gRPC would otherwise share one connection
between channels to the same address), calls dealt round-robin over them.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import imagegen
from bench.harness import PROMPT, SEED
from bench.procs import REPO
from bench.relay import MODEL

#: A connection of its own per client.
OWN_CONNECTION = (("grpc.use_local_subchannel_pool", 1),)


@asynccontextmanager
async def serve(workers: int, upstream_url: str, api_key: str, max_concurrency: int) -> AsyncIterator[str]:
    """``imagegen serve --workers N`` on a free port; yields its address once every worker listens."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEGEN_")}
    env.update(GEMINI_API_KEY=api_key, IMAGEGEN_LOG_FORMAT="text")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "imagegen_cli",
        "serve",
        "--port",
        "0",
        "--workers",
        str(workers),
        "--upstream-url",
        upstream_url,
        "--max-concurrency",
        str(max_concurrency),
        "--queue-timeout",
        "60",
        cwd=REPO,
        env=env,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    try:
        addresses: list[str] = []
        while len(addresses) < workers:
            line = (await asyncio.wait_for(proc.stderr.readline(), 60)).decode()
            if not line:
                raise RuntimeError(f"serve --workers {workers} exited before listening")
            if match := re.search(r"listening on (\S+)", line):
                addresses.append(match.group(1))
        drain = asyncio.create_task(_drain(proc.stderr))  # a full pipe would block the server's logging
        yield addresses[0]
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if "drain" in locals():
            drain.cancel()


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass


async def _rps(pool: list[imagegen.AsyncClient], size: str, requests: int, concurrency: int) -> float:
    deal = itertools.cycle(pool)
    remaining = iter(range(requests))

    async def worker() -> None:
        for _ in remaining:
            await next(deal).generate(PROMPT, model=MODEL, aspect_ratio="1:1", image_size=size, seed=SEED)

    loop = asyncio.get_running_loop()
    start = loop.time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return requests / (loop.time() - start)


async def compare_workers(
    upstream_url: str,
    api_key: str,
    *,
    counts: tuple[int, ...],
    size: str,
    concurrency: int,
    requests: int,
    repeats: int,
    connections: int,
) -> dict[int, list[float]]:
    """Requests/s per run for each worker count, runs alternating between the servers."""
    async with AsyncExitStack() as stack:
        pools: dict[int, list[imagegen.AsyncClient]] = {}
        for count in counts:
            target = await stack.enter_async_context(serve(count, upstream_url, api_key, concurrency))
            pools[count] = [
                await stack.enter_async_context(imagegen.AsyncClient(target, timeout=300, options=OWN_CONNECTION))
                for _ in range(connections)
            ]
        for pool in pools.values():  # warm-up: every connection, code path and the emulator's cache
            await _rps(pool, size, 2 * connections, connections)
        runs: dict[int, list[float]] = {count: [] for count in counts}
        for _ in range(repeats):
            for count, pool in pools.items():
                runs[count].append(await _rps(pool, size, requests, concurrency))
        return runs
