"""TLS and mutual TLS on the gRPC port: who can connect, and certificates replaced on disk without a restart."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import imagegen
from imagegen_cli.exit_codes import EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE
from imagegen_cli.main import main as cli_main
from imagegen_server.app import run_server
from imagegen_server.config import ConfigError, ServerConfig
from tests.certificates import CertificateAuthority, Issued
from tests.conftest import ServerFactory


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority(tmp_path)


@pytest.fixture
def server_cert(ca: CertificateAuthority) -> Issued:
    return ca.issue("imagegen-server", server=True)


async def _health(target: str, credentials: grpc.ChannelCredentials | None) -> grpc.StatusCode:
    """The status code of one health check over a fresh channel (OK when the handshake and call worked)."""
    channel = grpc.aio.secure_channel(target, credentials) if credentials else grpc.aio.insecure_channel(target)
    async with channel:
        try:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        except grpc.aio.AioRpcError as err:
            return err.code()
    return grpc.StatusCode.OK


async def test_tls_server_accepts_clients_that_trust_its_ca(
    make_server: ServerFactory, ca: CertificateAuthority, server_cert: Issued, tmp_path: Path
) -> None:
    (tmp_path / "other").mkdir()
    other = CertificateAuthority(tmp_path / "other", "other-ca")
    async with make_server(tls_cert=str(server_cert.cert_path), tls_key=str(server_cert.key_path)) as server:
        assert await _health(server.target, grpc.ssl_channel_credentials(ca.cert_pem)) is grpc.StatusCode.OK
        # The SDK with ca_cert= as a path.
        async with imagegen.AsyncClient(server.target, ca_cert=ca.cert_path) as client:
            assert await client.list_models()
        # Plaintext to a TLS port, and TLS trusting the wrong CA: no connection at all.
        assert await _health(server.target, None) is grpc.StatusCode.UNAVAILABLE
        assert await _health(server.target, grpc.ssl_channel_credentials(other.cert_pem)) is grpc.StatusCode.UNAVAILABLE
        # The blocking client runs in a thread: the server runs on this loop.
        with (
            imagegen.Client(server.target, ca_cert=other.cert_pem, timeout=5) as sync_client,
            pytest.raises(imagegen.UnavailableError),
        ):
            await asyncio.to_thread(sync_client.list_models)


async def test_mutual_tls_requires_a_client_certificate_from_the_client_ca(
    make_server: ServerFactory, ca: CertificateAuthority, server_cert: Issued, tmp_path: Path
) -> None:
    alice = ca.issue("alice")
    (tmp_path / "rogue").mkdir()
    rogue_ca = CertificateAuthority(tmp_path / "rogue", "rogue-ca")
    mallory = rogue_ca.issue("mallory")
    async with make_server(
        tls_cert=str(server_cert.cert_path), tls_key=str(server_cert.key_path), tls_client_ca=str(ca.cert_path)
    ) as server:
        with_cert = grpc.ssl_channel_credentials(ca.cert_pem, alice.key_pem, alice.cert_pem)
        assert await _health(server.target, with_cert) is grpc.StatusCode.OK
        without_cert = grpc.ssl_channel_credentials(ca.cert_pem)
        assert await _health(server.target, without_cert) is grpc.StatusCode.UNAVAILABLE
        foreign_cert = grpc.ssl_channel_credentials(ca.cert_pem, mallory.key_pem, mallory.cert_pem)
        assert await _health(server.target, foreign_cert) is grpc.StatusCode.UNAVAILABLE
        async with imagegen.AsyncClient(
            server.target, ca_cert=ca.cert_path, client_cert=alice.cert_path, client_key=alice.key_path
        ) as client:
            assert await client.list_models()
        async with imagegen.AsyncClient(server.target, ca_cert=ca.cert_path, timeout=5) as client:
            with pytest.raises(imagegen.UnavailableError):
                await client.list_models()


async def test_certificates_replaced_on_disk_serve_new_connections_without_restart(
    make_server: ServerFactory, ca: CertificateAuthority, server_cert: Issued, tmp_path: Path
) -> None:
    (tmp_path / "next").mkdir()
    next_ca = CertificateAuthority(tmp_path / "next", "next-ca")
    async with make_server(tls_cert=str(server_cert.cert_path), tls_key=str(server_cert.key_path)) as server:
        old_trust = grpc.ssl_channel_credentials(ca.cert_pem)
        new_trust = grpc.ssl_channel_credentials(next_ca.cert_pem)
        assert await _health(server.target, old_trust) is grpc.StatusCode.OK
        assert await _health(server.target, new_trust) is grpc.StatusCode.UNAVAILABLE

        # A half-done rotation (new certificate, old key) keeps serving the old pair.
        renewed = next_ca.issue("imagegen-server", server=True, file_stem="renewed")
        server_cert.cert_path.write_bytes(renewed.cert_pem)
        assert await _health(server.target, old_trust) is grpc.StatusCode.OK

        # The rotation completes: new connections get the new certificate.
        server_cert.key_path.write_bytes(renewed.key_pem)
        _touch_later(server_cert.key_path)
        assert await _health(server.target, new_trust) is grpc.StatusCode.OK
        assert await _health(server.target, old_trust) is grpc.StatusCode.UNAVAILABLE


def _touch_later(path: Path) -> None:
    """Move the mtime forward, so the change shows even on filesystems with coarse timestamps."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


async def test_unusable_tls_files_stop_the_start_with_one_line(
    ca: CertificateAuthority, server_cert: Issued, tmp_path: Path
) -> None:
    other = ca.issue("other", server=True)
    cases = {
        "--tls-cert and --tls-key go together": ServerConfig(port=0, tls_cert=str(server_cert.cert_path)),
        "--tls-client-ca needs --tls-cert": ServerConfig(port=0, tls_client_ca=str(ca.cert_path)),
        "are not a PEM certificate and its key": ServerConfig(
            port=0, tls_cert=str(server_cert.cert_path), tls_key=str(other.key_path)
        ),
        "cannot read": ServerConfig(port=0, tls_cert=str(tmp_path / "missing.crt"), tls_key=str(other.key_path)),
        "is not a PEM CA certificate": ServerConfig(
            port=0,
            tls_cert=str(server_cert.cert_path),
            tls_key=str(server_cert.key_path),
            tls_client_ca=str(server_cert.key_path),
        ),
    }
    for expected, config in cases.items():
        with pytest.raises(ConfigError, match=expected) as caught:
            async with run_server(config):
                pass  # pragma: no cover - the start fails
        assert "\n" not in str(caught.value)


async def test_cli_speaks_mutual_tls(
    make_server: ServerFactory, ca: CertificateAuthority, server_cert: Issued, capsys: pytest.CaptureFixture[str]
) -> None:
    alice = ca.issue("alice")
    async with make_server(
        tls_cert=str(server_cert.cert_path), tls_key=str(server_cert.key_path), tls_client_ca=str(ca.cert_path)
    ) as server:
        base = ["models", "--target", server.target, "--timeout", "5", "--ca-cert", str(ca.cert_path)]
        with_cert = [*base, "--client-cert", str(alice.cert_path), "--client-key", str(alice.key_path)]
        # The CLI is blocking; the server runs on this loop, so the CLI runs in a thread.
        assert await asyncio.to_thread(cli_main, with_cert) == EXIT_OK
        assert "gemini" in capsys.readouterr().out
        assert await asyncio.to_thread(cli_main, base) == EXIT_UNAVAILABLE
        assert await asyncio.to_thread(cli_main, [*base, "--client-cert", str(alice.cert_path)]) == EXIT_USAGE
        assert "--client-cert and --client-key go together" in capsys.readouterr().err
