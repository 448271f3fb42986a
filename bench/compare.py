"""``python -m bench compare``: the gateway against what a user would pick instead.

Every figure is a ratio against baselines measured in the same run, on
loopback, with each server in its own process (:mod:`bench.procs`) and the
clients in this one:

* **seed**: the seed's own client (:mod:`bench.seed_client`: aiohttp, stdlib
  json, base64) calling the emulator directly;
* **gateway**: the SDK's ``AsyncClient`` -> the imagegen server -> the same emulator;
* **relay**: the raw generated stub -> the relay floor (:mod:`bench.relay`) -> the same emulator.

Sections: throughput and latency per image size and concurrency; 1000
concurrent streams against 2 s of upstream latency (wall, peak RSS per
in-flight request, event-loop lag) and the same burst through the relay; 64
in flight at 4K; CPU seconds per 1000 generations at 1K. The results go to
``bench/RESULTS.md``. ``--smoke`` does the same with tiny sizes and counts
(for the unit test; its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import logging
import os
import platform
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc

import imagegen
from bench import seed_client
from bench.harness import PROMPT, SEED, percentile
from bench.procs import Child, child, children, supported
from bench.relay import MESSAGE_OPTIONS, MODEL
from bench.workers import compare_workers
from imagegen.v1 import image_generation_service_pb2 as pb
from imagegen.v1 import image_generation_service_pb2_grpc as pb_grpc
from imagegen_server.emulator import DEFAULT_API_KEY
from imagegen_server.models import find_model

RESULTS_PATH = Path(__file__).resolve().parent / "RESULTS.md"
#: Where RESULTS.md's hand-kept section starts; a new run keeps it.
HAND_KEPT = "## Before and after the payload-path work"
PATHS = ("seed", "gateway", "relay")
#: Sizes from small to large (for ordering).
_SIZES = ("512", "1K", "2K", "4K")

Call = Callable[[], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class CompareConfig:
    """How much work the comparison does."""

    profile: str
    sizes: tuple[str, ...]
    concurrencies: tuple[int, ...]
    #: Requests per path per run, by size (at least the concurrency), and runs per cell
    #: (one at 4K and the top concurrency: a single wave of Gemini-sized images takes long).
    cell_requests: dict[str, int]
    repeats: int
    #: The burst: requests, upstream latency, size, repeats (each in fresh server processes).
    burst: int
    burst_latency: float
    burst_size: str
    burst_repeats: int
    #: The large-image memory burst.
    memory_burst: int
    memory_latency: float
    memory_size: str
    memory_repeats: int
    #: Generations (at concurrency ``cpu_concurrency``, size ``cpu_size``) for the CPU figure.
    cpu_requests: int
    cpu_concurrency: int
    cpu_size: str
    #: Each burst in fresh server processes (so heap kept from earlier work hides no growth).
    fresh_processes: bool = True
    #: ``imagegen serve --workers N`` for each N here, at ``workers_concurrency`` over
    #: ``workers_connections`` connections, ``workers_requests`` per run, ``workers_repeats`` runs.
    workers: tuple[int, ...] = (1, 2)
    workers_size: str = "1K"
    workers_concurrency: int = 64
    workers_connections: int = 8
    workers_requests: int = 128
    workers_repeats: int = 3

    @classmethod
    def full(cls) -> CompareConfig:
        return cls(
            profile="realistic",
            sizes=("1K", "2K", "4K"),
            concurrencies=(1, 16, 64),
            cell_requests={"1K": 48, "2K": 16, "4K": 8},
            repeats=5,
            burst=1000,
            burst_latency=2.0,
            burst_size="1K",
            burst_repeats=2,
            memory_burst=64,
            memory_latency=1.0,
            memory_size="4K",
            memory_repeats=1,
            cpu_requests=200,
            cpu_concurrency=16,
            cpu_size="1K",
        )

    @classmethod
    def smoke(cls) -> CompareConfig:
        """Every code path, tiny: small images, a handful of requests."""
        return cls(
            profile="small",
            sizes=("512",),
            concurrencies=(1, 4),
            cell_requests={"512": 4},
            repeats=1,
            burst=8,
            burst_latency=0.05,
            burst_size="512",
            burst_repeats=1,
            memory_burst=4,
            memory_latency=0.05,
            memory_size="512",
            memory_repeats=1,
            cpu_requests=8,
            cpu_concurrency=4,
            cpu_size="512",
            fresh_processes=False,
            workers_size="512",
            workers_concurrency=4,
            workers_connections=2,
            workers_requests=4,
            workers_repeats=1,
        )

    def requests_for(self, size: str, concurrency: int) -> int:
        return max(concurrency, self.cell_requests.get(size, 8))

    def repeats_for(self, size: str, concurrency: int) -> int:
        if size == "4K" and concurrency >= 64:
            return 1
        return self.repeats if size in {"512", "1K"} else min(self.repeats, 2)


# ---------------------------------------------------------------------------------------- clients


def _seed_session(size: str) -> aiohttp.ClientSession:
    """The session the seed would create, plus the one thing it cannot ask for.

    The seed's request has no ``imageConfig``, so Gemini would answer at the
    model's default size (1K). This serializer adds ``imageSize`` (and the
    benchmark's seed, so the emulator serves every path the same cached
    image) to the body, then serializes it with the stdlib json, as aiohttp
    does by default. The seed's code itself is untouched.
    """
    import json

    def serialize(body: Any) -> str:
        config = body["generationConfig"]
        config["imageConfig"] = {"aspectRatio": "1:1", "imageSize": size}
        config["seed"] = SEED
        return json.dumps(body)

    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120), json_serialize=serialize)


@dataclass(slots=True)
class Clients:
    """One client per path, all pointed (directly or not) at the same emulator."""

    emulator_url: str
    gateway: imagegen.AsyncClient
    relay: pb_grpc.ImageGenerationServiceStub
    seeds: dict[str, seed_client.AIGenerationClient] = field(default_factory=dict)

    def seed(self, size: str) -> seed_client.AIGenerationClient:
        if size not in self.seeds:
            client = seed_client.AIGenerationClient(api_key=DEFAULT_API_KEY)
            client.BASE_URL = f"{self.emulator_url}/v1beta"
            client._session = _seed_session(size)
            self.seeds[size] = client
        return self.seeds[size]

    def call(self, path: str, size: str, prompt: str = PROMPT) -> Call:
        """One generation along ``path``, as an awaitable factory."""
        if path == "seed":
            width, height = _pixels(size)
            request = seed_client.GenerationRequest(prompt=prompt, width=width, height=height, model=MODEL)
            client = self.seed(size)

            async def seed_call() -> None:
                await client.generate(request)

            return seed_call
        if path == "gateway":

            async def gateway_call() -> None:
                await self.gateway.generate(prompt, model=MODEL, aspect_ratio="1:1", image_size=size, seed=SEED)

            return gateway_call
        if path == "gateway-stream":

            async def stream_call() -> None:
                async for _ in self.gateway.generate_stream(
                    prompt, model=MODEL, aspect_ratio="1:1", image_size=size, seed=SEED
                ):
                    pass

            return stream_call
        options = pb.GenerationOptions(aspect_ratio="1:1", image_size=size, seed=SEED)
        request = pb.GenerateRequest(prompt=prompt, options=options)

        async def relay_call() -> None:
            await self.relay.Generate(request)

        return relay_call

    async def close(self) -> None:
        for client in self.seeds.values():
            await client.close()


def _pixels(size: str) -> tuple[int, int]:
    spec = find_model(MODEL)
    assert spec is not None
    return spec.pixel_size("1:1", size)


@asynccontextmanager
async def clients(emulator_url: str, gateway: str, relay: str) -> AsyncIterator[Clients]:
    async with (
        imagegen.AsyncClient(gateway, timeout=300) as gateway_client,
        grpc.aio.insecure_channel(relay, options=MESSAGE_OPTIONS) as channel,
    ):
        result = Clients(emulator_url, gateway_client, pb_grpc.ImageGenerationServiceStub(channel))
        try:
            yield result
        finally:
            await result.close()


async def _scenario(emulator_url: str, *steps: str) -> str:
    """Register a scenario through the emulator's admin API; return its prompt marker."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{emulator_url}/emulator/scenarios", json={"steps": list(steps)}) as response,
    ):
        response.raise_for_status()
        marker: str = (await response.json())["marker"]
        return marker


# ------------------------------------------------------------------------------------ measurement


@dataclass(frozen=True, slots=True)
class Run:
    """``n`` calls at a concurrency: the wall time and each call's latency."""

    wall: float
    latencies: tuple[float, ...]
    #: Failed calls by error (only when the run tolerates failures), e.g. ``{"CANCELLED": 3}``.
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.wall


def _error_name(error: Exception) -> str:
    code = getattr(error, "code", None)
    code = code() if callable(code) else code
    return str(getattr(code, "name", None) or type(error).__name__)


async def run_calls(call: Call, n: int, concurrency: int, *, tolerate: bool = False) -> Run:
    """``n`` calls by ``concurrency`` workers, each starting its next call when one ends.

    A failed call fails the run, unless ``tolerate``: then it is counted in ``errors``
    (bursts report how many calls a server under load failed, and how).
    """
    remaining = iter(range(n))
    latencies: list[float] = []
    errors: dict[str, int] = {}

    async def worker() -> None:
        for _ in remaining:
            start = time.perf_counter()
            try:
                await call()
            except Exception as error:
                if not tolerate:
                    raise
                errors[_error_name(error)] = errors.get(_error_name(error), 0) + 1
                continue
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Run(time.perf_counter() - start, tuple(latencies), errors)


@dataclass(slots=True)
class Cell:
    """One (size, concurrency) cell: per path, the runs of every repeat."""

    size: str
    concurrency: int
    requests: int
    runs: dict[str, list[Run]] = field(default_factory=dict)

    def rps(self, path: str) -> float:
        return statistics.median(r.rps for r in self.runs[path])

    def latency_ms(self, path: str, q: float) -> float:
        return statistics.median(percentile(r.latencies, q) for r in self.runs[path]) * 1000

    def paired_rps_ratios(self, path: str, baseline: str) -> list[float]:
        """``path``'s req/s over ``baseline``'s, per run: the two ran back to back in each."""
        return sorted(a.rps / b.rps for a, b in zip(self.runs[path], self.runs[baseline], strict=True))


async def throughput(clients: Clients, config: CompareConfig) -> list[Cell]:
    """Every size x concurrency cell; paths alternate inside each repeat so drift hits all alike."""
    cells = []
    for size in config.sizes:
        for path in PATHS:  # warm-up: connections, code paths, the emulator's cache
            await run_calls(clients.call(path, size), 2, 2)
        for concurrency in config.concurrencies:
            cell = Cell(size, concurrency, config.requests_for(size, concurrency))
            for _ in range(config.repeats_for(size, concurrency)):
                for path in PATHS:
                    run = await run_calls(clients.call(path, size), cell.requests, concurrency)
                    cell.runs.setdefault(path, []).append(run)
            cells.append(cell)
            print(f"  {size} c={concurrency}: " + ", ".join(f"{p} {cell.rps(p):.1f}/s" for p in PATHS), flush=True)
    return cells


@dataclass(frozen=True, slots=True)
class CpuCost:
    """CPU seconds per 1000 generations, by process."""

    path: str
    client: float
    server: float
    emulator: float

    @property
    def total(self) -> float:
        """What the caller pays: its client plus the server it calls (not the upstream)."""
        return self.client + self.server


async def cpu_costs(
    clients: Clients, servers: dict[str, Child], emulator: Child, config: CompareConfig
) -> list[CpuCost]:
    """CPU of the client (this process), the server child and the emulator for the same generations."""
    costs = []
    scale = 1000 / config.cpu_requests
    for path in PATHS:
        call = clients.call(path, config.cpu_size)
        await run_calls(call, config.cpu_concurrency, config.cpu_concurrency)
        server = servers.get(path)
        server_before = (await server.ask("mark"))["cpu"] if server else 0.0
        emulator_before = (await emulator.ask("mark"))["cpu"]
        client_before = time.process_time()
        await run_calls(call, config.cpu_requests, config.cpu_concurrency)
        client = time.process_time() - client_before
        server_cpu = (await server.ask("stats"))["cpu"] - server_before if server else 0.0
        emulator_cpu = (await emulator.ask("stats"))["cpu"] - emulator_before
        costs.append(CpuCost(path, client * scale, server_cpu * scale, emulator_cpu * scale))
    return costs


@dataclass(frozen=True, slots=True)
class Burst:
    """One burst through one fresh server process."""

    path: str
    requests: int
    wall: float
    image_bytes: int
    rss_before: int
    rss_peak: int
    lag_max_ms: float
    lag_p99_ms: float
    #: Calls that failed, by status (none expected).
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def growth_per_request(self) -> float:
        return max(0, self.rss_peak - self.rss_before) / self.requests

    @property
    def image_ratio(self) -> float:
        return self.growth_per_request / self.image_bytes


async def _image_bytes(clients: Clients, size: str) -> int:
    result = await clients.gateway.generate(PROMPT, model=MODEL, aspect_ratio="1:1", image_size=size, seed=SEED)
    return len(result.image.data)


async def burst(
    emulator_url: str,
    path: str,
    size: str,
    count: int,
    latency: float,
    image_bytes: int,
    *,
    stream: bool,
    server: Child | None = None,
) -> Burst:
    """``count`` calls at once against ``latency`` s of upstream latency, through ``server`` or a fresh one."""
    marker = await _scenario(emulator_url, f"latency:{latency:g}+ok")
    kind, args = ("gateway", (emulator_url, str(count))) if path == "gateway" else ("relay", (emulator_url,))
    async with AsyncExitStack() as stack:
        if server is None:
            server = await stack.enter_async_context(child(kind, *args, api_key=DEFAULT_API_KEY))
        cl = await stack.enter_async_context(clients(emulator_url, server.address, server.address))
        await run_calls(cl.call(path, "512"), 8, 8)  # warm-up: threads, channels, code paths
        before = (await server.ask("mark"))["rss"]
        call = cl.call("gateway-stream" if stream else path, size, f"{marker} {PROMPT}")
        run = await run_calls(call, count, count, tolerate=True)
        stats = await server.ask("stats")
    return Burst(
        path="gateway-stream" if stream else path,
        requests=count,
        wall=run.wall,
        image_bytes=image_bytes,
        rss_before=before,
        rss_peak=stats["peak"],
        lag_max_ms=stats["lag_max_ms"],
        lag_p99_ms=stats["lag_p99_ms"],
        errors=run.errors,
    )


@dataclass(slots=True)
class Report:
    """Everything one comparison measured."""

    config: CompareConfig
    command: str
    started: str
    seconds: float = 0.0
    load_before: tuple[float, ...] = ()
    load_after: tuple[float, ...] = ()
    cells: list[Cell] = field(default_factory=list)
    cpu: list[CpuCost] = field(default_factory=list)
    emulator_cpu_per_request_ms: dict[str, float] = field(default_factory=dict)
    bursts: list[Burst] = field(default_factory=list)
    memory: list[Burst] = field(default_factory=list)
    render_ms: dict[str, tuple[float, int]] = field(default_factory=dict)
    #: ``--workers N`` -> requests/s of each run.
    workers: dict[int, list[float]] = field(default_factory=dict)


async def render_times(profile: str, sizes: Sequence[str]) -> dict[str, tuple[float, int]]:
    """Median ms to render (and base64-encode and sign) one uncached image per size, and its bytes.

    As in the emulator: in the event loop's worker threads, which live on
    (a fresh thread per image would also time the page faults of its new
    malloc arena: several times slower on this VM).
    """
    from imagegen_server.emulator.render import Renderer, RenderKey

    out = {}
    for size in sizes:
        renderer = Renderer(profile)
        width, height = _pixels(size)
        key = RenderKey(MODEL, PROMPT, 0, "1:1", size, width, height)
        png = (await renderer.render_encoded(key)).png  # builds the band pool, as on an emulator's first use
        times = []
        for seed in range(1, 6):
            start = time.perf_counter()
            await renderer.render_encoded(RenderKey(MODEL, PROMPT, seed, "1:1", size, width, height))
            times.append(time.perf_counter() - start)
        out[size] = (statistics.median(times) * 1000, len(png))
    return out


async def compare(config: CompareConfig, command: str) -> Report:
    """Run every section; servers in child processes, clients here."""
    if not supported():
        raise SystemExit("bench compare needs Linux /proc (peak RSS of the server processes)")
    report = Report(config, command, datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"))
    report.load_before = os.getloadavg()
    started = time.perf_counter()
    report.render_ms = await render_times(
        config.profile, sorted({*config.sizes, config.burst_size, config.memory_size}, key=_order)
    )
    async with AsyncExitStack() as stack:
        emulator = await stack.enter_async_context(child("emulator", config.profile))
        url = emulator.address
        top = max(config.concurrencies)
        gateway, relay = await stack.enter_async_context(
            children(("gateway", url, str(top)), ("relay", url), api_key=DEFAULT_API_KEY)
        )
        cl = await stack.enter_async_context(clients(url, gateway.address, relay.address))
        print("throughput and latency", flush=True)
        emulator_before = (await emulator.ask("mark"))["cpu"]
        report.cells = await throughput(cl, config)
        emulator_cpu = (await emulator.ask("stats"))["cpu"] - emulator_before
        warmups = 2 * len(PATHS) * len(config.sizes)
        served = warmups + sum(len(r.latencies) for c in report.cells for runs in c.runs.values() for r in runs)
        report.emulator_cpu_per_request_ms["all cells"] = emulator_cpu / served * 1000
        print("cpu per 1000 generations", flush=True)
        report.cpu = await cpu_costs(cl, {"gateway": gateway, "relay": relay}, emulator, config)
        burst_image = await _image_bytes(cl, config.burst_size)
        memory_image = await _image_bytes(cl, config.memory_size)
        reuse = {} if config.fresh_processes else {"gateway": gateway, "relay": relay}
        print(f"burst of {config.burst} at {config.burst_latency:g} s upstream latency", flush=True)
        for _ in range(config.burst_repeats):
            for path, stream in (("gateway", True), ("relay", False)):
                b = await burst(
                    url,
                    path,
                    config.burst_size,
                    config.burst,
                    config.burst_latency,
                    burst_image,
                    stream=stream,
                    server=reuse.get(path),
                )
                report.bursts.append(b)
                print(f"  {b.path}: {b.wall:.1f} s, {b.growth_per_request / 2**20:.2f} MiB/req", flush=True)
        print(f"{config.memory_burst} in flight at {config.memory_size}", flush=True)
        for _ in range(config.memory_repeats):
            for path in ("gateway", "relay"):
                b = await burst(
                    url,
                    path,
                    config.memory_size,
                    config.memory_burst,
                    config.memory_latency,
                    memory_image,
                    stream=False,
                    server=reuse.get(path),
                )
                report.memory.append(b)
                print(f"  {b.path}: {b.image_ratio:.2f}x image bytes per request", flush=True)
        print(f"imagegen serve --workers {', '.join(map(str, config.workers))}", flush=True)
        report.workers = await compare_workers(
            url,
            DEFAULT_API_KEY,
            counts=config.workers,
            size=config.workers_size,
            concurrency=config.workers_concurrency,
            requests=config.workers_requests,
            repeats=config.workers_repeats,
            connections=config.workers_connections,
        )
        print("  " + ", ".join(f"{n}: {statistics.median(r):.1f}/s" for n, r in report.workers.items()), flush=True)
    report.seconds = time.perf_counter() - started
    report.load_after = os.getloadavg()
    return report


def _order(size: str) -> int:
    return _SIZES.index(size) if size in _SIZES else len(_SIZES)


# ---------------------------------------------------------------------------------------- report


def _fmt(value: float) -> str:
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def _ratio(measured: float, baseline: float) -> str:
    return f"{measured / baseline:.2f}x" if baseline else "-"


def _median_burst(bursts: Sequence[Burst], path: str) -> dict[str, float]:
    mine = [b for b in bursts if b.path == path]
    return {
        "wall": statistics.median(b.wall for b in mine),
        "per_request": statistics.median(b.growth_per_request for b in mine),
        "image_ratio": statistics.median(b.image_ratio for b in mine),
        "lag_max_ms": statistics.median(b.lag_max_ms for b in mine),
        "lag_p99_ms": statistics.median(b.lag_p99_ms for b in mine),
        "runs": len(mine),
    }


def _failures(bursts: Sequence[Burst], path: str) -> str:
    counts: dict[str, int] = {}
    for b in bursts:
        if b.path == path:
            for name, n in b.errors.items():
                counts[name] = counts.get(name, 0) + n
    if not counts:
        return "0"
    return f"{sum(counts.values())} (" + ", ".join(f"{n} {name}" for name, n in sorted(counts.items())) + ")"


def _machine() -> str:
    cpu = "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = ""
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        kb = int(meminfo.read_text().split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    versions = []
    for name in ("grpcio", "protobuf", "aiohttp", "orjson", "pybase64"):
        try:
            from importlib.metadata import version

            versions.append(f"{name} {version(name)}")
        except Exception:
            continue
    return (
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs ({cpu}){mem}; "
        f"Python {platform.python_version()}; {', '.join(versions)}"
    )


def _target(ok: bool) -> str:
    return "met" if ok else "**missed**"


def format_report(report: Report) -> str:
    """``bench/RESULTS.md``."""
    c = report.config
    cells = {(cell.size, cell.concurrency): cell for cell in report.cells}
    lines = [
        "# Benchmark results: the gateway against what a user would pick instead",
        "",
        f"- **Command:** `{report.command}` ({report.seconds:.0f} s)",
        f"- **Date:** {report.started}",
        f"- **Machine:** {_machine()}",
        f"- **Load average** (1, 5, 15 min) before: {', '.join(f'{x:.2f}' for x in report.load_before)};"
        f" after: {', '.join(f'{x:.2f}' for x in report.load_after)}.",
        "- **Shared machine:** other helpers ran their test suites on these 2 cores during the run, so absolute",
        "  figures move from run to run. Every figure is a median over several short runs, and every ratio",
        "  compares paths measured in the same run, interleaved (seed, gateway, relay, seed, ...), so drift",
        "  hits them alike. Under contention the scheduler shares the cores among runnable processes, so the",
        "  paths spread over two processes (SDK + gateway, stub + relay) get more of the machine than the",
        "  single-process seed client; the CPU-seconds table is the comparison that load does not skew.",
        f"- **Setup:** everything on loopback. The emulator (`{c.profile}` images, model `{MODEL}`, 1:1,"
        f" fixed seed so it renders each image once and serves it from its cache), the gateway"
        f" (`ServerConfig` defaults, `max_concurrency` raised to the run's concurrency, or to the burst"
        f" size for bursts) and the relay floor each run in their own process; the clients run in the"
        f" benchmark's process.",
        "- **Paths:** *seed* = the seed's Python client (`bench/seed_client.py`: aiohttp, stdlib json,"
        " base64) calling the emulator directly; *gateway* = SDK `AsyncClient` -> imagegen server ->"
        " emulator; *relay* = raw generated stub -> relay floor (`bench/relay.py`: grpc.aio generic"
        " handler, orjson, pybase64, no validation or retries) -> emulator.",
        "",
        "## Emulator",
        "",
        "Render time of one uncached image (PNG assembled from the emulator's precomputed bands, base64,"
        " signature; median of 5, in the benchmark's process before the servers start) and its size."
        " After the first request the emulator"
        " serves an image from its cache.",
        "",
        "| size | PNG bytes | render ms |",
        "|---|---|---|",
    ]
    for size, (ms, size_bytes) in report.render_ms.items():
        lines.append(f"| {size} | {size_bytes / 1e6:.2f} MB | {ms:.1f} |")
    per_request = report.emulator_cpu_per_request_ms.get("all cells", 0.0)
    lines += [
        "",
        f"The emulator process used {per_request:.1f} ms of CPU per request on average over the throughput"
        " section (all sizes), which is what it takes from the other processes on this machine.",
        "",
        "## Throughput and latency",
        "",
        "Requests per path and run: "
        + ", ".join(f"{n} at {size}" for size, n in c.cell_requests.items())
        + f" (at least the concurrency); {c.repeats} runs per cell at 1K, 2 at 2K and 4K, 1 at 4K with"
        f" concurrency {max(c.concurrencies)} (one wave of 22 MB images); medians of the runs. The *runs*"
        " column says how many; *gw/seed per run* lists the gateway/seed req/s ratio of each run (the"
        " two ran back to back), which shows how much the shared machine moved the figures."
        " Ratios: gateway / seed and gateway / relay (above 1 is better for requests/s, below 1 is"
        " better for latency).",
        "",
        "| size | conc. | runs x requests | seed req/s | gateway req/s | relay req/s | gw/seed | gw/relay"
        " | gw/seed per run | seed p50 ms | gateway p50 ms | relay p50 ms | gw/seed p50"
        " | seed p99 ms | gateway p99 ms | relay p99 ms | gw/seed p99 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for cell in report.cells:
        rps = {p: cell.rps(p) for p in PATHS}
        p50 = {p: cell.latency_ms(p, 50) for p in PATHS}
        p99 = {p: cell.latency_ms(p, 99) for p in PATHS}
        row = [
            cell.size,
            str(cell.concurrency),
            f"{len(cell.runs['seed'])} x {cell.requests}",
            *(_fmt(rps[p]) for p in PATHS),
            _ratio(rps["gateway"], rps["seed"]),
            _ratio(rps["gateway"], rps["relay"]),
            " ".join(f"{r:.2f}" for r in cell.paired_rps_ratios("gateway", "seed")),
            *(_fmt(p50[p]) for p in PATHS),
            _ratio(p50["gateway"], p50["seed"]),
            *(_fmt(p99[p]) for p in PATHS),
            _ratio(p99["gateway"], p99["seed"]),
        ]
        lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        f"## CPU seconds per 1000 generations at {c.cpu_size}",
        "",
        f"{c.cpu_requests} generations at concurrency {c.cpu_concurrency}, scaled to 1000. *client* is the"
        " benchmark's process (the caller), *server* the gateway's or relay's process; the caller pays"
        " client + server. The emulator's share is the same work on every path (shown for scale).",
        "",
        "| path | client s | server s | client + server s | vs seed | emulator s |",
        "|---|---|---|---|---|---|",
    ]
    seed_total = next((x.total for x in report.cpu if x.path == "seed"), 0.0)
    for cost in report.cpu:
        lines.append(
            f"| {cost.path} | {cost.client:.2f} | {cost.server:.2f} | {cost.total:.2f} |"
            f" {_ratio(cost.total, seed_total)} | {cost.emulator:.2f} |"
        )
    gw = _median_burst(report.bursts, "gateway-stream") if report.bursts else {}
    rl = _median_burst(report.bursts, "relay") if report.bursts else {}
    image_b = report.bursts[0].image_bytes if report.bursts else 0
    lines += [
        "",
        f"## {c.burst} concurrent calls against {c.burst_latency:g} s of upstream latency at {c.burst_size}",
        "",
        f"All {c.burst} calls start at once; the emulator holds each for {c.burst_latency:g} s, then answers"
        f" a {image_b / 1e6:.2f} MB PNG. Each run uses fresh server processes (median of"
        f" {c.burst_repeats}). *RSS per in-flight request* is the server's peak RSS (VmHWM) minus its RSS"
        f" before the burst, divided by {c.burst}; *lag* is how late a 10 ms timer fired on the server's"
        " event loop during the burst.",
        "",
        "| path | wall s | wall vs relay | RSS per in-flight request | x image bytes | loop lag max ms"
        " | loop lag p99 ms | failed calls (all runs) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, path, row in (
        ("gateway, GenerateStream (SDK)", "gateway-stream", gw),
        ("relay floor, unary (raw stub)", "relay", rl),
    ):
        if row:
            lines.append(
                f"| {name} | {row['wall']:.2f} | {_ratio(row['wall'], rl['wall'])} |"
                f" {row['per_request'] / 2**20:.2f} MiB | {row['image_ratio']:.2f}x | {row['lag_max_ms']:.0f} |"
                f" {row['lag_p99_ms']:.0f} | {_failures(report.bursts, path)} |"
            )
    mg = _median_burst(report.memory, "gateway") if report.memory else {}
    mr = _median_burst(report.memory, "relay") if report.memory else {}
    mem_image = report.memory[0].image_bytes if report.memory else 0
    lines += [
        "",
        f"## {c.memory_burst} in flight at {c.memory_size}",
        "",
        f"{c.memory_burst} unary calls at once, {c.memory_latency:g} s upstream latency, a"
        f" {mem_image / 1e6:.1f} MB PNG each; fresh server processes, median of {c.memory_repeats}.",
        "",
        "| path | wall s | RSS per in-flight request | x image bytes | loop lag max ms | failed calls |",
        "|---|---|---|---|---|---|",
    ]
    for name, path, row in (("gateway (SDK Generate)", "gateway", mg), ("relay floor (raw stub)", "relay", mr)):
        if row:
            lines.append(
                f"| {name} | {row['wall']:.2f} | {row['per_request'] / 2**20:.1f} MiB | {row['image_ratio']:.2f}x |"
                f" {row['lag_max_ms']:.0f} | {_failures(report.memory, path)} |"
            )
    if report.workers:
        single = statistics.median(report.workers[min(report.workers)])
        lines += [
            "",
            f"## `imagegen serve --workers N` at {c.workers_size}, concurrency {c.workers_concurrency}",
            "",
            f"The real command (`python -m imagegen_cli serve --workers N`), N processes sharing one port;"
            f" {c.workers_requests} SDK calls per run over {c.workers_connections} connections (the kernel"
            f" spreads connections, not calls, over the workers), {c.workers_repeats} runs alternating"
            " between the servers, medians. The callers and the emulator share the same 2 cores.",
            "",
            "| workers | req/s | vs 1 worker | req/s per run |",
            "|---|---|---|---|",
        ]
        for count, runs in report.workers.items():
            rps = statistics.median(runs)
            lines.append(f"| {count} | {_fmt(rps)} | {_ratio(rps, single)} | {' '.join(_fmt(r) for r in runs)} |")
    lines += ["", "## Issue 13's targets, against these figures", ""]
    one_k_16 = cells.get(("1K", 16))
    one_k_1 = cells.get(("1K", 1))
    if one_k_16:
        r_seed = one_k_16.rps("gateway") / one_k_16.rps("seed")
        r_relay = one_k_16.rps("gateway") / one_k_16.rps("relay")
        lines.append(
            f"- 1K, concurrency 16: gateway req/s {r_seed:.2f}x the seed's (target >= 2.0x,"
            f" {_target(r_seed >= 2.0)}), {r_relay:.2f}x the relay floor's (target >= 0.8x,"
            f" {_target(r_relay >= 0.8)})."
        )
    if one_k_1:
        r = one_k_1.latency_ms("gateway", 50) / one_k_1.latency_ms("seed", 50)
        lines.append(f"- 1K, concurrency 1: gateway p50 {r:.2f}x the seed's (target <= 0.8x, {_target(r <= 0.8)}).")
    if gw and rl:
        r = gw["wall"] / rl["wall"]
        lines.append(
            f"- {c.burst} streams at {c.burst_latency:g} s: wall {r:.2f}x the relay floor's (target <= 1.2x,"
            f" {_target(r <= 1.2)}); RSS growth {gw['image_ratio']:.2f}x image bytes per in-flight request"
            f" (target <= 2x, {_target(gw['image_ratio'] <= 2)})."
        )
    if mg:
        lines.append(
            f"- {c.memory_burst} in flight at {c.memory_size}: {mg['image_ratio']:.2f}x image bytes per request"
            f" (target <= 2x, {_target(mg['image_ratio'] <= 2)})."
        )
    if 1 in report.workers and 2 in report.workers:
        r = statistics.median(report.workers[2]) / statistics.median(report.workers[1])
        lines.append(
            f"- `--workers 2` vs 1 at concurrency {c.workers_concurrency}: {r:.2f}x the requests/s"
            f" (target >= 1.6x, {_target(r >= 1.6)})."
        )
    lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes and counts (checks the code, not speed)")
    parser.add_argument("--output", type=Path, default=None, help=f"Markdown report (default {RESULTS_PATH})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    config = CompareConfig.smoke() if args.smoke else CompareConfig.full()
    command = "python -m bench compare" + (" --smoke" if args.smoke else "")
    report = asyncio.run(compare(config, command))
    text = format_report(report)
    output = args.output or (None if args.smoke else RESULTS_PATH)
    if output is not None:
        # The hand-kept section at the end (the baseline next to these figures, the notes on the
        # targets) survives a new run.
        kept = output.read_text().partition(HAND_KEPT)[2] if output.exists() else ""
        output.write_text(text + (f"\n{HAND_KEPT}{kept}" if kept else ""))
    print(text)
    print(
        f"\n{'smoke' if args.smoke else 'full'} comparison in {report.seconds:.0f} s"
        + (f"; wrote {output}" if output else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
