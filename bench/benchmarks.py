"""Latency and throughput benchmarks, each against a baseline measured in the same run.

All run in one process and one event loop: the SDK client, the real gRPC
server and its embedded emulator (the sync client runs in a worker thread).
"""

from __future__ import annotations

import asyncio
import time
from functools import partial

from bench.harness import PROMPT, SEED, SMALL, BenchConfig, Result, Target, latency_results, sample_pair, timed
from imagegen import AsyncClient, Client
from imagegen.v1 import image_generation_service_pb2 as pb
from imagegen_server.app import RunningServer, run_server
from imagegen_server.config import ServerConfig
from imagegen_server.emulator import Emulator
from imagegen_server.gemini.client import GeminiClient
from imagegen_server.gemini.types import UpstreamRequest
from imagegen_server.translation import to_upstream
from imagegen_server.validation import validate

# Targets apply to p50 latency; bench/README.md says why each is what it is.
#: Gateway (SDK -> gRPC server -> emulator) vs GeminiClient -> emulator, at 1K.
OVERHEAD_TARGET = Target("<=", 3.0)
#: GenerateStream vs Generate: three small messages instead of one, SSE upstream.
STREAM_TARGET = Target("<=", 1.5)
#: Sync Client vs AsyncClient for the same sequential calls.
SYNC_TARGET = Target("<=", 1.25)
#: Share of the ideal throughput the server must reach with the slots it has.
CONCURRENCY_EFFICIENCY = 0.8
CONCURRENCY_LIMITS = (16, 64)
CONCURRENCY_SIZE = "512"


def embedded_emulator(server: RunningServer) -> Emulator:
    """The server's embedded emulator (the benchmarks always start one)."""
    if server.emulator is None:
        raise RuntimeError("the benchmarks need a server with its embedded emulator")
    return server.emulator


def upstream_request(image_size: str) -> UpstreamRequest:
    """Exactly the upstream request the server sends for the benchmark prompt."""
    options = pb.GenerationOptions(aspect_ratio="1:1", image_size=image_size, seed=SEED)
    return to_upstream(
        validate(pb.GenerateRequest(prompt=PROMPT, options=options), ServerConfig()), ServerConfig(), seed=SEED
    )


async def gateway_overhead(server: RunningServer, client: AsyncClient, config: BenchConfig) -> list[Result]:
    """1. Generate through the SDK and server vs GeminiClient straight to the same emulator."""
    emulator = embedded_emulator(server)
    results: list[Result] = []
    async with GeminiClient(emulator.base_url, emulator.api_key) as gemini:
        for size, target in (("512", None), ("1K", OVERHEAD_TARGET)):
            direct = partial(timed, partial(gemini.generate, upstream_request(size)))
            gateway = partial(timed, partial(client.generate, PROMPT, aspect_ratio="1:1", image_size=size, seed=SEED))
            base, measured = await sample_pair(direct, gateway, config)
            results += latency_results(f"gateway overhead {size}", "direct", base, measured, target)
    return results


async def _consume_stream(client: AsyncClient, image_size: str) -> None:
    async for _ in client.generate_stream(PROMPT, aspect_ratio="1:1", image_size=image_size, seed=SEED):
        pass


async def streaming_overhead(client: AsyncClient, config: BenchConfig) -> list[Result]:
    """2. GenerateStream vs unary Generate, both through the server, at 1K."""
    unary = partial(timed, partial(client.generate, PROMPT, aspect_ratio="1:1", image_size="1K", seed=SEED))
    stream = partial(timed, partial(_consume_stream, client, "1K"))
    base, measured = await sample_pair(unary, stream, config)
    return latency_results("stream vs unary 1K", "unary", base, measured, STREAM_TARGET)


def _sync_generate(client: Client, image_size: str) -> float:
    """One blocking call, timed inside the worker thread (thread hand-off excluded)."""
    start = time.perf_counter()
    client.generate(PROMPT, aspect_ratio="1:1", image_size=image_size, seed=SEED)
    return time.perf_counter() - start


async def sync_vs_async(server: RunningServer, client: AsyncClient, config: BenchConfig) -> list[Result]:
    """5. The sync Client (in a worker thread, as the server owns the loop) vs the AsyncClient."""
    async_call = partial(timed, partial(client.generate, PROMPT, aspect_ratio="1:1", image_size="1K", seed=SEED))
    with Client(server.target) as sync_client:
        sync_call = partial(asyncio.to_thread, _sync_generate, sync_client, "1K")
        base, measured = await sample_pair(async_call, sync_call, config)
    return latency_results("sync vs async client 1K", "async", base, measured, SYNC_TARGET)


async def _batch(client: AsyncClient, prompt: str, count: int) -> None:
    await asyncio.gather(
        *(client.generate(prompt, aspect_ratio="1:1", image_size=CONCURRENCY_SIZE, seed=SEED) for _ in range(count))
    )


async def _throughput(max_concurrency: int, config: BenchConfig) -> Result:
    async with run_server(
        ServerConfig(port=0, max_concurrency=max_concurrency, emulator_image_profile=SMALL)
    ) as server:
        scenario = embedded_emulator(server).scenario(f"latency:{config.latency:g}+ok")
        async with AsyncClient(server.target) as client:
            await _batch(client, PROMPT, config.concurrent)  # warm-up, no latency
            start = time.perf_counter()
            for _ in range(config.batches):
                await _batch(client, scenario.mark(PROMPT), config.concurrent)
            elapsed = time.perf_counter() - start
    requests = config.concurrent * config.batches
    # With fewer slots than requests, each batch needs ceil(n / slots) rounds.
    capacity = min(1.0, max_concurrency / config.concurrent)
    return Result(
        name=f"concurrency {config.concurrent} @ max_concurrency={max_concurrency}",
        metric="req/s",
        baseline_label="ideal",
        baseline=config.concurrent / config.latency,
        measured=requests / elapsed,
        target=Target(">=", round(CONCURRENCY_EFFICIENCY * capacity, 3)),
        details={"requests": requests, "seconds": round(elapsed, 3), "upstream_latency_s": config.latency},
    )


async def concurrency(config: BenchConfig) -> list[Result]:
    """3. Throughput of concurrent batches over a fixed-latency upstream vs the ideal n / latency."""
    return [await _throughput(limit, config) for limit in CONCURRENCY_LIMITS]
