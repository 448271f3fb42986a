"""A real ``redis-server`` for the shared-state tests: its own process, a free loopback port, no persistence.

Debian's package ``redis-server`` provides the binary (``.ci/run`` installs it). When it is missing the
tests that need it fail with a message saying so, never skip.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

BINARY = "redis-server"
START_TIMEOUT = 10.0
#: The tests' per-operation Redis timeout. Redis answers on loopback in milliseconds, but a loaded machine
#: can stall an answer past the 0.5 s default and turn a shared-state test into a fail-open/closed one; a
#: stopped Redis refuses the connection at once, so the outage tests do not wait for it.
OPERATION_TIMEOUT = 5.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1; stop and start it again on the same port to test outages."""

    def __init__(self, directory: Path) -> None:
        binary = shutil.which(BINARY)
        if binary is None:
            pytest.fail(
                f"{BINARY} is not installed: the shared-state tests need a real Redis. "
                "Install Debian's package: apt-get update && apt-get install -y redis-server",
                pytrace=False,
            )
        self._binary = binary
        self._directory = directory
        self.port = _free_port()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The ``--state-url`` of this server (database 0)."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start the process and wait until it answers PING."""
        self._proc = subprocess.Popen(
            [
                self._binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self._directory),
                "--logfile",
                str(self._directory / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        give_up = time.monotonic() + START_TIMEOUT
        while not _answers(self.port):
            if self._proc.poll() is not None:
                log = (self._directory / "redis.log").read_text(errors="replace")[-2000:]
                pytest.fail(f"{BINARY} exited with {self._proc.returncode}:\n{log}", pytrace=False)
            if time.monotonic() > give_up:
                self.stop()
                pytest.fail(f"{BINARY} did not answer on port {self.port} within {START_TIMEOUT} s", pytrace=False)
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL) and wait for it."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGCONT)  # a paused process cannot handle SIGTERM
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        self._proc = None

    def pause(self) -> None:
        """Freeze the process (SIGSTOP): connections stay open, nothing answers, as a hung Redis."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused process go on (SIGCONT)."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGCONT)

    async def astart(self) -> None:
        """:meth:`start` without blocking the event loop."""
        await asyncio.to_thread(self.start)

    async def astop(self) -> None:
        """:meth:`stop` without blocking the event loop."""
        await asyncio.to_thread(self.stop)
