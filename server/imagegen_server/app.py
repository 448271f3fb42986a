"""Assemble and run the gRPC server: servicer, health, reflection, shutdown.

``run_server(config)`` is an async context manager used by ``imagegen serve``,
the demo and the tests alike, so they all run the same server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from imagegen.v1 import image_generation_service_pb2 as pb
from imagegen.v1 import image_generation_service_pb2_grpc as pb_grpc
from imagegen_server.config import GOOGLE_BASE_URL, ServerConfig
from imagegen_server.emulator import Emulator
from imagegen_server.gemini.client import GeminiClient
from imagegen_server.observability import Metrics, ObservabilityInterceptor, metrics_app
from imagegen_server.service import ImageGenerationServicer, Pipeline

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ImageGenerationService"].full_name


@dataclass(slots=True)
class RunningServer:
    """A started server: where to reach it and how to stop it."""

    server: grpc.aio.Server
    port: int
    host: str
    health: health.aio.HealthServicer
    pipeline: Pipeline
    #: The embedded emulator, when the server started one.
    emulator: Emulator | None
    upstream_url: str
    shutdown_grace: float
    metrics: Metrics
    #: Port of the ``/metrics`` endpoint, when enabled.
    metrics_port: int | None

    @property
    def target(self) -> str:
        """The ``host:port`` address for clients."""
        return f"{self.host}:{self.port}"

    async def shutdown(self, grace: float | None = None) -> None:
        """Drain: health NOT_SERVING, refuse new calls, give in-flight calls ``grace`` seconds."""
        grace = self.shutdown_grace if grace is None else grace
        self.pipeline.draining = True
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)


@contextlib.asynccontextmanager
async def run_server(config: ServerConfig) -> AsyncIterator[RunningServer]:
    """Start the server (and the embedded emulator when there is no key and no
    upstream URL); stop both on exit."""
    async with contextlib.AsyncExitStack() as stack:
        emulator: Emulator | None = None
        api_key: str | None
        if config.uses_embedded_emulator:
            emulator = await stack.enter_async_context(
                Emulator(host="127.0.0.1", port=0, image_profile=config.emulator_image_profile)
            )
            log.warning(
                "NO GEMINI_API_KEY: using the embedded Gemini emulator at %s (fake images, no network)",
                emulator.base_url,
            )
            upstream_url, api_key = emulator.base_url, emulator.api_key
        else:
            upstream_url, api_key = config.upstream_url or GOOGLE_BASE_URL, config.api_key
            log.info("upstream Gemini at %s (%s)", upstream_url, config.api_version)
        client = await stack.enter_async_context(GeminiClient(upstream_url, api_key, api_version=config.api_version))
        metrics = Metrics()
        pipeline = Pipeline(config, client, metrics=metrics)
        metrics_port = await _start_metrics(stack, metrics, config) if config.metrics_port is not None else None
        server = _grpc_server(config, metrics)
        pb_grpc.add_ImageGenerationServiceServicer_to_server(ImageGenerationServicer(pipeline, config), server)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
        port = server.add_insecure_port(f"{config.host}:{config.port}")
        if port == 0:
            raise OSError(f"could not bind {config.host}:{config.port}")
        await server.start()
        await health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        running = RunningServer(
            server=server,
            port=port,
            host=config.host,
            health=health_servicer,
            pipeline=pipeline,
            emulator=emulator,
            upstream_url=upstream_url,
            shutdown_grace=config.shutdown_grace,
            metrics=metrics,
            metrics_port=metrics_port,
        )
        log.info("imagegen listening on %s (default model %s)", running.target, config.default_model)
        try:
            yield running
        finally:
            await running.shutdown()


async def _start_metrics(stack: contextlib.AsyncExitStack, metrics: Metrics, config: ServerConfig) -> int:
    """Serve ``/metrics`` over HTTP until the stack closes; returns the bound port."""
    runner = web.AppRunner(metrics_app(metrics), access_log=None)
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    await web.TCPSite(runner, config.host, config.metrics_port).start()
    port = int(runner.addresses[0][1])
    log.info("metrics on http://%s:%d/metrics", config.host, port)
    return port


def _grpc_server(config: ServerConfig, metrics: Metrics) -> grpc.aio.Server:
    """A grpc.aio server with our interceptor and limits, no services yet."""
    return grpc.aio.server(
        interceptors=[ObservabilityInterceptor(metrics)],
        options=[
            # Images are megabytes; gRPC's default 4 MiB receive limit is too small.
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes),
            # Let long-lived streams through proxies: accept client pings every 10 s.
            ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
        ],
    )


async def serve(config: ServerConfig) -> None:
    """Run until SIGINT or SIGTERM, then shut down gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with run_server(config) as running:
        await stop.wait()
        log.info("shutting down: %.1f s grace for in-flight calls", config.shutdown_grace)
        await running.shutdown()
    log.info("stopped")
