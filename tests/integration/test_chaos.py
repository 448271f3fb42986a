"""Chaos: upstream misbehaving in every way at once, through the real server and emulator.

Connections reset mid-body, bodies that never finish, garbage bytes, 200s with
truncated JSON, silence: every call ends with its documented status (with our
ErrorInfo, so never gRPC's bare deadline) within its deadline, and no asyncio
task is left behind once the calls are over.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import grpc
import pytest

from imagegen.v1 import image_generation_service_pb2 as pb
from imagegen.v1 import image_generation_service_pb2_grpc as pb_grpc
from imagegen_server.emulator import Emulator
from imagegen_server.emulator.scenarios import Scenario
from tests.conftest import ServerFactory
from tests.integration.status_helpers import details_of

Stub = pb_grpc.ImageGenerationServiceStub

UNAVAILABLE = ("UNAVAILABLE", "UPSTREAM_UNAVAILABLE")
MALFORMED = ("INTERNAL", "UPSTREAM_MALFORMED")


@dataclass(frozen=True)
class Chaos:
    """One kind of misbehaviour and the status it must end in."""

    steps: tuple[str, ...]
    #: (code, reason), or ("OK", "") for a call that must succeed despite it.
    expected: tuple[str, str]
    #: The caller's deadline; None sends none (the server's maximum call duration applies).
    deadline: float | None = 20.0
    #: The caller hangs up once its request reached upstream.
    hang_up: bool = False


CHAOS = {
    "reset-mid-body": Chaos(("reset_body",), UNAVAILABLE),
    "reset-then-ok": Chaos(("reset_body", "ok"), ("OK", "")),
    "cut-mid-body": Chaos(("cut_body",), UNAVAILABLE),
    "body-never-finishes": Chaos(("slow_body:3600",), ("DEADLINE_EXCEEDED", "UPSTREAM_TIMEOUT")),
    "garbage-bytes": Chaos(("garbage",), MALFORMED),
    "garbage-then-ok": Chaos(("garbage", "ok"), ("OK", "")),
    "truncated-json-200": Chaos(("bad_json",), MALFORMED),
    "garbage-error-status": Chaos(("overloaded+garbage",), UNAVAILABLE),
    "silent-upstream": Chaos(("latency:3600",), ("DEADLINE_EXCEEDED", "DEADLINE_EXCEEDED"), deadline=6.0),
    "silent-upstream-no-deadline": Chaos(("latency:3600",), ("DEADLINE_EXCEEDED", "MAX_DURATION_EXCEEDED"), None),
    "caller-hangs-up": Chaos(("latency:3600",), ("CANCELLED", "upstream request aborted"), hang_up=True),
}

#: Calls of each kind, half unary half streams.
EACH = 6


async def _call(stub: Stub, scenario: Scenario, chaos: Chaos, prompt: str, stream: bool) -> tuple[str, str]:
    rpc = asyncio.ensure_future(_rpc(stub, f"{prompt} {scenario.marker}", chaos.deadline, stream))
    if not chaos.hang_up:
        return await rpc
    await scenario.wait_for(lambda s: s.received == 1, timeout=30)
    rpc.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await rpc
    try:
        # Long before the server's maximum call duration (8 s) would end it anyway.
        await scenario.wait_for(lambda s: s.aborted == 1, timeout=4.0)
    except TimeoutError:
        return "CANCELLED", "upstream request left open"
    return "CANCELLED", "upstream request aborted"


async def _rpc(stub: Stub, prompt: str, deadline: float | None, stream: bool) -> tuple[str, str]:
    try:
        if stream:
            kinds = [
                e.WhichOneof("event")
                async for e in stub.GenerateStream(pb.GenerateStreamRequest(prompt=prompt), timeout=deadline)
            ]
            assert kinds[-1] == "completed", kinds
        else:
            await stub.Generate(pb.GenerateRequest(prompt=prompt), timeout=deadline)
    except grpc.aio.AioRpcError as err:
        d = details_of(err)
        # Our status, decided by the server: one ErrorInfo, never a bare transport or deadline status.
        if d.error_infos != 1 or d.domain != "imagegen.dev":
            return d.code.name, f"no details: {err.details()}"
        return d.code.name, d.reason
    return "OK", ""


def _ours() -> set[asyncio.Task[object]]:
    """Live tasks that belong to calls: the pipeline's, the servicer's, the emulator's handlers.

    Left out are tasks that belong to connections, not calls: grpc.aio's pool of
    tasks waiting for new calls (Cython coroutines, no ``__qualname__``; it grows
    with a burst) and aiohttp's one task per keep-alive connection
    (``RequestHandler.start``; the upstream client's pool grows with a burst).
    """
    return {
        t
        for t in asyncio.all_tasks()
        if not t.done() and getattr(t.get_coro(), "__qualname__", _CONNECTION_TASKS[0]) not in _CONNECTION_TASKS
    }


#: Coroutines of tasks that belong to connections (see _ours); the first stands for Cython ones.
_CONNECTION_TASKS = ("<cython>", "RequestHandler.start", "AioServer._request_registered_call")


async def _left_over(baseline: set[asyncio.Task[object]], timeout: float = 10.0) -> list[str]:
    """Call tasks beyond ``baseline`` still alive after up to ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        extra = _ours() - baseline
        if not extra or loop.time() >= end:
            return [repr(t) for t in extra]
        await asyncio.sleep(0.05)


@pytest.mark.timeout(120)
async def test_every_call_ends_with_its_documented_status_and_leaves_no_task(
    make_server: ServerFactory, emulator: Emulator
) -> None:
    config: dict[str, object] = {
        # Ends a body that never finishes (two attempts: ~3 s, well within the maximum call duration), while a
        # reset or a cut in the burst, its last bytes held up by the busy loop, still arrives first: at 0.3 s a
        # loaded machine made reset-mid-body end as UPSTREAM_TIMEOUT now and then.
        "upstream_idle_timeout": 1.5,
        # Long enough for every other call even on a loaded machine (the burst of calls takes
        # seconds just to start when the emulator renders in this process); callers' deadlines are later.
        "max_call_duration": 8.0,
        "max_attempts": 2,
        "max_concurrency": 128,
        # Each fault's own status is under test here, not the breaker a run of them would open.
        "breaker_failure_threshold": 0,
    }
    async with make_server(**config) as server, grpc.aio.insecure_channel(server.target) as channel:
        stub = Stub(channel)
        await stub.Generate(pb.GenerateRequest(prompt="warm up"), timeout=10)
        baseline = _ours()
        scenarios = {name: emulator.scenario(*chaos.steps) for name, chaos in CHAOS.items()}
        used = []
        plan: list[str] = []
        calls = []
        for name, chaos in CHAOS.items():
            for i in range(EACH):
                # One scenario per call where steps differ per attempt or the call watches its own.
                own = len(chaos.steps) > 1 or chaos.hang_up
                scenario = emulator.scenario(*chaos.steps) if own else scenarios[name]
                used.append(scenario)
                calls.append(
                    asyncio.ensure_future(_call(stub, scenario, chaos, f"chaos {name} {i}", stream=i % 2 == 0))
                )
                plan.append(name)
        outcomes = await asyncio.gather(*calls)
        leftover = await _left_over(baseline)
        # Every upstream request ended too: none still open at the emulator.
        await asyncio.gather(*(s.wait_for(lambda st: st.in_flight == 0) for s in used))
    wrong = [
        (name, outcome, CHAOS[name].expected)
        for name, outcome in zip(plan, outcomes, strict=True)
        if outcome != CHAOS[name].expected
    ]
    assert not wrong, wrong
    assert not leftover, leftover
