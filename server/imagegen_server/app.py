"""Assemble and run the gRPC server: servicer, health, reflection, shutdown.

``run_server(config)`` is an async context manager used by ``imagegen serve``,
the demo and the tests alike, so they all run the same server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from imagegen.v1 import image_generation_service_pb2 as pb
from imagegen_server.access import AccessInterceptor
from imagegen_server.auth import Authenticator, TokensFile
from imagegen_server.config import GOOGLE_BASE_URL, ServerConfig, is_loopback
from imagegen_server.decoding import DecodeInterceptor
from imagegen_server.emulator import Emulator
from imagegen_server.gemini.client import GeminiClient
from imagegen_server.inflight import SMALL_REQUEST_BYTES, RequestBytes, default_bound
from imagegen_server.lifecycle import GenerationObserver, ObserverGroup
from imagegen_server.observability import (
    AttemptsRecorder,
    Metrics,
    ObservabilityInterceptor,
    RpcObserver,
    metrics_app,
)
from imagegen_server.pipeline import Pipeline
from imagegen_server.ports import CannotListenError, check_bindable, describe_bind_error, host_port
from imagegen_server.quotas import CallerLimiter, LocalCallerLimiter
from imagegen_server.reflection import enable_reflection
from imagegen_server.rest import RestGateway
from imagegen_server.service import ImageGenerationServicer, add_to_server
from imagegen_server.sharedstate.stores import SharedStores, open_stores
from imagegen_server.tls import CertificateFiles
from imagegen_server.tracing import Tracing, start_tracing

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
    #: Port of the REST/JSON + SSE gateway, when enabled.
    http_port: int | None = None

    @property
    def target(self) -> str:
        """The ``host:port`` address for clients."""
        return host_port(self.host, self.port)

    async def shutdown(self, grace: float | None = None) -> None:
        """Drain: health NOT_SERVING, refuse new calls, give in-flight calls ``grace`` seconds.

        During the grace gRPC still accepts calls, so a late caller gets the
        pipeline's UNAVAILABLE / SHUTTING_DOWN with RetryInfo rather than a bare
        transport error. Calls still running just before the grace ends are
        ended by the pipeline with that same status (their upstream requests
        aborted); then gRPC stops, cutting only what is outside the pipeline
        (health watches).
        """
        grace = self.shutdown_grace if grace is None else grace
        self.pipeline.draining = True
        await self.health.enter_graceful_shutdown()
        margin = _cut_off_margin(grace)
        if not await self.pipeline.drained(grace - 2 * margin):
            ended = self.pipeline.cut_off()
            log.info("shutdown grace over: ended %d call(s) in flight with SHUTTING_DOWN", ended)
            # Their statuses go out while they unwind; gRPC then has a margin more to send them.
            await self.pipeline.drained(margin)
        await self.server.stop(margin)


def _cut_off_margin(grace: float) -> float:
    """Twice this before the end of the grace the pipeline ends its calls: time
    for them to unwind and for their statuses to go out before gRPC cancels
    whatever is left."""
    return min(0.5, grace / 5)


@contextlib.asynccontextmanager
async def run_server(
    config: ServerConfig, *, tracing: Tracing | None = None, shared_port: bool = False
) -> AsyncIterator[RunningServer]:
    """Start the server (and the embedded emulator when there is no key and no
    upstream URL); stop both on exit.

    Raises :class:`CannotListenError` (before starting anything) when the port
    or the metrics port is taken or the host is not this machine's, and
    :class:`~imagegen_server.config.ConfigError` for flags it refuses (unusable
    TLS files among them, tracing asked for without the ``otel`` extra).
    ``tracing`` replaces the one the ``OTEL_*`` environment would configure (tests).
    ``shared_port``: this is one of ``--workers`` processes, sharing the gRPC and
    HTTP ports with its siblings on purpose (``SO_REUSEPORT``; see :mod:`imagegen_server.workers`).
    """
    config.check()
    certificates = _certificates(config)
    authenticator = Authenticator(
        TokensFile(config.auth_tokens_file) if config.auth_tokens_file else None,
        client_certificates=config.tls_client_ca is not None,
        open_methods=config.auth_open_methods,
    )
    if not shared_port:
        check_bindable(config.host, config.port)
    if config.metrics_port:
        check_bindable(config.metrics_host, config.metrics_port, what="metrics port", flag="--metrics-port")
    if config.insecure and not is_loopback(config.host) and not (config.uses_tls and config.authenticates_callers):
        log.warning(
            "--insecure: listening on %s without TLS and caller authentication; a proxy in front must provide both",
            config.host,
        )
    if config.http_port and not shared_port:
        check_bindable(config.host, config.http_port, what="HTTP port", flag="--http-port")
    if tracing is None:
        tracing = start_tracing(config)
        if tracing is not None:
            log.info("OpenTelemetry traces on, exported as OTEL_* says")
    async with contextlib.AsyncExitStack() as stack:
        if tracing is not None:
            stack.callback(tracing.shutdown)
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
        client = await stack.enter_async_context(
            GeminiClient(
                upstream_url, api_key, api_version=config.api_version, idle_timeout=config.upstream_idle_timeout
            )
        )
        metrics = Metrics()
        shared = await _shared_stores(stack, config, metrics)
        observers: list[GenerationObserver] = [metrics, AttemptsRecorder()]
        if tracing is not None:
            observers.append(tracing)
        pipeline = Pipeline(
            config,
            client,
            observer=ObserverGroup(observers),
            idempotency=shared.idempotency if shared is not None else None,
            breakers=shared.breaker if shared is not None else None,
        )
        metrics.watch_queue(pipeline.waiting_for_slots)
        rpc_observer = RpcObserver(metrics, log_prompts=config.log_prompts, tracing=tracing)
        metrics_port = await _start_metrics(stack, metrics, config) if config.metrics_port is not None else None
        access = _access(config, authenticator, shared.limiter if shared is not None else LocalCallerLimiter())
        server = _grpc_server(config, rpc_observer, access, shared_port=shared_port)
        servicer = ImageGenerationServicer(pipeline, config)
        add_to_server(servicer, server)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        enable_reflection((SERVICE_NAME, health.SERVICE_NAME), server)  # v1 and v1alpha
        port = _listen(server, config, certificates)
        await server.start()
        http_port = None
        if config.http_port is not None:
            gateway = RestGateway(
                servicer,
                pb.DESCRIPTOR.services_by_name["ImageGenerationService"],
                rpc_observer,
                admit=access.admitted,  # the gRPC port's own checks and state
                cors_origins=config.cors_origins,
                max_body_bytes=config.max_message_bytes,
            )
            http_port = await _start_rest(stack, gateway, config, certificates, shared_port=shared_port)
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
            http_port=http_port,
        )
        log.info(
            "imagegen listening on %s (%s, %s, default model %s)",
            running.target,
            _transport(certificates),
            _callers(config),
            config.default_model,
        )
        try:
            yield running
        finally:
            await running.shutdown()


async def _shared_stores(
    stack: contextlib.AsyncExitStack, config: ServerConfig, metrics: Metrics
) -> SharedStores | None:
    """The Redis-backed stores when ``--state-url`` is set (closed with the stack), else None (in-process state)."""
    if config.state_url is None:
        return None
    shared = open_stores(config, on_error=metrics.shared_state_error)
    stack.push_async_callback(shared.aclose)
    if await shared.state.ping():
        log.info("shared state at %s (fail %s when unreachable)", shared.state.where, config.state_fail_mode)
    # else: the connection's own warning said it is unreachable and what happens meanwhile.
    return shared


async def _start_metrics(stack: contextlib.AsyncExitStack, metrics: Metrics, config: ServerConfig) -> int:
    """Serve ``/metrics`` over HTTP until the stack closes; returns the bound port."""
    runner = web.AppRunner(metrics_app(metrics), access_log=None)
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    try:
        await web.TCPSite(runner, config.metrics_host, config.metrics_port).start()
    except OSError as exc:
        port = config.metrics_port or 0
        raise CannotListenError(
            describe_bind_error(exc, config.metrics_host, port, what="metrics port", flag="--metrics-port")
        ) from exc
    port = int(runner.addresses[0][1])
    log.info("metrics on http://%s/metrics", host_port(config.metrics_host, port))
    return port


async def _start_rest(
    stack: contextlib.AsyncExitStack,
    gateway: RestGateway,
    config: ServerConfig,
    certificates: CertificateFiles | None,
    *,
    shared_port: bool = False,
) -> int:
    """Serve REST/JSON + SSE until the stack closes (HTTPS with the gRPC port's certificate); returns the port."""
    # handler_cancellation: a caller hanging up cancels its generation, as on the gRPC port.
    runner = web.AppRunner(gateway.app(), access_log=None, handler_cancellation=True)
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    # The gRPC port's certificates, re-read when they change, client certificates required under mutual TLS.
    ssl_context = certificates.ssl_context() if certificates is not None else None
    try:
        site = web.TCPSite(runner, config.host, config.http_port, ssl_context=ssl_context, reuse_port=shared_port)
        await site.start()
    except OSError as exc:
        port = config.http_port or 0
        raise CannotListenError(
            describe_bind_error(exc, config.host, port, what="HTTP port", flag="--http-port")
        ) from exc
    port = int(runner.addresses[0][1])
    scheme = "https" if ssl_context else "http"
    log.info("REST/JSON and SSE on %s://%s/v1/ (%s)", scheme, host_port(config.host, port), _cors(config))
    return port


def _cors(config: ServerConfig) -> str:
    """Who may call from a browser, for the start-up line."""
    return f"CORS for {', '.join(config.cors_origins)}" if config.cors_origins else "no CORS"


def _certificates(config: ServerConfig) -> CertificateFiles | None:
    """The TLS files to serve, read and checked now (before anything starts), or None for plaintext."""
    if config.tls_cert is None or config.tls_key is None:
        return None
    return CertificateFiles(config.tls_cert, config.tls_key, config.tls_client_ca)


def _callers(config: ServerConfig) -> str:
    """Who may call, for the start-up line."""
    ways = []
    if config.auth_tokens_file:
        ways.append(f"bearer tokens from {config.auth_tokens_file}")
    if config.tls_client_ca:
        ways.append("client certificates")
    return "callers need " + " or ".join(ways) if ways else "no caller authentication"


def _transport(certificates: CertificateFiles | None) -> str:
    """How callers connect, for the start-up line."""
    if certificates is None:
        return "plaintext"
    return "mutual TLS" if certificates.requires_client_certificates else "TLS"


def _listen(server: grpc.aio.Server, config: ServerConfig, certificates: CertificateFiles | None) -> int:
    """Bind the gRPC port, with TLS when configured; returns the bound port (the chosen one for port 0)."""
    address = host_port(config.host, config.port)
    try:
        if certificates is not None:
            port = server.add_secure_port(address, certificates.credentials())
        else:
            port = server.add_insecure_port(address)
    except RuntimeError as exc:  # gRPC gives no reason; check_bindable usually named it already
        raise CannotListenError(f"cannot listen on {address}") from exc
    if port == 0:
        raise CannotListenError(f"cannot listen on {address}")
    return port


def _request_limit(config: ServerConfig) -> Callable[[str], int]:
    """Each method's largest request: the message limit for the generation RPCs (they carry images),
    64 KiB for everything else. gRPC's own limit (``grpc.max_receive_message_length``) is one number for
    the whole server, so the per-method one is checked on the raw bytes before they are decoded."""

    def limit(method: str) -> int:
        service, _, name = method.lstrip("/").partition("/")
        if service == SERVICE_NAME and name.startswith(("Generate", "Refine")):
            return config.max_message_bytes
        return SMALL_REQUEST_BYTES

    return limit


def _access(config: ServerConfig, authenticator: Authenticator, limiter: CallerLimiter) -> AccessInterceptor:
    """Who may call and how much: one instance (one quota and memory state) for the gRPC and REST ports."""
    bound = config.max_request_bytes_in_flight or default_bound(config.max_message_bytes)
    log.info("request bytes in flight bounded at %d MiB", bound >> 20)
    return AccessInterceptor(authenticator, limiter, RequestBytes(bound), _request_limit(config))


def _grpc_server(
    config: ServerConfig, rpc_observer: RpcObserver, access: AccessInterceptor, *, shared_port: bool = False
) -> grpc.aio.Server:
    """A grpc.aio server with our interceptors and limits, no services yet."""
    return grpc.aio.server(
        # Outermost first: refused calls are still logged and counted; DecodeInterceptor last, nearest the
        # handlers, so a request that does not decode is logged, counted and authenticated like any other
        # (and the access interceptor's size checks run on the raw bytes before it decodes them).
        interceptors=[ObservabilityInterceptor(rpc_observer), access, DecodeInterceptor()],
        options=[
            # gRPC shares ports by default (SO_REUSEPORT); we refuse a taken one, unless this is
            # one of the --workers processes sharing it on purpose.
            ("grpc.so_reuseport", int(shared_port)),
            # Images are megabytes; gRPC's default 4 MiB receive limit is too small.
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes),
            # Let long-lived streams through proxies: accept client pings every 10 s.
            ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
        ],
    )


async def serve(config: ServerConfig, *, shared_port: bool = False) -> signal.Signals:
    """Run until SIGINT or SIGTERM, then shut down gracefully; returns the signal that stopped it.

    ``shared_port`` as for :func:`run_server` (a ``--workers`` process).
    """
    loop = asyncio.get_running_loop()
    stopped_by: asyncio.Future[signal.Signals] = loop.create_future()

    def stop(sig: signal.Signals) -> None:
        if not stopped_by.done():
            stopped_by.set_result(sig)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop, sig)
    async with run_server(config, shared_port=shared_port) as running:
        received = await stopped_by
        log.info("%s: shutting down, %.1f s grace for in-flight calls", received.name, config.shutdown_grace)
        await running.shutdown()
    log.info("stopped")
    return received
