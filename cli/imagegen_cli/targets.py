"""Check a ``--target`` before dialling it, so a typo is a usage error (exit 2), not 'unavailable'."""

from __future__ import annotations

import argparse
import ipaddress
import re

#: gRPC's own target schemes (https://github.com/grpc/grpc/blob/master/doc/naming.md), passed through as given.
_GRPC_SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:", "vsock:")
_HOSTNAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?")
_EXAMPLE = "use host:port, e.g. 127.0.0.1:50051"


def parse_target(text: str) -> str:
    """Return ``text`` if it is a ``host:port`` (or a gRPC target URI); raise ``ArgumentTypeError`` if not."""
    target = text.strip()
    if target.startswith(_GRPC_SCHEMES):
        return target
    if "://" in target:
        raise argparse.ArgumentTypeError(f"{text!r} is a URL; {_EXAMPLE} (no scheme)")
    host, sep, port = target.rpartition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r} has no port; {_EXAMPLE}")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r}: the port must be a number from 1 to 65535")
    if not _valid_host(host):
        raise argparse.ArgumentTypeError(f"{text!r}: {host!r} is not a host name or IP address; {_EXAMPLE}")
    return target


def _valid_host(host: str) -> bool:
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return False
        return True
    return bool(_HOSTNAME.fullmatch(host))
