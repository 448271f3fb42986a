"""Caller authentication against the real server: the auth matrix through raw stubs and the SDK, tokens-file
reload, mutual TLS identities, per-caller idempotency, the caller in logs and metrics."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import imagegen
from imagegen.v1 import image_generation_service_pb2 as pb
from imagegen.v1 import image_generation_service_pb2_grpc as pb_grpc
from imagegen_cli.exit_codes import EXIT_NOT_AUTHORIZED, EXIT_OK
from imagegen_cli.main import main as cli_main
from imagegen_server.app import RunningServer
from tests.certificates import CertificateAuthority
from tests.conftest import ServerFactory
from tests.integration.status_helpers import details_of

SERVICE = "imagegen.v1.ImageGenerationService"
ALICE, VIEWER = "alice-token-0123456789", "viewer-token-0123456789"


def sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def tokens_toml(alice_tokens: list[str] | None = None) -> str:
    alice = ", ".join(f'"{sha(t)}"' for t in alice_tokens or [ALICE])
    return f"""
# alice may call everything; viewer only ListModels.
[[callers]]
name = "alice"
token_sha256 = [{alice}]

[[callers]]
name = "viewer"
token_sha256 = "{sha(VIEWER)}"
methods = ["{SERVICE}/ListModels"]
"""


def rewrite(path: Path, text: str | None) -> None:
    """Replace (or, with None, delete) the file; the mtime moves on by a second so that the change
    shows even on filesystems with coarse timestamps."""
    if text is None:
        path.unlink()
        return
    before = path.stat().st_mtime_ns
    path.write_text(text)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, max(st.st_mtime_ns, before) + 1_000_000_000))


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens.toml"
    path.write_text(tokens_toml())
    return path


@pytest.fixture
async def auth_server(make_server: ServerFactory, tokens_file: Path) -> AsyncIterator[RunningServer]:
    async with make_server(auth_tokens_file=str(tokens_file), metrics_port=0) as running:
        yield running


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def raw_status(
    target: str, method: str, metadata: tuple[tuple[str, str], ...] = ()
) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    """Call ``method`` with a raw stub; the status code, ErrorInfo reason and metadata (OK, "", {} on success)."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.ImageGenerationServiceStub(channel)
        request = pb.GenerateRequest(prompt="a red fox", options=pb.GenerationOptions(aspect_ratio="1:1"))
        try:
            if method == "ListModels":
                await stub.ListModels(pb.ListModelsRequest(), metadata=metadata, timeout=10)
            elif method == "Generate":
                await stub.Generate(request, metadata=metadata, timeout=10)
            elif method == "GenerateStream":
                stream_request = pb.GenerateStreamRequest(prompt="a red fox")
                async for _ in stub.GenerateStream(stream_request, metadata=metadata, timeout=10):
                    pass
        except grpc.aio.AioRpcError as err:
            d = details_of(err)
            assert d.error_infos == 1 and d.domain == "imagegen.dev"
            return d.code, d.reason, d.metadata
    return grpc.StatusCode.OK, "", {}


U, P, OK = grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.OK


@pytest.mark.parametrize(
    ("method", "metadata", "code", "reason"),
    [
        ("Generate", (), U, "CREDENTIALS_MISSING"),
        ("GenerateStream", (), U, "CREDENTIALS_MISSING"),
        ("ListModels", (), U, "CREDENTIALS_MISSING"),
        ("Generate", bearer("not-a-token"), U, "CREDENTIALS_INVALID"),
        ("Generate", bearer(""), U, "CREDENTIALS_INVALID"),
        ("Generate", (("authorization", f"Basic {ALICE}"),), U, "CREDENTIALS_INVALID"),
        ("Generate", bearer(VIEWER), P, "METHOD_NOT_ALLOWED"),
        ("GenerateStream", bearer(VIEWER), P, "METHOD_NOT_ALLOWED"),
        ("ListModels", bearer(VIEWER), OK, ""),
        ("Generate", bearer(ALICE), OK, ""),
        ("GenerateStream", bearer(ALICE), OK, ""),
    ],
)
async def test_auth_matrix_raw_stub(
    auth_server: RunningServer, method: str, metadata: tuple[tuple[str, str], ...], code: grpc.StatusCode, reason: str
) -> None:
    got_code, got_reason, meta = await raw_status(auth_server.target, method, metadata)
    assert (got_code, got_reason) == (code, reason)
    if code is not OK:
        assert meta["method"] == f"/{SERVICE}/{method}"


async def test_auth_matrix_sdk(auth_server: RunningServer) -> None:
    target = auth_server.target
    async with imagegen.AsyncClient(target) as anonymous:
        with pytest.raises(imagegen.AuthenticationError) as missing:
            await anonymous.generate("a red fox")
        assert missing.value.reason == "CREDENTIALS_MISSING"
    async with imagegen.AsyncClient(target, bearer_token="wrong") as wrong:
        with pytest.raises(imagegen.AuthenticationError) as invalid:
            await wrong.list_models()
        assert invalid.value.reason == "CREDENTIALS_INVALID"
    async with imagegen.AsyncClient(target, bearer_token=VIEWER) as viewer:
        assert await viewer.list_models()
        with pytest.raises(imagegen.PermissionDeniedError) as denied:
            await viewer.generate("a red fox")
        assert denied.value.metadata["method"] == f"/{SERVICE}/Generate"
        with pytest.raises(imagegen.PermissionDeniedError):
            async for _ in viewer.generate_stream("a red fox"):
                pass
    async with imagegen.AsyncClient(target, bearer_token=ALICE) as alice:
        result = await alice.generate("a red fox", aspect_ratio="1:1")
        assert result.image.data


async def test_health_and_reflection_stay_open(auth_server: RunningServer) -> None:
    async with grpc.aio.insecure_channel(auth_server.target) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        requests = iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        names = [
            s.name async for reply in stub.ServerReflectionInfo(requests) for s in reply.list_services_response.service
        ]
        assert SERVICE in names


async def test_open_methods_are_configurable(make_server: ServerFactory, tokens_file: Path) -> None:
    async with make_server(auth_tokens_file=str(tokens_file), auth_open_methods=(f"{SERVICE}/ListModels",)) as server:
        assert (await raw_status(server.target, "ListModels"))[0] is OK
        async with grpc.aio.insecure_channel(server.target) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as closed:
                await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert closed.value.code() is U


async def test_caller_in_access_log_and_bounded_metric_label(
    auth_server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="imagegen_server.access")
    assert (await raw_status(auth_server.target, "ListModels", bearer(ALICE)))[0] is OK
    assert (await raw_status(auth_server.target, "ListModels", bearer("nope")))[0] is U
    url = f"http://127.0.0.1:{auth_server.metrics_port}/metrics"
    expected_lines = [("ListModels OK", "caller=alice"), ("ListModels UNAUTHENTICATED", "caller=anonymous")]
    method = f"{SERVICE}/ListModels"
    expected_metrics = [
        f'imagegen_rpcs_total{{caller="alice",code="OK",method="{method}"}} 1.0',
        f'imagegen_rpcs_total{{caller="anonymous",code="UNAUTHENTICATED",method="{method}"}} 1.0',
    ]
    # The server logs and counts a call as its handler unwinds, which may be just after the client has
    # its status: look again for up to two seconds.
    for _ in range(200):
        lines = [r.getMessage() for r in caplog.records if r.name == "imagegen_server.access"]
        async with aiohttp.ClientSession() as http, http.get(url) as resp:
            text = await resp.text()
        logged = all(any(ln.startswith(start) and who in ln for ln in lines) for start, who in expected_lines)
        if logged and all(m in text for m in expected_metrics):
            break
        await asyncio.sleep(0.01)
    assert all(any(ln.startswith(start) and who in ln for ln in lines) for start, who in expected_lines), lines
    assert all(m in text for m in expected_metrics), text


async def test_tokens_file_changes_apply_without_restart(auth_server: RunningServer, tokens_file: Path) -> None:
    target = auth_server.target
    rotated = "alice-rotated-token-99"
    assert (await raw_status(target, "ListModels", bearer(rotated)))[0] is U

    # Rotation: both tokens valid for a while, then only the new one.
    rewrite(tokens_file, tokens_toml([ALICE, rotated]))
    assert (await raw_status(target, "ListModels", bearer(rotated)))[0] is OK
    assert (await raw_status(target, "ListModels", bearer(ALICE)))[0] is OK
    rewrite(tokens_file, tokens_toml([rotated]))
    assert (await raw_status(target, "ListModels", bearer(ALICE)))[0] is U

    # A broken edit keeps the last good version in force.
    rewrite(tokens_file, "[[callers]\nname = ")
    assert (await raw_status(target, "ListModels", bearer(rotated)))[0] is OK
    # So does a file that vanished for a moment.
    rewrite(tokens_file, None)
    assert (await raw_status(target, "ListModels", bearer(rotated)))[0] is OK


async def test_request_ids_are_scoped_per_caller(make_server: ServerFactory, tmp_path: Path) -> None:
    path = tmp_path / "two.toml"
    path.write_text(
        f'[[callers]]\nname = "a"\ntoken_sha256 = "{sha("token-a")}"\n'
        f'[[callers]]\nname = "b"\ntoken_sha256 = "{sha("token-b")}"\n'
    )
    async with (
        make_server(auth_tokens_file=str(path)) as server,
        imagegen.AsyncClient(server.target, bearer_token="token-a") as a,
        imagegen.AsyncClient(server.target, bearer_token="token-b") as b,
    ):
        first = await a.generate("a red fox", request_id="shared-id", seed=1)
        # Same request_id, another caller, another request: its own generation, not a mismatch error.
        other = await b.generate("a blue whale", request_id="shared-id", seed=2)
        assert other.generation_id != first.generation_id
        again = await a.generate("a red fox", request_id="shared-id", seed=1)
        assert again.generation_id == first.generation_id


async def test_mutual_tls_identity_is_the_caller(
    make_server: ServerFactory, tokens_file: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="imagegen_server.access")
    ca = CertificateAuthority(tmp_path)
    server_cert = ca.issue("imagegen-server", server=True)
    viewer, carol = ca.issue("viewer"), ca.issue("carol")
    (tmp_path / "wrong").mkdir()
    wrong_ca = CertificateAuthority(tmp_path / "wrong", "wrong-ca")
    async with make_server(
        tls_cert=str(server_cert.cert_path),
        tls_key=str(server_cert.key_path),
        tls_client_ca=str(ca.cert_path),
        auth_tokens_file=str(tokens_file),
    ) as server:

        def client(**kwargs: object) -> imagegen.AsyncClient:
            return imagegen.AsyncClient(server.target, ca_cert=ca.cert_pem, timeout=10, **kwargs)  # type: ignore[arg-type]

        # The certificate "viewer" gets the tokens-file entry of that name: ListModels only.
        async with client(client_cert=viewer.cert_pem, client_key=viewer.key_pem) as as_viewer:
            assert await as_viewer.list_models()
            with pytest.raises(imagegen.PermissionDeniedError):
                await as_viewer.generate("a red fox")
        # A certificate the CA signed with a name the file does not list may call everything.
        async with client(client_cert=carol.cert_pem, client_key=carol.key_pem) as as_carol:
            assert (await as_carol.generate("a red fox", aspect_ratio="1:1")).image.data
        # A bearer token on an mTLS connection names the caller it belongs to.
        async with client(client_cert=carol.cert_pem, client_key=carol.key_pem, bearer_token=VIEWER) as both:
            with pytest.raises(imagegen.PermissionDeniedError):
                await both.generate("a red fox")
        # No client certificate, or TLS trusting the wrong CA: no connection.
        async with client() as no_cert:
            with pytest.raises(imagegen.UnavailableError):
                await no_cert.list_models()
        async with imagegen.AsyncClient(
            server.target, ca_cert=wrong_ca.cert_pem, client_cert=carol.cert_pem, client_key=carol.key_pem, timeout=10
        ) as wrong_trust:
            with pytest.raises(imagegen.UnavailableError):
                await wrong_trust.list_models()
        # Raw stub, mTLS, no token: the certificate decides.
        creds = grpc.ssl_channel_credentials(ca.cert_pem, viewer.key_pem, viewer.cert_pem)
        async with grpc.aio.secure_channel(server.target, creds) as channel:
            stub = pb_grpc.ImageGenerationServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as denied:
                await stub.Generate(pb.GenerateRequest(prompt="a fox"), timeout=10)
            assert details_of(denied.value).reason == "METHOD_NOT_ALLOWED"
    lines = [r.getMessage() for r in caplog.records if r.name == "imagegen_server.access"]
    assert any(line.startswith("Generate OK") and "caller=carol" in line for line in lines)
    assert any(line.startswith("ListModels OK") and "caller=viewer" in line for line in lines)


async def test_cli_sends_the_token_from_a_file_or_the_environment(
    auth_server: RunningServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    token_file = tmp_path / "alice.token"
    token_file.write_text(ALICE + "\n")
    base = ["models", "--target", auth_server.target, "--timeout", "10"]
    monkeypatch.delenv("IMAGEGEN_TOKEN", raising=False)
    # The blocking CLI runs in a thread: the server runs on this loop.
    assert await asyncio.to_thread(cli_main, base) == EXIT_NOT_AUTHORIZED
    assert "not authorized" in capsys.readouterr().err
    assert await asyncio.to_thread(cli_main, [*base, "--token-file", str(token_file)]) == EXIT_OK
    monkeypatch.setenv("IMAGEGEN_TOKEN", VIEWER)
    assert await asyncio.to_thread(cli_main, base) == EXIT_OK
    generate = ["generate", "a fox", "--target", auth_server.target, "--timeout", "10"]
    assert await asyncio.to_thread(cli_main, generate) == EXIT_NOT_AUTHORIZED
    assert "may not call" in capsys.readouterr().err
