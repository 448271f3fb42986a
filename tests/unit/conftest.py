"""Unit-test fixtures: the SDK against a fake server (imagegen.testing), no real server or emulator.

``server`` here is the fake: within tests/unit it replaces tests/conftest.py's real
server, which unit tests do not use (integration tests do).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import imagegen
from imagegen.testing import FakeServer


@pytest.fixture
def server() -> Iterator[FakeServer]:
    """A fake imagegen gRPC server on a loopback port; script it with ``server.servicer.push(...)``."""
    with FakeServer() as running:
        yield running


@pytest.fixture
def client(server: FakeServer) -> Iterator[imagegen.Client]:
    """A sync client on the fake server, with a 10 s default deadline."""
    with imagegen.Client(server.target, timeout=10) as c:
        yield c
