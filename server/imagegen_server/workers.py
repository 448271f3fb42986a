"""``imagegen serve --workers N``: N server processes sharing one port, so every core serves calls.

The parent binds nothing gRPC itself (as grpc's multiprocessing example): it
checks the ports are free, reserves them with sockets bound with
``SO_REUSEPORT`` (not listening), forks the workers before any gRPC server
exists, and each worker runs the ordinary server with ``grpc.so_reuseport=1``
on the reserved port, where the kernel spreads new connections over them.

Another process cannot take the port meanwhile: it binds without
``SO_REUSEPORT`` (a single ``imagegen serve`` and the start-up check of another
``--workers`` parent do), which the reservation and the workers' listeners
refuse. Each worker serves ``/metrics`` on its own port (``--metrics-port``
plus its index), as Prometheus' per-process registries cannot be summed
without a shared directory. Workers need an upstream (``GEMINI_API_KEY`` or
``--upstream-url``): an embedded emulator per worker would give each its own
scenarios and images.

SIGTERM or SIGINT to the parent is passed on to every worker, which drains
like a single server within ``--shutdown-grace``; a worker that exits on its
own stops the others.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import os
import signal
import socket
import time
from collections.abc import Iterator
from types import FrameType

from imagegen_server.config import ConfigError, ServerConfig
from imagegen_server.ports import CannotListenError, check_bindable, describe_bind_error, host_port

log = logging.getLogger(__name__)

#: Seconds a worker gets past the shutdown grace before it is killed.
_KILL_MARGIN = 5.0


def worker_configs(config: ServerConfig, port: int, http_port: int | None) -> list[ServerConfig]:
    """Each worker's config: the shared (reserved) ports, its own metrics port, ``workers=1``."""
    out = []
    for index in range(config.workers):
        metrics_port = config.metrics_port
        if metrics_port:  # 0 stays 0: each worker a free port of its own
            metrics_port += index
        out.append(dataclasses.replace(config, port=port, http_port=http_port, metrics_port=metrics_port, workers=1))
    return out


@contextlib.contextmanager
def _reserved(host: str, port: int, *, what: str, flag: str) -> Iterator[int]:
    """Hold ``host:port`` with a bound ``SO_REUSEPORT`` socket the workers can share; yields the port."""
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    family = socket.AF_INET6 if ":" in bare else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind((bare, port))
        except OSError as exc:
            raise CannotListenError(describe_bind_error(exc, host, port, what=what, flag=flag)) from exc
        yield int(sock.getsockname()[1])


def _worker(config: ServerConfig, index: int) -> None:
    """A worker process: the ordinary server on the shared port, until SIGTERM or SIGINT."""
    import asyncio

    from imagegen_server.app import serve

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)  # the parent's handlers came with the fork; serve() installs its own
    log.info("worker %d (pid %d) starting", index, os.getpid())
    asyncio.run(serve(config, shared_port=True))


def supervise(config: ServerConfig) -> signal.Signals | None:
    """Run ``config.workers`` servers on one port until SIGTERM/SIGINT; returns the signal that stopped them.

    Returns None when a worker exited on its own (the others are stopped).
    Raises :class:`ConfigError` or :class:`CannotListenError` before any worker starts.
    """
    config.check()
    if config.uses_embedded_emulator:
        raise ConfigError(
            "--workers needs an upstream: set GEMINI_API_KEY or --upstream-url "
            "(for tests, run `imagegen emulator` and point --upstream-url at it)"
        )
    check_bindable(config.host, config.port)
    if config.http_port:
        check_bindable(config.host, config.http_port, what="HTTP port", flag="--http-port")
    if config.metrics_port:
        for index in range(config.workers):
            port = config.metrics_port + index
            check_bindable(config.metrics_host, port, what="metrics port", flag="--metrics-port")
    with contextlib.ExitStack() as stack:
        port = stack.enter_context(_reserved(config.host, config.port, what="port", flag="--port"))
        http_port = config.http_port
        if http_port is not None:
            http_port = stack.enter_context(_reserved(config.host, http_port, what="HTTP port", flag="--http-port"))
        return _run(config, worker_configs(config, port, http_port))


def _run(config: ServerConfig, configs: list[ServerConfig]) -> signal.Signals | None:
    received: list[signal.Signals] = []

    def on_signal(signum: int, _: FrameType | None) -> None:
        if not received:
            received.append(signal.Signals(signum))

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    # Fork: the workers start from this process as it is, before any gRPC server or event loop exists.
    context = multiprocessing.get_context("fork")
    workers = [
        context.Process(target=_worker, args=(worker_config, index), name=f"imagegen-worker-{index}")
        for index, worker_config in enumerate(configs)
    ]
    try:
        for worker in workers:
            worker.start()
        log.info(
            "imagegen: %d workers on %s (pids %s)",
            len(workers),
            host_port(config.host, configs[0].port),
            ", ".join(str(w.pid) for w in workers),
        )
        while not received and all(w.exitcode is None for w in workers):
            time.sleep(0.1)
    finally:
        stopping = received[0] if received else signal.SIGTERM
        for worker in workers:
            if worker.pid is not None and worker.exitcode is None:
                os.kill(worker.pid, stopping)
        deadline = time.monotonic() + config.shutdown_grace + _KILL_MARGIN
        for worker in workers:
            worker.join(max(deadline - time.monotonic(), 0.0))
            if worker.exitcode is None:
                log.warning("worker pid %s did not stop within the grace; killing it", worker.pid)
                worker.kill()
                worker.join()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not received:
        log.error("a worker exited on its own (codes %s); stopped the others", [w.exitcode for w in workers])
        return None
    return received[0]
