"""Servers in their own processes, so each one's RSS, CPU and event loop are its own.

``python -m bench.procs KIND ...`` runs one of:

* ``emulator PROFILE``: the Gemini emulator (``realistic`` or ``small`` images);
* ``gateway UPSTREAM_URL MAX_CONCURRENCY``: the imagegen gRPC server (default
  config otherwise), talking to the emulator;
* ``relay UPSTREAM_URL``: the relay floor (:mod:`bench.relay`).

The upstream API key comes in ``BENCH_UPSTREAM_API_KEY``. The child prints
``ready ADDRESS`` once serving, then answers one JSON line per command read on
stdin: ``mark`` resets the peak-RSS counter (``VmHWM``, through
``/proc/self/clear_refs``) and the event-loop lag samples and answers
``{"rss", "cpu"}``; ``stats`` answers ``{"rss", "peak", "cpu", "lag_max_ms",
"lag_p99_ms"}``. ``cpu`` is the process's CPU seconds (all threads). End of
input stops it. Linux only (``/proc``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
KEY_ENV = "BENCH_UPSTREAM_API_KEY"
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
#: How often the lag monitor wakes up; its lateness is the event loop's lag.
LAG_INTERVAL = 0.01
#: The emulator's render cache: room for every image a run asks for, so that
#: it never renders twice (the benchmark measures clients and servers, not it).
EMULATOR_CACHE_BYTES = 1 << 30


def supported() -> bool:
    """True where a child can read and reset its peak RSS."""
    return _STATUS.exists() and _CLEAR_REFS.exists()


# ------------------------------------------------------------------------------------ child side


def _status_bytes(field: str) -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024  # reported in kB
    raise RuntimeError(f"{field} missing from {_STATUS}")


class LoopLag:
    """Samples how late the event loop wakes a sleeping task."""

    def __init__(self) -> None:
        self.samples: list[float] = []

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(LAG_INTERVAL)
            self.samples.append(loop.time() - start - LAG_INTERVAL)

    def summary(self) -> dict[str, float]:
        ordered = sorted(self.samples) or [0.0]
        p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
        return {"lag_max_ms": round(ordered[-1] * 1000, 2), "lag_p99_ms": round(p99 * 1000, 2)}


def _answer(command: str, lag: LoopLag) -> dict[str, Any]:
    if command == "mark":
        _CLEAR_REFS.write_text("5")  # 5: reset VmHWM to the current RSS
        lag.samples.clear()
        return {"rss": _status_bytes("VmRSS"), "cpu": time.process_time()}
    if command == "stats":
        return {
            "rss": _status_bytes("VmRSS"),
            "peak": _status_bytes("VmHWM"),
            "cpu": time.process_time(),
            **lag.summary(),
        }
    raise ValueError(f"unknown command {command!r}")


@asynccontextmanager
async def _service(kind: str, args: list[str]) -> AsyncIterator[str]:
    """Start the named server; yield its address."""
    if kind == "emulator":
        from imagegen_server.emulator import Emulator
        from imagegen_server.emulator.app import STATE
        from imagegen_server.emulator.render import Renderer

        async with Emulator(port=0, image_profile=args[0]) as emulator:
            emulator.app[STATE].renderer = Renderer(args[0], cache_bytes=EMULATOR_CACHE_BYTES)
            yield emulator.base_url
    elif kind == "gateway":
        from imagegen_server.app import run_server
        from imagegen_server.config import ServerConfig

        config = ServerConfig(
            port=0,
            upstream_url=args[0],
            api_key=os.environ[KEY_ENV],
            max_concurrency=int(args[1]),
            queue_timeout=60.0,
        )
        async with run_server(config) as server:
            yield server.target
    elif kind == "relay":
        from bench.relay import Relay, relay_server

        relay = Relay(args[0], os.environ[KEY_ENV])
        server = relay_server(relay)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            yield f"127.0.0.1:{port}"
        finally:
            await server.stop(1.0)
            await relay.close()
    else:
        raise SystemExit(f"unknown kind {kind!r}")


async def _child(kind: str, args: list[str]) -> None:
    lag = LoopLag()
    monitor = asyncio.create_task(lag.run())
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    async with _service(kind, args) as address:
        print(f"ready {address}", flush=True)
        while command := (await reader.readline()).decode().strip():
            print(json.dumps(_answer(command, lag)), flush=True)
    monitor.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await monitor


def child_main() -> None:
    """``python -m bench.procs KIND ARGS...``; ``BENCH_LOG_LEVEL=INFO`` shows the server's logs on stderr."""
    level = os.environ.get("BENCH_LOG_LEVEL")
    if level:
        logging.basicConfig(level=level, stream=sys.stderr)
    asyncio.run(_child(sys.argv[1], sys.argv[2:]))


# ----------------------------------------------------------------------------------- parent side


class Child:
    """The parent's handle on a server child."""

    def __init__(self, process: asyncio.subprocess.Process, address: str) -> None:
        self.process = process
        self.address = address

    async def ask(self, command: str) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(f"{command}\n".encode())
        await self.process.stdin.drain()
        answer: dict[str, Any] = json.loads(await self.process.stdout.readline())
        return answer


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        assert process.stdin is not None
        process.stdin.close()  # end of input: the child shuts down
        try:
            await asyncio.wait_for(process.wait(), 15)
        except TimeoutError:
            process.kill()
            await process.wait()


@asynccontextmanager
async def children(*specs: tuple[str, ...], api_key: str = "") -> AsyncIterator[list[Child]]:
    """Start ``python -m bench.procs KIND ARGS`` for each ``(KIND, *ARGS)`` spec, all at
    once (their imports overlap), and yield them when all are ready; stop them on exit."""
    processes: list[asyncio.subprocess.Process] = []
    try:
        for kind, *args in specs:
            processes.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "bench.procs",
                    kind,
                    *args,
                    cwd=REPO,
                    env={**os.environ, KEY_ENV: api_key},
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                )
            )
        ready = []
        for (kind, *_), process in zip(specs, processes, strict=True):
            assert process.stdout is not None
            line = (await asyncio.wait_for(process.stdout.readline(), 60)).decode().split()
            if line[:1] != ["ready"]:
                raise RuntimeError(f"{kind} child did not start (said {line!r})")
            ready.append(Child(process, line[1]))
        yield ready
    finally:
        await asyncio.gather(*(_stop(process) for process in processes))


@asynccontextmanager
async def child(kind: str, *args: str, api_key: str = "") -> AsyncIterator[Child]:
    """Start one server child (see :func:`children`)."""
    async with children((kind, *args), api_key=api_key) as (started,):
        yield started


if __name__ == "__main__":
    child_main()
