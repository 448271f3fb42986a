"""Issue 12's memory figure: 8 concurrent requests carrying 57 MB of input images each, against a real
``imagegen serve`` process, with and without the bound on request bytes in flight.

Usage: ``python -m bench.input_memory [BOUND_BYTES ...]`` (default: the server's default bound, then
128 MiB, then 4 GiB, i.e. effectively unbounded). For each bound it starts ``imagegen serve`` on a free
loopback port (upstream: an emulator in this process answering after 3 s, so all calls are in flight
together), warms it up, resets the child's peak RSS (``/proc/PID/clear_refs``), sends the burst, and prints
RSS before, peak RSS during, and how many calls were admitted or refused with MEMORY_OVERLOADED.
Linux only; loopback only; about a minute per bound.
"""

from __future__ import annotations

import asyncio
import io
import os
import sys
from pathlib import Path

from PIL import Image

import imagegen
from imagegen_server.emulator import Emulator

#: Per request: three ~19 MB PNGs (under the 20 MB per-image limit), 57 MB together.
IMAGES_PER_REQUEST = 3
IMAGE_SIDE = 2500
CONCURRENT = 8
LATENCY = 3.0
MIB = 2**20


def _png() -> bytes:
    """A valid, incompressible PNG of about 19 MB."""
    pixels = os.urandom(IMAGE_SIDE * IMAGE_SIDE * 3)
    out = io.BytesIO()
    Image.frombytes("RGB", (IMAGE_SIDE, IMAGE_SIDE), pixels).save(out, format="PNG", compress_level=0)
    return out.getvalue()


def _status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} missing")


def _reset_peak(pid: int) -> None:
    """Reset the child's VmHWM to its current RSS."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


async def _serve(emulator: Emulator, bound: int | None) -> tuple[asyncio.subprocess.Process, str]:
    args = ["--port", "0", "--upstream-url", emulator.base_url]
    if bound is not None:
        args += ["--max-request-bytes-in-flight", str(bound)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEGEN_")}
    env["GEMINI_API_KEY"] = emulator.api_key or "bench-key"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "imagegen_cli", "serve", *args, stderr=asyncio.subprocess.PIPE, env=env
    )
    assert proc.stderr is not None
    while True:
        line = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()
        if not line:
            raise RuntimeError("imagegen serve exited before listening")
        if "imagegen listening on " in line:
            target = line.split("imagegen listening on ", 1)[1].split()[0]
            break
    # Keep draining its log so the child never blocks on a full pipe.
    asyncio.get_running_loop().create_task(proc.stderr.read())
    return proc, target


async def _measure(emulator: Emulator, marker: str, images: list[bytes], bound: int | None) -> str:
    proc, target = await _serve(emulator, bound)
    try:
        async with imagegen.AsyncClient(target, timeout=120) as client:
            await client.generate(f"warm up {marker}", input_images=images[:1])
            before = _status(proc.pid, "VmRSS")
            _reset_peak(proc.pid)

            async def one(i: int) -> str:
                try:
                    await client.generate(f"burst {i} {marker}", input_images=images)
                except imagegen.RateLimitError as err:
                    return err.reason
                return "OK"

            outcomes = await asyncio.gather(*(one(i) for i in range(CONCURRENT)))
            peak = _status(proc.pid, "VmHWM")
    finally:
        proc.terminate()
        await proc.wait()
    label = "default" if bound is None else f"{bound / MIB:.0f} MiB"
    counts = {o: outcomes.count(o) for o in sorted(set(outcomes))}
    return f"bound {label:>9}: RSS {before / MIB:.0f} MB before, {peak / MIB:.0f} MB peak; outcomes {counts}"


async def main(bounds: list[int | None]) -> None:
    """Measure each bound in turn and print one line per bound."""
    images = [_png() for _ in range(IMAGES_PER_REQUEST)]
    total = sum(len(i) for i in images)
    print(f"{CONCURRENT} concurrent requests, {total / 1e6:.1f} MB of input images each")
    async with Emulator(port=0) as emulator:
        marker = emulator.scenario(f"latency:{LATENCY:g}+ok").marker
        for bound in bounds:
            print(await _measure(emulator, marker, images, bound), flush=True)


if __name__ == "__main__":
    given: list[int | None] = [int(a) for a in sys.argv[1:]]
    asyncio.run(main(given or [None, 128 * MIB, 4096 * MIB]))
