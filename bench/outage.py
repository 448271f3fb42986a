"""An upstream outage, measured: ``python bench/outage.py [--seconds 60] [--callers 32]``.

The real gateway (default ``ServerConfig``: 3 attempts, 1 s backoff, retry
budget, circuit breaker) in front of a real emulator whose every answer is a
503. ``--callers`` callers send Generate in a loop for ``--seconds``, pausing
``--think`` seconds after each answer and ignoring RetryInfo (the worst case for
upstream). Then upstream recovers: a client that waits out RetryInfo gets its
requests served. Prints requests, outcomes by code and reason, upstream attempts
(counted by the emulator) per request, the circuit's transitions, and the
recovery; bounded in time (at most ``--seconds`` plus the open circuit's wait).
Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import grpc

if not __package__:  # run as a script: make ``bench`` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from google.rpc import error_details_pb2
from grpc_status import rpc_status

from imagegen.v1 import image_generation_service_pb2 as pb
from imagegen.v1 import image_generation_service_pb2_grpc as pb_grpc
from imagegen_server.app import run_server
from imagegen_server.config import ServerConfig
from imagegen_server.emulator import Emulator

MODEL = "gemini-3.1-flash-image"


def _details(err: grpc.aio.AioRpcError) -> tuple[str, dict[str, str], float | None]:
    """ErrorInfo reason, its metadata and the RetryInfo delay of an error."""
    reason, meta, delay = "", {}, None
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    for any_ in status.details if status is not None else ():
        info, retry = error_details_pb2.ErrorInfo(), error_details_pb2.RetryInfo()
        if any_.Unpack(info):
            reason, meta = info.reason, dict(info.metadata)
        elif any_.Unpack(retry):
            delay = retry.retry_delay.ToNanoseconds() / 1e9
    return reason, meta, delay


@dataclass(frozen=True, slots=True)
class Figures:
    """What an outage run measured."""

    requests: int
    upstream_attempts: int
    #: Requests that failed without any upstream attempt (open circuit).
    failed_fast: int
    #: ``CODE/REASON/stopReason`` -> requests.
    outcomes: dict[str, int]
    circuit_openings: int
    #: Requests after recovery that succeeded at their first attempt, of ``recovery``.
    recovered_ok: int


async def outage(seconds: float, callers: int, think: float, recovery: int, config: ServerConfig) -> Figures:
    """Run the outage and the recovery; print the figures and return them."""
    async with Emulator(port=0, image_profile="small") as emulator:
        config = replace(config, port=0, upstream_url=emulator.base_url, api_key=emulator.api_key)
        down = emulator.scenario("overloaded")
        async with run_server(config) as server, grpc.aio.insecure_channel(server.target) as channel:
            stub = pb_grpc.ImageGenerationServiceStub(channel)
            outcomes: Counter[str] = Counter()
            fast = 0
            stop_at = time.monotonic() + seconds

            async def caller() -> None:
                nonlocal fast
                while time.monotonic() < stop_at:
                    request = pb.GenerateRequest(prompt=f"a fox {down.marker}", options=pb.GenerationOptions())
                    try:
                        await stub.Generate(request, timeout=60)
                        outcomes["OK"] += 1
                    except grpc.aio.AioRpcError as err:
                        reason, meta, _ = _details(err)
                        outcomes[f"{err.code().name}/{reason}/{meta.get('stopReason', '')}"] += 1
                        fast += meta.get("attempts") == "0"
                    await asyncio.sleep(think)

            started = time.monotonic()
            await asyncio.gather(*(caller() for _ in range(callers)))
            elapsed = time.monotonic() - started
            requests = sum(outcomes.values())
            attempts = down.stats.received
            registry = server.metrics.registry
            opened = registry.get_sample_value("imagegen_circuit_transitions_total", {"model": MODEL, "state": "open"})
            print(f"outage: {elapsed:.1f} s, {callers} callers, {think} s think time, every upstream answer a 503")
            print(
                f"  requests: {requests}, upstream attempts: {attempts} ({attempts / max(requests, 1):.3f} per request)"
            )
            print(f"  bound 1.25 x requests + constant: {1.25 * requests:.0f} + c; failed fast (no attempt): {fast}")
            for outcome, count in outcomes.most_common():
                print(f"  {count:6d}  {outcome}")
            state = registry.get_sample_value("imagegen_circuit_state", {"model": MODEL})
            print(f"  circuit opened {opened or 0:.0f} time(s); state now {state} (0 closed, 1 half-open, 2 open)")

            # Upstream recovers. The callers are gone; a well-behaved client waits out RetryInfo.
            up = emulator.scenario("ok")
            recovered = time.monotonic()
            ok = refused = 0
            for _ in range(recovery):
                request = pb.GenerateRequest(prompt=f"a fox {up.marker}", options=pb.GenerationOptions())
                while True:
                    try:
                        response = await stub.Generate(request, timeout=60)
                    except grpc.aio.AioRpcError as err:
                        reason, _, delay = _details(err)
                        if reason != "CIRCUIT_OPEN":
                            raise
                        refused += 1
                        await asyncio.sleep(delay or 0.1)
                        continue
                    ok += response.generation.attempts == 1
                    break
            print(
                f"recovery: {ok}/{recovery} requests OK at their first attempt, {time.monotonic() - recovered:.2f} s "
                f"after upstream recovered ({refused} CIRCUIT_OPEN answers waited out first); circuit state "
                f"{registry.get_sample_value('imagegen_circuit_state', {'model': MODEL})}"
            )
            return Figures(
                requests=requests,
                upstream_attempts=attempts,
                failed_fast=fast,
                outcomes=dict(outcomes),
                circuit_openings=int(opened or 0),
                recovered_ok=ok,
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Measure the gateway through an upstream outage (loopback only).")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the outage (default 60)")
    parser.add_argument("--callers", type=int, default=32, help="concurrent callers (default 32)")
    parser.add_argument("--think", type=float, default=0.5, help="pause after each answer, seconds (default 0.5)")
    parser.add_argument("--recovery", type=int, default=10, help="requests after upstream recovers (default 10)")
    parser.add_argument("--breaker-open-seconds", type=float, default=None, help="override the server's open time")
    parser.add_argument(
        "--no-breaker", action="store_true", help="circuit breaker off: the retry budget alone bounds the load"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("imagegen_server.access").setLevel(logging.ERROR)
    config = ServerConfig()
    if args.no_breaker:
        config = replace(config, breaker_failure_threshold=0)
    if args.breaker_open_seconds is not None:
        config = replace(config, breaker_open_seconds=args.breaker_open_seconds)
    asyncio.run(outage(args.seconds, args.callers, args.think, args.recovery, config))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
