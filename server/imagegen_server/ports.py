"""Listening addresses: find out, in one clear sentence, why one cannot be bound.

gRPC only says "Failed to bind to address" (and logs a C-level line of its own),
so before gRPC binds, :func:`check_bindable` binds the address the way gRPC will
(``SO_REUSEADDR``, no ``SO_REUSEPORT``) with a plain socket, releases it, and
turns the operating system's reason into a :class:`CannotListenError`.
"""

from __future__ import annotations

import errno
import socket


class CannotListenError(OSError):
    """The server cannot listen on its address: the port is taken, or the host is not this machine's."""


def host_port(host: str, port: int) -> str:
    """``host:port`` as gRPC and clients read it: a bare IPv6 host gets brackets (``[::1]:50051``)."""
    if ":" in host and not host.startswith("["):
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def describe_bind_error(exc: OSError, host: str, port: int, *, what: str = "port", flag: str = "--port") -> str:
    """One sentence for why ``host:port`` cannot be bound (``what`` names the port, ``flag`` chooses it)."""
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host {host!r} (--host)"
    if exc.errno == errno.EADDRINUSE:
        return f"{what} {port} on {host} is already in use; choose another with {flag}"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{host} is not an address of this machine (--host)"
    if exc.errno == errno.EACCES:
        return f"no permission to listen on {what} {port} on {host} (ports below 1024 need privileges)"
    return f"cannot listen on {host}:{port}: {exc.strerror or exc}"


def check_bindable(host: str, port: int, *, what: str = "port", flag: str = "--port") -> None:
    """Raise :class:`CannotListenError` unless ``host:port`` can be bound now (port 0 always can).

    Like gRPC, succeed when any of the host's addresses binds.
    """
    if port == 0:
        return
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        candidates = socket.getaddrinfo(bare or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise CannotListenError(describe_bind_error(exc, host, port, what=what, flag=flag)) from exc
    first_error: OSError | None = None
    for family, kind, proto, _, address in candidates:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                first_error = first_error or exc
                continue
            return
    if first_error is not None:
        raise CannotListenError(describe_bind_error(first_error, host, port, what=what, flag=flag)) from first_error
