"""4. Memory: peak RSS growth of the gateway per in-flight large-image request.

The emulator serves its realistic images: PNGs as large as Gemini's at the
model's real pixel size (2K: about 6 MB, 4K: about 22 MB).

The gateway runs alone in a child process (``python -m bench.memory``) so its
RSS holds nothing but the server; the emulator and the clients stay in the
parent. The child speaks a line protocol on stdin/stdout:

* it prints ``ready HOST:PORT`` once serving;
* ``mark`` resets the kernel's peak-RSS counter (``VmHWM``) and answers the current RSS;
* ``peak`` answers the peak RSS since the last ``mark``;
* ``stop`` (or end of input) shuts it down.

Linux only: it reads ``/proc/self/status`` and resets the peak through
``/proc/self/clear_refs``, which is what ``getrusage``'s ``ru_maxrss`` reports
but resettable, so each burst is measured on its own.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from bench.benchmarks import upstream_request
from bench.harness import PROMPT, SEED, BenchConfig, Result, Target
from imagegen import AsyncClient
from imagegen_server.app import run_server
from imagegen_server.config import ServerConfig
from imagegen_server.emulator import Emulator
from imagegen_server.gemini.client import GeminiClient

#: Bytes the gateway may hold per in-flight request, as a multiple of the image's size.
MEMORY_TARGET = Target("<=", 4.0)
#: Upstream latency of the burst: long enough for every request to be in flight together.
BURST_LATENCY = 0.1
_REPO = Path(__file__).resolve().parent.parent
_KEY_ENV = "BENCH_UPSTREAM_API_KEY"
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def supported() -> bool:
    """True where the child can read and reset its peak RSS."""
    return _STATUS.exists() and _CLEAR_REFS.exists()


# ----------------------------------------------------------------------------------- child side


def _status_bytes(field: str) -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024  # reported in kB
    raise RuntimeError(f"{field} missing from {_STATUS}")


def _answer(command: str) -> int:
    if command == "mark":
        _CLEAR_REFS.write_text("5")  # 5: reset VmHWM to the current RSS
        return _status_bytes("VmRSS")
    if command == "peak":
        return _status_bytes("VmHWM")
    raise ValueError(f"unknown command {command!r}")


async def _serve(upstream_url: str, api_key: str) -> None:
    async with run_server(ServerConfig(port=0, upstream_url=upstream_url, api_key=api_key)) as server:
        print(f"ready {server.target}", flush=True)
        while (command := (await asyncio.to_thread(sys.stdin.readline)).strip()) not in {"", "stop"}:
            print(_answer(command), flush=True)


def child_main() -> None:
    """Entry point of the gateway child: ``python -m bench.memory UPSTREAM_URL``."""
    asyncio.run(_serve(sys.argv[1], os.environ[_KEY_ENV]))


# ---------------------------------------------------------------------------------- parent side


class GatewayProcess:
    """The parent's handle on the child gateway."""

    def __init__(self, process: asyncio.subprocess.Process, target: str) -> None:
        self.process = process
        self.target = target

    async def ask(self, command: str) -> int:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(f"{command}\n".encode())
        await self.process.stdin.drain()
        return int(await self.process.stdout.readline())


@asynccontextmanager
async def gateway_process(emulator: Emulator) -> AsyncIterator[GatewayProcess]:
    """Start a gateway child pointed at ``emulator``; stop it on exit."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.memory",
        emulator.base_url,
        cwd=_REPO,
        env={**os.environ, _KEY_ENV: emulator.api_key},
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 30)).decode().split()
        if line[:1] != ["ready"]:
            raise RuntimeError(f"gateway child did not start (said {line!r})")
        yield GatewayProcess(process, line[1])
    finally:
        if process.returncode is None:
            assert process.stdin is not None
            process.stdin.close()
            try:
                await asyncio.wait_for(process.wait(), 15)
            except TimeoutError:
                process.kill()
                await process.wait()


async def _burst(client: AsyncClient, prompt: str, image_size: str, count: int) -> None:
    await asyncio.gather(
        *(client.generate(prompt, aspect_ratio="1:1", image_size=image_size, seed=SEED) for _ in range(count))
    )


async def _image_bytes(emulator: Emulator, image_size: str) -> int:
    """Render (and cache in the emulator) the burst's image; return its encoded size."""
    async with GeminiClient(emulator.base_url, emulator.api_key) as gemini:
        result = await gemini.generate(upstream_request(image_size))
    return len(result.image.data)


async def _peak_growth(emulator: Emulator, prompt: str, image_size: str, count: int) -> tuple[int, int]:
    """One burst of ``count`` requests in a fresh gateway: (RSS before, peak RSS during), bytes."""
    async with gateway_process(emulator) as gateway, AsyncClient(gateway.target) as client:
        await _burst(client, PROMPT, "512", count)  # warm-up: threads, channels, code paths
        before = await gateway.ask("mark")
        await _burst(client, prompt, image_size, count)
        return before, await gateway.ask("peak")


async def _measure(emulator: Emulator, image_size: str, config: BenchConfig) -> Result:
    image_bytes = await _image_bytes(emulator, image_size)
    marked = emulator.scenario(f"latency:{BURST_LATENCY:g}+ok").mark(PROMPT)
    count = config.memory_burst
    bursts = [await _peak_growth(emulator, marked, image_size, count) for _ in range(config.memory_repeats)]
    per_request = sorted(max(0, peak - before) / count for before, peak in bursts)
    mib = 2**20
    return Result(
        name=f"memory {count} in flight @ {image_size}",
        metric="bytes/req",
        baseline_label="image",
        baseline=float(image_bytes),
        measured=statistics.median(per_request),
        target=MEMORY_TARGET,
        details={
            "burst": count,
            "repeats": len(bursts),
            "burst_ratios": " ".join(f"{growth / image_bytes:.2f}" for growth in per_request),
            "rss_before_mib": round(statistics.median(before for before, _ in bursts) / mib, 1),
            "rss_peak_mib": round(statistics.median(peak for _, peak in bursts) / mib, 1),
        },
    )


async def memory(config: BenchConfig) -> list[Result]:
    """Peak RSS growth per in-flight request vs the image's size, per image size."""
    if not supported():
        print("memory benchmark skipped: needs Linux /proc", file=sys.stderr)
        return []
    async with Emulator(port=0, image_profile="realistic") as emulator:
        return [await _measure(emulator, size, config) for size in config.memory_sizes]


if __name__ == "__main__":
    child_main()
