"""The transport-independent half of the clients: defaults, channel options, metadata and retry settings."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import grpc

from imagegen._convert import CallOptions, MetadataInput, normalize_metadata
from imagegen._retry import Attempts, ClientRetry

__all__ = [
    "DEFAULT_TARGET",
    "DEFAULT_TIMEOUT",
    "MAX_MESSAGE_BYTES",
    "ChannelOptions",
    "ClientConfig",
    "PemSource",
    "tls_credentials",
]

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


#: A PEM file path, or the PEM bytes themselves.
PemSource = str | os.PathLike[str] | bytes


def _pem(source: PemSource | None) -> bytes | None:
    if source is None or isinstance(source, bytes):
        return source
    with open(source, "rb") as f:
        return f.read()


def tls_credentials(
    *,
    ca_cert: PemSource | None = None,
    client_cert: PemSource | None = None,
    client_key: PemSource | None = None,
) -> grpc.ChannelCredentials:
    """TLS channel credentials from PEM files (paths) or PEM bytes.

    Args:
        ca_cert: CA certificate(s) that signed the server's certificate; ``None`` trusts the system's roots.
        client_cert: This client's certificate chain, for servers that require client certificates (mTLS).
        client_key: The private key of ``client_cert``.
    """
    if (client_cert is None) != (client_key is None):
        raise ValueError("client_cert and client_key go together: give both or neither")
    return grpc.ssl_channel_credentials(
        root_certificates=_pem(ca_cert), private_key=_pem(client_key), certificate_chain=_pem(client_cert)
    )


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
        ca_cert: PemSource | None = None,
        client_cert: PemSource | None = None,
        client_key: PemSource | None = None,
    ) -> None:
        self._target = target
        self._timeout = timeout
        if ca_cert is not None or client_cert is not None or client_key is not None:
            if credentials is not None:
                raise ValueError("give either credentials or ca_cert/client_cert/client_key, not both")
            credentials = tls_credentials(ca_cert=ca_cert, client_cert=client_cert, client_key=client_key)
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
