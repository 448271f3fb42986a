"""Shared fixtures: the real emulator and the real gRPC server on loopback ports."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest

from imagegen.v1 import image_generation_service_pb2_grpc as pb_grpc
from imagegen_server.app import RunningServer, run_server
from imagegen_server.config import ServerConfig
from imagegen_server.emulator import Emulator
from imagegen_server.emulator.render import IMAGE_PROFILE_ENV
from tests.redis_server import RedisServer

#: A retry policy short enough that retried tests take milliseconds, not seconds.
FAST = ServerConfig(
    port=0,
    initial_backoff=0.02,
    max_backoff=0.1,
    max_upstream_delay=5.0,
    attempt_timeout=10.0,
    heartbeat_interval=1.0,
    shutdown_grace=1.0,
)


@pytest.fixture(scope="session", autouse=True)
def small_emulator_images() -> Iterator[None]:
    """Emulators default to Gemini-sized images; tests use small ones for speed
    (child processes inherit it). Tests that need real sizes ask for ``realistic``."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(IMAGE_PROFILE_ENV, "small")
        yield


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    """A real emulator HTTP server on a free loopback port."""
    async with Emulator(port=0) as emu:
        yield emu


ServerFactory = Callable[..., AbstractAsyncContextManager[RunningServer]]


@pytest.fixture
def server_config(emulator: Emulator) -> ServerConfig:
    """The fast test config pointed at the test's emulator."""
    return replace(FAST, upstream_url=emulator.base_url, api_key=emulator.api_key)


@pytest.fixture
async def server(server_config: ServerConfig) -> AsyncIterator[RunningServer]:
    """The real gRPC server, talking to the test's emulator over HTTP."""
    async with run_server(server_config) as running:
        yield running


@pytest.fixture
def make_server(server_config: ServerConfig) -> Callable[..., AbstractAsyncContextManager[RunningServer]]:
    """Start a server with config overrides: ``async with make_server(max_attempts=1) as s``."""

    def factory(**overrides: Any) -> AbstractAsyncContextManager[RunningServer]:
        return run_server(replace(server_config, **overrides))

    return factory


@pytest.fixture
async def stub(server: RunningServer) -> AsyncIterator[pb_grpc.ImageGenerationServiceStub]:
    """A raw generated stub on an aio channel, for exact status/trailer checks."""
    async with grpc.aio.insecure_channel(
        server.target,
        options=[("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)],
    ) as channel:
        yield pb_grpc.ImageGenerationServiceStub(channel)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real ``redis-server`` on a free loopback port, no persistence; fails the test when it is not installed."""
    redis = RedisServer(tmp_path)
    redis.start()
    try:
        yield redis
    finally:
        redis.stop()
