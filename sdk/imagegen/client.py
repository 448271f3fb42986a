"""The sync :class:`Client` and async :class:`AsyncClient`: one implementation, two transports.

:class:`AsyncClient` (on ``grpc.aio``) is written once in ``imagegen/_async``;
:class:`Client` (on grpc's blocking channel, no event loop or thread hop) is
generated from it by unasyncd into ``imagegen/_sync``. Both build the same
request messages, return the same typed results and events (see
:mod:`imagegen.types`) and raise the same exceptions (see :mod:`imagegen.errors`).

Example::

    import imagegen

    with imagegen.Client("127.0.0.1:50051") as client:
        result = client.generate("a red fox in the snow", width=1024, height=1024, seed=7)
        result.save("fox.png")
"""

from __future__ import annotations

from imagegen._async.client import AsyncClient
from imagegen._async.stream import AsyncEventStream
from imagegen._config import (
    DEFAULT_TARGET,
    DEFAULT_TIMEOUT,
    MAX_MESSAGE_BYTES,
    ChannelOptions,
    PemSource,
    tls_credentials,
)
from imagegen._sync.client import Client
from imagegen._sync.stream import EventStream

__all__ = [
    "DEFAULT_TARGET",
    "DEFAULT_TIMEOUT",
    "MAX_MESSAGE_BYTES",
    "AsyncClient",
    "AsyncEventStream",
    "ChannelOptions",
    "Client",
    "EventStream",
    "PemSource",
    "tls_credentials",
]
