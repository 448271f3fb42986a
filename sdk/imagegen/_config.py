"""The transport-independent half of the clients: defaults, channel options, metadata and retry settings."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc

from imagegen._convert import CallOptions, MetadataInput, normalize_metadata
from imagegen._retry import Attempts, ClientRetry

__all__ = ["DEFAULT_TARGET", "DEFAULT_TIMEOUT", "MAX_MESSAGE_BYTES", "ChannelOptions", "ClientConfig"]

#: Where the clients connect when no target is given (``imagegen serve``'s default).
DEFAULT_TARGET = "127.0.0.1:50051"
#: Default deadline of each call, in seconds (all client-side retries included).
DEFAULT_TIMEOUT = 120.0
#: Send and receive message limit of the clients' channels (images are megabytes;
#: gRPC's default receive limit is 4 MiB). Matches the server's.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

_VERSION = "0.1.0"

#: Extra channel options: ``(name, value)`` pairs that override the defaults.
ChannelOptions = Iterable[tuple[str, Any]]


def _channel_options(extra: ChannelOptions) -> list[tuple[str, Any]]:
    merged: dict[str, Any] = {
        "grpc.max_send_message_length": MAX_MESSAGE_BYTES,
        "grpc.max_receive_message_length": MAX_MESSAGE_BYTES,
        "grpc.primary_user_agent": f"imagegen-python/{_VERSION}",
    }
    merged.update(dict(extra))
    return list(merged.items())


class ClientConfig:
    """Configuration and per-call helpers shared by :class:`imagegen.Client` and :class:`imagegen.AsyncClient`."""

    def __init__(
        self,
        target: str,
        *,
        timeout: float | None,
        metadata: MetadataInput,
        credentials: grpc.ChannelCredentials | None,
        bearer_token: str | None,
        options: ChannelOptions,
        retry: ClientRetry | None,
    ) -> None:
        self._target = target
        self._timeout = timeout
        self._credentials = credentials
        self._options = _channel_options(options)
        self._retry = retry or ClientRetry(max_attempts=1)
        base = normalize_metadata(metadata)
        if bearer_token:
            base = (*base, ("authorization", f"Bearer {bearer_token}"))
        self._metadata = base

    @property
    def target(self) -> str:
        """The server address this client connects to."""
        return self._target

    @property
    def timeout(self) -> float | None:
        """The default per-call deadline in seconds (``None``: no deadline)."""
        return self._timeout

    @property
    def retry(self) -> ClientRetry | None:
        """The client-side retry policy, or ``None`` when retries are off."""
        return self._retry if self._retry.max_attempts > 1 else None

    def _call_metadata(self, call: CallOptions) -> tuple[tuple[str, str | bytes], ...]:
        return (*self._metadata, *normalize_metadata(call.metadata))

    def _attempts(self, call: CallOptions) -> Attempts:
        timeout = self._timeout if call.timeout is None else call.timeout
        return Attempts(self._retry, idempotent=call.idempotent, timeout=timeout)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(target={self._target!r})"
