"""TLS and mutual TLS for the gRPC port, with certificates reloaded from disk without a restart.

:class:`CertificateFiles` holds the paths of the server certificate, its key
and (for mTLS) the CA that signs client certificates. gRPC asks it for the
current configuration at every TLS handshake
(``grpc.dynamic_ssl_server_credentials``); it answers "unchanged" unless a
file's modification time or size changed, and then re-reads and checks all
three. A half-written rotation (a key that does not match the certificate)
keeps the previous certificates and logs why, so a renewal never takes the
port down. :func:`peer_identity` names the caller of an mTLS connection.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import grpc

from imagegen_server.config import ConfigError

log = logging.getLogger(__name__)


class TLSConfigError(ConfigError):
    """The TLS files are missing, unreadable or do not belong together (said in one line)."""


@dataclass(frozen=True, slots=True)
class _Loaded:
    """One consistent read of the files, and the stamps it was read at."""

    stamps: tuple[tuple[int, int], ...]
    configuration: grpc.ServerCertificateConfiguration
    #: The same files for Python's ssl (the REST port).
    context: ssl.SSLContext


class CertificateFiles:
    """The server's certificate files, re-read when they change on disk.

    ``cert`` is a PEM chain (leaf first), ``key`` its PEM private key and
    ``client_ca`` optional PEM CA certificates; with it, clients must present a
    certificate signed by one of them.
    """

    def __init__(self, cert: str, key: str, client_ca: str | None = None) -> None:
        self._paths = tuple(p for p in (cert, key, client_ca) if p)
        self._cert, self._key, self._client_ca = cert, key, client_ca
        # grpc calls fetch() from its own threads, one handshake at a time or not.
        self._lock = threading.Lock()
        self._loaded = self._load(self._stamps())
        self._rejected: tuple[tuple[int, int], ...] | None = None

    @property
    def requires_client_certificates(self) -> bool:
        """True for mutual TLS (a client CA was given)."""
        return self._client_ca is not None

    def credentials(self) -> grpc.ServerCredentials:
        """Server credentials that ask :meth:`fetch` for the certificates at each handshake."""
        # grpc's fetcher may return None ("unchanged"); its type stubs say otherwise.
        fetcher = cast(Callable[[], grpc.ServerCertificateConfiguration], self.fetch)
        return grpc.dynamic_ssl_server_credentials(
            self._loaded.configuration,
            fetcher,
            require_client_authentication=self.requires_client_certificates,
        )

    def ssl_context(self) -> ssl.SSLContext:
        """A server SSLContext for an HTTP port (the REST gateway) with the same files and the same reloads.

        At each handshake (Python calls the SNI callback even without SNI) the files are checked as for
        gRPC and the connection gets the current certificates.
        """
        front = self._loaded.context

        def current(connection: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext) -> None:
            self.fetch()
            connection.context = self._loaded.context

        front.sni_callback = current
        return front

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """The new configuration if a file changed since the last read, else None (gRPC keeps the current)."""
        with self._lock:
            try:
                stamps = self._stamps()
            except TLSConfigError as exc:
                self._warn_once(None, exc)
                return None
            if stamps in (self._loaded.stamps, self._rejected):
                return None
            try:
                loaded = self._load(stamps)
            except TLSConfigError as exc:
                self._warn_once(stamps, exc)
                return None
            self._loaded = loaded
            log.info("TLS certificates reloaded from %s", ", ".join(self._paths))
            return loaded.configuration

    def _warn_once(self, stamps: tuple[tuple[int, int], ...] | None, exc: TLSConfigError) -> None:
        if stamps is None or stamps != self._rejected:
            log.warning("TLS certificates not reloaded, keeping the previous ones: %s", exc)
        if stamps is not None:
            self._rejected = stamps

    def _stamps(self) -> tuple[tuple[int, int], ...]:
        try:
            stats = [os.stat(p) for p in self._paths]
        except OSError as exc:
            raise TLSConfigError(f"cannot read {exc.filename}: {exc.strerror}") from exc
        return tuple((s.st_mtime_ns, s.st_size) for s in stats)

    def _load(self, stamps: tuple[tuple[int, int], ...]) -> _Loaded:
        """Read and cross-check the files: the key must match the certificate, the CA must parse."""
        check = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # no default CAs: only --tls-client-ca signs clients
        try:
            check.load_cert_chain(self._cert, self._key)
        except (OSError, ssl.SSLError) as exc:
            raise TLSConfigError(
                f"--tls-cert {self._cert} and --tls-key {self._key} are not a PEM certificate and its key ({exc})"
            ) from exc
        ca: bytes | None = None
        if self._client_ca is not None:
            try:
                check.load_verify_locations(cafile=self._client_ca)
            except (OSError, ssl.SSLError) as exc:
                raise TLSConfigError(f"--tls-client-ca {self._client_ca} is not a PEM CA certificate ({exc})") from exc
            ca = _read(self._client_ca)
            check.verify_mode = ssl.CERT_REQUIRED
        configuration = grpc.ssl_server_certificate_configuration(
            [(_read(self._key), _read(self._cert))], root_certificates=ca
        )
        return _Loaded(stamps, configuration, check)


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise TLSConfigError(f"cannot read {path}: {exc.strerror}") from exc


def peer_identity(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    """The verified client certificate's identity: its common name, else its first subject alternative name.

    None on a plaintext or server-only TLS connection (no client certificate).
    """
    auth = context.auth_context()
    for key in ("x509_common_name", "x509_subject_alternative_name"):
        values = auth.get(key) or []
        for value in values:
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
            if text:
                return text
    return None
