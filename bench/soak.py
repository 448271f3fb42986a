"""Soak: many calls through the real server and emulator with single transient faults.

``python -m bench soak --calls 10000`` (the long version; CI runs 1,000 in
``tests/integration/test_soak.py`` with the same driver). Half the calls are
unary, half streams, ``--concurrency`` at a time; ``--fault-rate`` of them
meet exactly one transient fault of each kind in turn (429 with RetryInfo,
503, 504, a body that stalls past the idle timeout, a body cut short) and then
succeed. Every call has its own emulator scenario, so the upstream attempts of
each are counted exactly. Prints outcomes by code, upstream attempts per
request, and the process's RSS and open file descriptors after the first tenth
and at the end (client, server and emulator share this process).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import json
import logging
import os
import sys
import time
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc

if not __package__:  # run as a script: make ``bench`` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from imagegen.v1 import image_generation_service_pb2 as pb
from imagegen.v1 import image_generation_service_pb2_grpc as pb_grpc
from imagegen_server.app import run_server
from imagegen_server.config import ServerConfig
from imagegen_server.emulator import Emulator

#: One transient fault of each kind; each is followed by success. ``slow_body``
#: stalls past the idle timeout (far longer than any run).
FAULTS: tuple[str, ...] = ("rate_limit:0.01", "overloaded", "timeout", "slow_body:3600", "cut_body")

#: Short waits so the run takes seconds: backoffs of milliseconds, a stalled
#: body noticed after half a second.
SOAK_CONFIG = ServerConfig(
    port=0,
    initial_backoff=0.01,
    max_backoff=0.05,
    upstream_idle_timeout=0.5,
    attempt_timeout=30.0,
    heartbeat_interval=1.0,
    max_concurrency=64,
    # Every call has its own request id: the cache fills, and must stay bounded.
    idempotency_max_bytes=4 * 1024 * 1024,
    shutdown_grace=1.0,
)


@dataclass(frozen=True, slots=True)
class Resources:
    """What the process holds at one moment."""

    rss_mib: float
    open_fds: int
    tasks: int


@dataclass(slots=True)
class SoakReport:
    """What a soak run saw."""

    calls: int
    concurrency: int
    faulted: int
    seconds: float = 0.0
    #: Final outcome per call: "OK" or "CODE/REASON".
    outcomes: dict[str, int] = field(default_factory=dict)
    #: Upstream attempts per request -> how many requests made that many.
    attempts_faulted: dict[int, int] = field(default_factory=dict)
    attempts_clean: dict[int, int] = field(default_factory=dict)
    #: Calls that ended without an answer (neither a result nor a status).
    lost: int = 0
    #: The process once the server is up, before any call (what a fresh gateway holds).
    at_start: Resources | None = None
    after_first_tenth: Resources | None = None
    at_end: Resources | None = None

    def to_json(self) -> str:
        """The report as JSON."""
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def resources(ignore: Collection[asyncio.Task[Any]] = ()) -> Resources:
    """RSS, open file descriptors and live asyncio tasks (but ``ignore``) of this process, after a GC."""
    gc.collect()
    with open("/proc/self/statm") as statm:
        rss_pages = int(statm.read().split()[1])
    return Resources(
        rss_mib=round(rss_pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1),
        open_fds=len(os.listdir("/proc/self/fd")),
        tasks=sum(not t.done() and t not in ignore for t in asyncio.all_tasks()),
    )


async def _settle(ignore: Collection[asyncio.Task[Any]] = ()) -> Resources:
    # Let closed connections finish closing before counting what is held.
    await asyncio.sleep(0.5)
    return resources(ignore)


async def _one(stub: pb_grpc.ImageGenerationServiceStub, number: int, prompt: str) -> str:
    # One prompt and seed for all (the emulator ignores markers when rendering), so its
    # render cache holds one image and what grows, if anything, is the gateway.
    options = pb.GenerationOptions(request_id=f"soak-{number}", seed=7)
    try:
        if number % 2:
            response = await stub.Generate(pb.GenerateRequest(prompt=prompt, options=options), timeout=60)
            ok = bool(response.generation.image.data)
        else:
            request = pb.GenerateStreamRequest(prompt=prompt, options=options)
            last = None
            async for event in stub.GenerateStream(request, timeout=60):
                last = event
            ok = last is not None and bool(last.completed.image.data)
    except grpc.aio.AioRpcError as err:
        return f"{err.code().name}/{err.details()}"
    return "OK" if ok else "NO_RESULT"


async def soak(
    calls: int, *, concurrency: int = 32, fault_rate: float = 0.3, config: ServerConfig = SOAK_CONFIG
) -> SoakReport:
    """Run the soak; the caller judges the report."""
    # Faulted calls spread evenly (exactly floor(calls * fault_rate) of them), each
    # kind of fault in turn, so every kind meets unary calls and streams alike.
    faulted_numbers = [n for n in range(calls) if int((n + 1) * fault_rate) > int(n * fault_rate)]
    fault_of = {n: FAULTS[rank % len(FAULTS)] for rank, n in enumerate(faulted_numbers)}
    faulted = set(fault_of)
    report = SoakReport(calls=calls, concurrency=concurrency, faulted=len(faulted))
    outcomes: collections.Counter[str] = collections.Counter()
    attempts_faulted: collections.Counter[int] = collections.Counter()
    attempts_clean: collections.Counter[int] = collections.Counter()
    async with Emulator(port=0) as emulator:
        server_config = replace(config, upstream_url=emulator.base_url, api_key=emulator.api_key)
        async with run_server(server_config) as server, grpc.aio.insecure_channel(server.target) as channel:
            stub = pb_grpc.ImageGenerationServiceStub(channel)
            queue: asyncio.Queue[int] = asyncio.Queue()

            async def worker() -> None:
                while True:
                    number = await queue.get()
                    try:
                        is_faulted = number in faulted
                        steps = (fault_of[number], "ok") if is_faulted else ("ok",)
                        scenario = emulator.scenario(*steps)
                        outcome = await _one(stub, number, f"a soak test {scenario.marker}")
                        outcomes[outcome.split("/", 1)[0] if outcome != "OK" else "OK"] += 1
                        (attempts_faulted if is_faulted else attempts_clean)[scenario.stats.received] += 1
                        emulator.forget(scenario)
                    finally:
                        queue.task_done()

            async def run(numbers: Sequence[int]) -> None:
                for number in numbers:
                    queue.put_nowait(number)
                await queue.join()

            report.at_start = await _settle()
            workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
            started = time.perf_counter()
            try:
                tenth = max(1, calls // 10)
                await run(range(tenth))
                report.after_first_tenth = await _settle(ignore=workers)
                await run(range(tenth, calls))
            finally:
                for task in workers:
                    task.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
            report.seconds = round(time.perf_counter() - started, 1)
            report.at_end = await _settle()
    report.outcomes = dict(outcomes)
    report.attempts_faulted = dict(sorted(attempts_faulted.items()))
    report.attempts_clean = dict(sorted(attempts_clean.items()))
    report.lost = calls - sum(outcomes.values())
    return report


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.soak``: run, print the report, exit 1 unless every call succeeded as expected."""
    parser = argparse.ArgumentParser(description="Soak the gateway with single transient faults.")
    parser.add_argument("--calls", type=int, default=10_000, help="calls in total (default 10000)")
    parser.add_argument("--concurrency", type=int, default=32, help="calls at a time (default 32)")
    parser.add_argument("--fault-rate", type=float, default=0.3, help="share of calls with one fault (default 0.3)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    os.environ.setdefault("IMAGEGEN_EMULATOR_IMAGE_PROFILE", "small")
    report = asyncio.run(soak(args.calls, concurrency=args.concurrency, fault_rate=args.fault_rate))
    print(report.to_json())
    good = (
        report.outcomes == {"OK": args.calls}
        and report.lost == 0
        and set(report.attempts_faulted) <= {2}
        and set(report.attempts_clean) <= {1}
    )
    return 0 if good else 1


if __name__ == "__main__":
    raise SystemExit(main())
