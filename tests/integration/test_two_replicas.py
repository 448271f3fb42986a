"""Two real `imagegen serve` processes, one redis-server, one emulator: what must hold across replicas does.

A request id sent to both replicas at once makes one upstream call and both callers get the same
generation; one caller's quota is one quota across both; a circuit opened by failures on one replica
fails calls fast on the other.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from imagegen.v1 import image_generation_service_pb2 as pb
from imagegen.v1 import image_generation_service_pb2_grpc as pb_grpc
from imagegen_server.emulator import Emulator
from tests.integration.status_helpers import details_of
from tests.redis_server import OPERATION_TIMEOUT, RedisServer

Stub = pb_grpc.ImageGenerationServiceStub
FREE, LIMITED = "free-token", "limited-token"
QUOTA = 4


def _auth(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def _tokens_file(directory: Path) -> Path:
    def digest(token: str) -> str:
        return hashlib.sha256(token.encode()).hexdigest()

    path = directory / "tokens.toml"
    path.write_text(
        f'[[callers]]\nname = "free"\ntoken_sha256 = "{digest(FREE)}"\n\n'
        f'[[callers]]\nname = "limited"\ntoken_sha256 = "{digest(LIMITED)}"\n'
        f"requests_per_minute = {QUOTA}\nburst = {QUOTA}\n"
    )
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Replica:
    """One `imagegen serve` process."""

    proc: asyncio.subprocess.Process
    target: str
    log: Path


async def _serving(target: str, proc: asyncio.subprocess.Process, log: Path) -> None:
    """Wait (up to 30 s) until the replica's health service says SERVING."""
    async with grpc.aio.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for _ in range(300):
            if proc.returncode is not None:
                raise AssertionError(f"replica exited with {proc.returncode}:\n{_tail(log)}")
            try:
                reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError(f"replica at {target} never served:\n{_tail(log)}")


def _tail(log: Path) -> str:
    """The end of a replica's log, for a failure message."""
    return log.read_text(errors="replace")[-3000:]


@asynccontextmanager
async def replica(name: str, directory: Path, emulator: Emulator, redis: RedisServer) -> AsyncIterator[Replica]:
    """Start `imagegen serve` on a free port against the emulator and Redis; SIGTERM it on exit."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEGEN_") and k != "GOOGLE_API_KEY"}
    env["GEMINI_API_KEY"] = emulator.api_key or ""
    log = directory / f"{name}.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "imagegen_cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--upstream-url",
            emulator.base_url,
            "--state-url",
            redis.url,
            # A Redis answer stalled by a loaded machine must not turn sharing into failing open.
            "--state-timeout",
            str(OPERATION_TIMEOUT),
            "--auth-tokens-file",
            str(_tokens_file(directory)),
            "--max-attempts",
            "1",
            "--breaker-failure-threshold",
            "2",
            "--breaker-open-seconds",
            "60",
            "--shutdown-grace",
            "1",
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=out,
        )
    try:
        target = f"127.0.0.1:{port}"
        await _serving(target, proc, log)
        yield Replica(proc, target, log)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()


@pytest.fixture
async def two_stubs(tmp_path: Path, emulator: Emulator, redis_server: RedisServer) -> AsyncIterator[tuple[Stub, Stub]]:
    """Stubs of two replicas started together (both processes start in parallel)."""
    async with AsyncExitStack() as stack:
        replicas = await asyncio.gather(
            *(stack.enter_async_context(replica(n, tmp_path, emulator, redis_server)) for n in ("a", "b"))
        )
        stubs = []
        for r in replicas:
            channel = await stack.enter_async_context(grpc.aio.insecure_channel(r.target))
            stubs.append(Stub(channel))
        yield stubs[0], stubs[1]


async def test_a_duplicated_request_id_makes_one_upstream_call_across_replicas(
    two_stubs: tuple[Stub, Stub], emulator: Emulator
) -> None:
    scenario = emulator.scenario("latency:1")
    request = pb.GenerateRequest(
        prompt=f"a lighthouse {scenario.marker}", options=pb.GenerationOptions(request_id="both-at-once", seed=3)
    )
    replies = await asyncio.gather(*(stub.Generate(request, metadata=_auth(FREE), timeout=60) for stub in two_stubs))
    assert scenario.stats.received == 1, "one upstream call for the two replicas"
    first, second = (reply.generation for reply in replies)
    assert first.generation_id == second.generation_id and first.image.data == second.image.data
    assert first.request_id == second.request_id == "both-at-once"


async def test_one_callers_quota_holds_across_replicas(two_stubs: tuple[Stub, Stub]) -> None:
    outcomes: list[str] = []
    for i in range(QUOTA + 2):
        try:
            await two_stubs[i % 2].Generate(pb.GenerateRequest(prompt="a fox"), metadata=_auth(LIMITED), timeout=60)
            outcomes.append("ok")
        except grpc.aio.AioRpcError as err:
            d = details_of(err)
            assert d.code is grpc.StatusCode.RESOURCE_EXHAUSTED, d
            assert d.metadata["caller"] == "limited" and d.metadata["quota"] == "requests_per_minute"
            outcomes.append(d.reason)
    assert outcomes == ["ok"] * QUOTA + ["CALLER_QUOTA_EXCEEDED"] * 2


async def test_a_circuit_opened_on_one_replica_fails_fast_on_the_other(
    two_stubs: tuple[Stub, Stub], emulator: Emulator
) -> None:
    outage = emulator.scenario("overloaded")
    request = pb.GenerateRequest(prompt=f"a fox {outage.marker}")
    for _ in range(2):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await two_stubs[0].Generate(request, metadata=_auth(FREE), timeout=60)
        assert details_of(info.value).reason == "UPSTREAM_UNAVAILABLE"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await two_stubs[1].Generate(request, metadata=_auth(FREE), timeout=60)
    d = details_of(info.value)
    assert (d.code, d.reason) == (grpc.StatusCode.UNAVAILABLE, "CIRCUIT_OPEN")
    assert outage.stats.received == 2, "the second replica failed fast, without calling upstream"
