"""`imagegen serve --workers 2` as real processes: both answer on one port, others are refused, SIGTERM drains."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import grpc

from imagegen.v1 import image_generation_service_pb2 as pb
from imagegen.v1 import image_generation_service_pb2_grpc as pb_grpc
from imagegen_cli.exit_codes import EXIT_CANNOT_LISTEN, EXIT_USAGE
from imagegen_server.emulator import Emulator


def _env(emulator: Emulator | None) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"GEMINI_API_KEY", "GOOGLE_API_KEY"} and not k.startswith("IMAGEGEN_")
    }
    if emulator is not None:
        env["GEMINI_API_KEY"] = emulator.api_key
    return env


def _free_ports(count: int) -> list[int]:
    """``count`` consecutive free ports (the workers' metrics ports are consecutive)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = int(probe.getsockname()[1])
        if base + count > 65535:
            continue
        try:
            for port in range(base, base + count):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return list(range(base, base + count))
    raise AssertionError("no consecutive free ports")


async def _serve(emulator: Emulator | None, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "imagegen_cli", "serve", *args, stderr=asyncio.subprocess.PIPE, env=_env(emulator)
    )


@asynccontextmanager
async def workers(emulator: Emulator, *args: str) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """`imagegen serve --workers 2 ARGS` once both workers listen; killed on exit if still running."""
    proc = await _serve(emulator, "--workers", "2", "--upstream-url", emulator.base_url, *args)
    assert proc.stderr is not None
    try:
        listening: list[str] = []
        while len(listening) < 2:
            line = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()
            assert line, "serve --workers exited before both workers listened"
            if match := re.search(r"listening on (\S+)", line):
                listening.append(match.group(1))
        assert listening[0] == listening[1], listening  # one port, shared
        yield proc, listening[0]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _rpcs_by_worker(http: aiohttp.ClientSession, ports: list[int]) -> list[float]:
    """Successful Generate calls each worker counted, from its own /metrics port."""
    counts = []
    for port in ports:
        async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
            text = await resp.text()
        counts.append(
            sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("imagegen_rpcs_total{") and "Generate" in line and 'code="OK"' in line
            )
        )
    return counts


async def test_two_workers_share_the_port_and_stop_on_sigterm(emulator: Emulator) -> None:
    port, *metrics = _free_ports(3)
    async with (
        workers(emulator, "--port", str(port), "--metrics-port", str(metrics[0])) as (proc, target),
        aiohttp.ClientSession() as http,
    ):
        assert target == f"127.0.0.1:{port}"
        # A second, separate server on the same port is refused, single or with workers of its own.
        for extra in ((), ("--workers", "2", "--upstream-url", emulator.base_url)):
            other = await _serve(emulator, "--port", str(port), *extra)
            assert other.stderr is not None
            said = (await asyncio.wait_for(other.stderr.read(), 30)).decode()
            assert await asyncio.wait_for(other.wait(), 30) == EXIT_CANNOT_LISTEN, said
            assert f"port {port} on 127.0.0.1 is already in use" in said
        # New connections are spread over the workers by the kernel: each fresh channel is a new connection.
        for i in range(24):
            async with grpc.aio.insecure_channel(target) as channel:
                reply = await pb_grpc.ImageGenerationServiceStub(channel).Generate(
                    pb.GenerateRequest(prompt=f"a fox {i}"), timeout=30
                )
                assert reply.generation.image.data
        by_worker = await _rpcs_by_worker(http, metrics)
        assert sum(by_worker) == 24, by_worker
        assert all(count > 0 for count in by_worker), f"a worker answered nothing: {by_worker}"
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        assert proc.stderr is not None
        rest = (await proc.stderr.read()).decode()
        assert rest.count("SIGTERM: shutting down") == 2, rest


async def test_workers_need_an_upstream() -> None:
    proc = await _serve(None, "--workers", "2", "--port", "0")
    assert proc.stderr is not None
    said = (await asyncio.wait_for(proc.stderr.read(), 30)).decode()
    assert await asyncio.wait_for(proc.wait(), 30) == EXIT_USAGE
    assert "--workers needs an upstream" in said
