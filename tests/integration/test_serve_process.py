"""`imagegen serve` as a real process: embedded emulator, first log line, signals, a port already taken."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from imagegen_cli.exit_codes import EXIT_CANNOT_LISTEN, EXIT_INTERRUPTED, EXIT_USAGE
from imagegen_server import cli as server_cli


def _env() -> dict[str, str]:
    """The environment without a key or IMAGEGEN_* settings, so every server starts the embedded emulator."""
    return {
        k: v
        for k, v in os.environ.items()
        if k not in {"GEMINI_API_KEY", "GOOGLE_API_KEY"} and not k.startswith("IMAGEGEN_")
    }


@dataclass
class Serving:
    """A running `imagegen serve` child and the address it printed."""

    proc: asyncio.subprocess.Process
    target: str
    first_line: str

    @property
    def port(self) -> int:
        return int(self.target.rsplit(":", 1)[1])


async def _serve_command(*args: str) -> asyncio.subprocess.Process:
    # The `imagegen` command exactly as the console script runs it.
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "imagegen_cli", "serve", *args, stderr=asyncio.subprocess.PIPE, env=_env()
    )


@asynccontextmanager
async def serving(*args: str) -> AsyncIterator[Serving]:
    """Start `imagegen serve ARGS` and wait for its listening line; kill it on exit if still running."""
    proc = await _serve_command(*args)
    assert proc.stderr is not None
    try:
        first = (await asyncio.wait_for(proc.stderr.readline(), 20)).decode()
        target = ""
        while not target:
            line = (await asyncio.wait_for(proc.stderr.readline(), 20)).decode()
            assert line, "server exited before listening"
            if match := re.search(r"listening on (\S+)", line):
                target = match.group(1)
        yield Serving(proc, target, first)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _health(target: str) -> int:
    async with grpc.aio.insecure_channel(target) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        return reply.status


async def _refused(*args: str) -> tuple[int, list[str]]:
    """Run a serve that must fail at once: its exit code and stderr lines."""
    proc = await _serve_command(*args)
    assert proc.stderr is not None
    stderr = await asyncio.wait_for(proc.stderr.read(), 30)
    return await asyncio.wait_for(proc.wait(), 30), stderr.decode().splitlines()


def test_the_cli_and_the_server_agree_on_exit_codes() -> None:
    assert server_cli.EXIT_CANNOT_LISTEN == EXIT_CANNOT_LISTEN
    assert server_cli.EXIT_INTERRUPTED == EXIT_INTERRUPTED


async def test_serve_starts_the_emulator_and_stops_cleanly_on_sigterm() -> None:
    async with serving("--port", "0") as server:
        assert "embedded Gemini emulator" in server.first_line, server.first_line
        assert await _health(server.target) == health_pb2.HealthCheckResponse.SERVING
        server.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(server.proc.wait(), 20) == 0
        assert server.proc.stderr is not None
        rest = (await server.proc.stderr.read()).decode()
        assert "SIGTERM: shutting down" in rest and "stopped" in rest


async def test_ctrl_c_stops_gracefully_and_exits_130() -> None:
    async with serving("--port", "0") as server:
        server.proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(server.proc.wait(), 20) == 130
        assert server.proc.stderr is not None
        assert "stopped" in (await server.proc.stderr.read()).decode()


async def test_a_second_serve_on_the_same_port_is_refused_in_one_line() -> None:
    async with serving("--port", "0") as first:
        code, lines = await _refused("--port", str(first.port))
        assert code == EXIT_CANNOT_LISTEN
        assert lines == [
            f"imagegen serve: port {first.port} on 127.0.0.1 is already in use; choose another with --port"
        ]
        # The first server is untouched and still the only one answering.
        assert first.proc.returncode is None
        assert await _health(first.target) == health_pb2.HealthCheckResponse.SERVING


@pytest.fixture
def held_port() -> Iterator[int]:
    """A loopback port held by a plain (non-gRPC) listening socket."""
    with socket.create_server(("127.0.0.1", 0)) as holder:
        yield holder.getsockname()[1]


async def test_a_port_held_by_another_program_is_refused_in_one_line(held_port: int) -> None:
    code, lines = await _refused("--port", str(held_port))
    assert code == EXIT_CANNOT_LISTEN
    assert lines == [f"imagegen serve: port {held_port} on 127.0.0.1 is already in use; choose another with --port"]


async def test_a_taken_metrics_port_is_refused_in_one_line(held_port: int) -> None:
    code, lines = await _refused("--port", "0", "--metrics-port", str(held_port))
    assert code == EXIT_CANNOT_LISTEN
    assert lines == [
        f"imagegen serve: metrics port {held_port} on 127.0.0.1 is already in use; choose another with --metrics-port"
    ]


async def test_a_host_that_is_not_this_machine_is_refused_in_one_line() -> None:
    # 192.0.2.0/24 is TEST-NET-1 (RFC 5737): never a local address (--insecure: past the TLS/auth check).
    code, lines = await _refused("--host", "192.0.2.1", "--port", "50051", "--insecure")
    assert code == EXIT_CANNOT_LISTEN
    assert lines == ["imagegen serve: 192.0.2.1 is not an address of this machine (--host)"]


async def test_a_public_host_without_tls_and_auth_is_refused_before_binding(held_port: int) -> None:
    # The port is held on loopback, so binding 0.0.0.0 there would fail with exit 7: exit 2 proves
    # the refusal comes first, and nothing was ever bound on a public interface.
    code, lines = await _refused("--host", "0.0.0.0", "--port", str(held_port))
    assert code == EXIT_USAGE
    assert lines == [
        "imagegen serve: refusing to listen on 0.0.0.0 without TLS (--tls-cert/--tls-key) and caller "
        "authentication (--auth-tokens-file or --tls-client-ca); add them, or pass --insecure if a proxy "
        "or mesh in front provides both"
    ]
    # TLS without caller authentication is refused too (the certificate files are never read).
    code, lines = await _refused("--host", "::", "--port", str(held_port), "--tls-cert", "a", "--tls-key", "b")
    assert code == EXIT_USAGE
    assert lines == [
        "imagegen serve: refusing to listen on :: without caller authentication (--auth-tokens-file or "
        "--tls-client-ca); add them, or pass --insecure if a proxy or mesh in front provides both"
    ]


async def _imagegen(*args: str, cwd: Path) -> tuple[int, str, str]:
    """Run one `imagegen` client command as a process: exit code, stdout, stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "imagegen_cli",
        *args,
        cwd=cwd,
        env=_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_a_newcomers_first_hour_emulator_serve_generate(tmp_path: Path) -> None:
    """The README's path as three real processes: `imagegen emulator`, `imagegen serve --upstream-url`
    (no key anywhere), then `imagegen generate`, which shows what was asked and what was delivered."""
    emulator = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "imagegen_cli", "emulator", "--port", "0", stdout=asyncio.subprocess.PIPE, env=_env()
    )
    try:
        assert emulator.stdout is not None
        announced = (await asyncio.wait_for(emulator.stdout.readline(), 20)).decode()
        match = re.search(r"listening on (http://\S+)", announced)
        assert match, announced
        async with serving("--port", "0", "--upstream-url", match.group(1)) as server:
            assert "upstream Gemini at " + match.group(1) in server.first_line, server.first_line
            code, out, err = await _imagegen(
                "generate", "a red fox", "--width", "1920", "--height", "1080", "--target", server.target, cwd=tmp_path
            )
            assert code == 0, err
            assert out.startswith("a-red-fox.png  asked 1920x1080 -> 2752x1536 (16:9, 2K)  seed="), out
            assert (tmp_path / "a-red-fox.png").read_bytes().startswith(b"\x89PNG")
            # A marker no scenario issued is an error (the emulator's 400), not a silent success.
            code, out, err = await _imagegen("generate", "x [emulator:nope]", "--target", server.target, cwd=tmp_path)
            assert code == 2, (out, err)
            assert err.startswith("imagegen: error: invalid request: ") and "emulator:nope" in err, err
            assert len(err.splitlines()) == 1
    finally:
        emulator.terminate()
        await asyncio.wait_for(emulator.wait(), 20)
