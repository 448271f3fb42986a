"""`imagegen serve` as a real process: embedded emulator, first log line, SIGTERM."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


async def test_serve_starts_the_emulator_and_stops_cleanly_on_sigterm() -> None:
    env = {k: v for k, v in os.environ.items() if k not in {"GEMINI_API_KEY", "GOOGLE_API_KEY"}}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "imagegen_server",
        "serve",
        "--port",
        "0",
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    assert proc.stderr is not None
    try:
        first = (await asyncio.wait_for(proc.stderr.readline(), 20)).decode()
        assert "embedded Gemini emulator" in first, first
        target = ""
        while not target:
            line = (await asyncio.wait_for(proc.stderr.readline(), 20)).decode()
            assert line, "server exited before listening"
            if match := re.search(r"listening on (\S+)", line):
                target = match.group(1)
        async with grpc.aio.insecure_channel(target) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
        rest = (await proc.stderr.read()).decode()
        assert "stopped" in rest
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
