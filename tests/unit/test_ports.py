"""Why an address cannot be bound, in one sentence (the real sockets of this machine)."""

from __future__ import annotations

import errno
import socket

import pytest

from imagegen_server.ports import CannotListenError, check_bindable, describe_bind_error, host_port


def test_a_free_port_and_port_0_are_bindable() -> None:
    check_bindable("127.0.0.1", 0)
    with socket.create_server(("127.0.0.1", 0)) as probe:
        free = probe.getsockname()[1]
    check_bindable("127.0.0.1", free)  # released: free again


def test_a_listening_port_is_in_use() -> None:
    with socket.create_server(("127.0.0.1", 0)) as holder:
        port = holder.getsockname()[1]
        with pytest.raises(CannotListenError, match=rf"^port {port} on 127.0.0.1 is already in use; .* --port$"):
            check_bindable("127.0.0.1", port)
        with pytest.raises(CannotListenError, match=r"^metrics port .* --metrics-port$"):
            check_bindable("127.0.0.1", port, what="metrics port", flag="--metrics-port")


def test_unknown_and_foreign_hosts() -> None:
    with pytest.raises(CannotListenError, match=r"cannot resolve the host 'no-such-host\.invalid'"):
        check_bindable("no-such-host.invalid", 50051)
    with pytest.raises(CannotListenError, match=r"^192\.0\.2\.1 is not an address of this machine"):
        check_bindable("192.0.2.1", 50051)


def test_other_reasons() -> None:
    denied = OSError(errno.EACCES, "Permission denied")
    assert "ports below 1024 need privileges" in describe_bind_error(denied, "0.0.0.0", 80)
    odd = OSError(errno.EINVAL, "Invalid argument")
    assert describe_bind_error(odd, "h", 1) == "cannot listen on h:1: Invalid argument"


def test_host_port_brackets_bare_ipv6() -> None:
    assert host_port("127.0.0.1", 1) == "127.0.0.1:1"
    assert host_port("::1", 2) == "[::1]:2"
    assert host_port("[::]", 3) == "[::]:3"
    assert host_port("localhost", 4) == "localhost:4"
