"""REST/JSON and Server-Sent Events on --http-port, end to end over real HTTP against the real server and emulator."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest

from imagegen.v1 import image_generation_service_pb2 as pb
from imagegen.v1 import image_generation_service_pb2_grpc as pb_grpc
from imagegen_server.app import RunningServer
from imagegen_server.emulator import Emulator
from tests.certificates import CertificateAuthority
from tests.conftest import ServerFactory
from tests.integration.test_auth import ALICE, VIEWER, tokens_toml
from tests.integration.test_quotas import AUTH, quota_file

ORIGIN = "https://dashboard.example"
ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"
RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"


@pytest.fixture
async def rest(make_server: ServerFactory) -> AsyncIterator[RunningServer]:
    async with make_server(http_port=0, cors_origins=(ORIGIN,), max_attempts=2) as server:
        yield server


@pytest.fixture
async def http(rest: RunningServer) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(f"http://127.0.0.1:{rest.http_port}") as session:
        yield session


def _detail(status: dict[str, Any], type_url: str) -> dict[str, Any]:
    return next(d for d in status["details"] if d["@type"] == type_url)


async def _sse(response: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """Read an event stream event by event, as it arrives."""
    event, data = "", ""
    async for raw in response.content:
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            event = line[len("event: ") :]
        elif line.startswith("data: "):
            data += line[len("data: ") :]
        elif line == "" and data:
            yield event, json.loads(data)
            event, data = "", ""


async def test_list_models(http: aiohttp.ClientSession) -> None:
    async with http.get("/v1/models") as resp:
        assert resp.status == 200 and resp.content_type == "application/json"
        models = {m["name"]: m for m in (await resp.json())["models"]}
    assert models["gemini-3.1-flash-image"]["isDefault"] is True
    assert "16:9" in models["gemini-3.1-flash-image"]["aspectRatios"]


async def test_generate_then_refine(http: aiohttp.ClientSession) -> None:
    body = {"prompt": "a cat", "options": {"imageSize": "512", "seed": 3, "requestId": "rest-1"}}
    async with http.post("/v1/images:generate", json=body) as resp:
        assert resp.status == 200, await resp.text()
        first = (await resp.json())["generation"]
    assert base64.b64decode(first["image"]["data"]).startswith(b"\x89PNG")
    assert first["seed"] == 3 and first["attempts"] == 1 and first["model"] == "gemini-3.1-flash-image"
    # The model turn goes back verbatim, its image by generation id in historyImages, as the proto says.
    refine = {
        "prompt": "make it blue",
        "history": [{"role": "ROLE_USER", "parts": [{"text": "a cat"}]}, first["modelTurn"]],
        "historyImages": {first["generationId"]: first["image"]},
        "options": {"imageSize": "512"},
    }
    async with http.post("/v1/images:refine", json=refine) as resp:
        assert resp.status == 200, await resp.text()
        second = (await resp.json())["generation"]
    assert second["image"]["data"] != first["image"]["data"]


async def test_generate_stream_is_read_event_by_event(http: aiohttp.ClientSession, emulator: Emulator) -> None:
    flaky = emulator.scenario("overloaded", "ok")
    async with http.post("/v1/images:generateStream", json={"prompt": f"a fox {flaky.marker}"}) as resp:
        assert resp.status == 200 and resp.content_type == "text/event-stream"
        events = [(name, data) async for name, data in _sse(resp)]
    names = [name for name, _ in events]
    assert names == ["accepted", "attempt_started", "attempt_failed", "attempt_started", "completed"]
    # Each event's data is the whole stream message in protobuf's JSON mapping, keyed by the same kind.
    assert all(name.replace("_s", "S").replace("_f", "F") in data for name, data in events)
    failed = events[2][1]["attemptFailed"]
    assert failed["reason"] == "UPSTREAM_UNAVAILABLE" and failed["willRetry"] is True
    assert base64.b64decode(events[-1][1]["completed"]["image"]["data"]).startswith(b"\x89PNG")


async def test_a_stream_that_fails_ends_with_an_error_event(http: aiohttp.ClientSession, emulator: Emulator) -> None:
    blocked = emulator.scenario("prompt_blocked")
    async with http.post("/v1/images:generateStream", json={"prompt": f"x {blocked.marker}"}) as resp:
        assert resp.status == 200, await resp.text()
        events = [(name, data) async for name, data in _sse(resp)]
    assert events[0][0] == "accepted"
    name, status = events[-1]
    assert name == "error" and status["code"] == 3  # INVALID_ARGUMENT
    assert _detail(status, ERROR_INFO)["reason"] == "CONTENT_BLOCKED"


async def test_a_stream_refused_before_it_starts_is_a_plain_json_error(http: aiohttp.ClientSession) -> None:
    async with http.post("/v1/images:generateStream", json={"prompt": ""}) as resp:
        assert resp.status == 400 and resp.content_type == "application/json"
        status = await resp.json()
    assert status["code"] == 3
    assert _detail(status, BAD_REQUEST)["fieldViolations"][0]["field"] == "prompt"


@pytest.mark.parametrize(
    ("step", "http_status", "code", "reason"),
    [
        ("rate_limit:0.2", 429, 8, "UPSTREAM_RATE_LIMITED"),
        ("overloaded", 503, 14, "UPSTREAM_UNAVAILABLE"),
        ("not_found", 404, 5, "MODEL_NOT_FOUND"),
        ("no_image", 400, 9, "NO_IMAGE"),
        ("bad_key", 500, 13, "UPSTREAM_AUTH"),
    ],
)
async def test_errors_are_google_rpc_status_with_googles_http_status(
    http: aiohttp.ClientSession, emulator: Emulator, step: str, http_status: int, code: int, reason: str
) -> None:
    failing = emulator.scenario(step)
    body = {"prompt": f"x {failing.marker}", "options": {"requestId": f"err-{code}"}}
    async with http.post("/v1/images:generate", json=body) as resp:
        assert resp.status == http_status
        status = await resp.json()
    assert status["code"] == code and status["message"]
    info = _detail(status, ERROR_INFO)
    assert info["reason"] == reason and info["domain"] == "imagegen.dev"
    assert info["metadata"]["requestId"] == f"err-{code}"
    if http_status == 429:
        assert _detail(status, RETRY_INFO)["retryDelay"].endswith("s")
    assert emulator.api_key not in json.dumps(status)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"{not json", "body"),
        (b'["a list"]', "body"),
        (b'{"promt": "a typo"}', "promt"),
        (b'{"prompt": "x", "options": {"seed": "many"}}', "options.seed"),
        (b'{"prompt": "x", "options": {"seedd": 1}}', "options.seedd"),
        (b'{"prompt": "x", "history": []}', "history"),
        (b'{"prompt": 5}', "prompt"),
    ],
)
async def test_bad_json_is_400_invalid_argument_naming_the_field(
    http: aiohttp.ClientSession, body: bytes, field: str
) -> None:
    headers = {"Content-Type": "application/json"}
    async with http.post("/v1/images:generate", data=body, headers=headers) as resp:
        assert resp.status == 400
        status = await resp.json()
    assert status["code"] == 3
    assert _detail(status, ERROR_INFO)["reason"] == "INVALID_REQUEST"
    assert _detail(status, BAD_REQUEST)["fieldViolations"][0]["field"] == field


async def test_cors_for_the_configured_origin_only(http: aiohttp.ClientSession) -> None:
    preflight = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}
    async with http.options("/v1/images:generateStream", headers=preflight) as resp:
        assert resp.status == 204
        assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
        assert "authorization" in resp.headers["Access-Control-Allow-Headers"]
    async with http.get("/v1/models", headers={"Origin": ORIGIN}) as resp:
        assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
    async with http.post("/v1/images:generateStream", json={"prompt": "a cat"}, headers={"Origin": ORIGIN}) as resp:
        assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN  # streams too
        await resp.read()
    async with http.get("/v1/models", headers={"Origin": "https://elsewhere.example"}) as resp:
        assert "Access-Control-Allow-Origin" not in resp.headers
    async with http.options("/v1/models", headers={**preflight, "Origin": "https://elsewhere.example"}) as resp:
        assert resp.status == 403


async def test_rest_calls_are_logged_and_counted_like_grpc_calls(
    make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="imagegen_server.access")
    async with make_server(http_port=0, metrics_port=0) as server, aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{server.http_port}"
        body = {"prompt": "a cat", "options": {"requestId": "rest-m1"}}
        async with http.post(f"{base}/v1/images:generate", json=body) as resp:
            assert resp.status == 200
        async with http.post(f"{base}/v1/images:generate", data=b"{", headers={"X-Request-Id": "rest-m2"}) as resp:
            assert resp.status == 400
        async with http.get(f"http://127.0.0.1:{server.metrics_port}/metrics") as resp:
            text = await resp.text()
    method = "imagegen.v1.ImageGenerationService/Generate"
    assert f'imagegen_rpcs_total{{caller="anonymous",code="OK",method="{method}"}} 1.0' in text
    assert f'imagegen_rpcs_total{{caller="anonymous",code="INVALID_ARGUMENT",method="{method}"}} 1.0' in text
    access = [r for r in caplog.records if r.name == "imagegen_server.access"]
    ok = next(r for r in access if getattr(r, "request_id", "") == "rest-m1")
    assert ok.code == "OK" and ok.attempts == 1  # type: ignore[attr-defined]
    assert any(getattr(r, "request_id", "") == "rest-m2" and r.code == "INVALID_ARGUMENT" for r in access)  # type: ignore[attr-defined]


async def test_no_http_port_by_default(server: RunningServer) -> None:
    assert server.http_port is None


async def test_rest_applies_the_grpc_ports_caller_check(make_server: ServerFactory, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(tokens_toml())
    async with (
        make_server(http_port=0, auth_tokens_file=str(tokens)) as server,
        aiohttp.ClientSession(f"http://127.0.0.1:{server.http_port}") as http,
    ):
        body = {"prompt": "a cat"}
        async with http.post("/v1/images:generate", json=body) as resp:
            assert resp.status == 401
            assert _detail(await resp.json(), ERROR_INFO)["reason"] == "CREDENTIALS_MISSING"
        async with http.post("/v1/images:generate", json=body, headers={"Authorization": "Bearer nope"}) as resp:
            assert resp.status == 401
            assert _detail(await resp.json(), ERROR_INFO)["reason"] == "CREDENTIALS_INVALID"
        async with http.post("/v1/images:generate", json=body, headers={"Authorization": f"Bearer {VIEWER}"}) as resp:
            assert resp.status == 403
            assert _detail(await resp.json(), ERROR_INFO)["reason"] == "METHOD_NOT_ALLOWED"
        async with http.get("/v1/models", headers={"Authorization": f"Bearer {VIEWER}"}) as resp:
            assert resp.status == 200
        async with http.post("/v1/images:generate", json=body, headers={"Authorization": f"Bearer {ALICE}"}) as resp:
            assert resp.status == 200
        async with http.post(
            "/v1/images:generateStream", json=body, headers={"Authorization": f"Bearer {ALICE}"}
        ) as resp:
            assert resp.status == 200 and resp.content_type == "text/event-stream"
            assert [name async for name, _ in _sse(resp)][-1] == "completed"


async def test_one_quota_for_both_ports(make_server: ServerFactory, tmp_path: Path) -> None:
    tokens = quota_file(tmp_path, requests_per_minute=60, burst=2)
    async with (
        make_server(http_port=0, auth_tokens_file=str(tokens)) as server,
        grpc.aio.insecure_channel(server.target) as channel,
        aiohttp.ClientSession(f"http://127.0.0.1:{server.http_port}") as http,
    ):
        await pb_grpc.ImageGenerationServiceStub(channel).Generate(pb.GenerateRequest(prompt="a cat"), metadata=AUTH)
        headers = {"Authorization": "Bearer lim"}
        async with http.post("/v1/images:generate", json={"prompt": "a cat"}, headers=headers) as resp:
            assert resp.status == 200  # the burst's second call
        async with http.post("/v1/images:generateStream", json={"prompt": "a cat"}, headers=headers) as resp:
            assert resp.status == 429 and resp.content_type == "application/json"
            status = await resp.json()
    info = _detail(status, ERROR_INFO)
    assert info["reason"] == "CALLER_QUOTA_EXCEEDED" and info["metadata"]["caller"] == "limited"
    assert _detail(status, RETRY_INFO)["retryDelay"].endswith("s")
    assert _detail(status, "type.googleapis.com/google.rpc.QuotaFailure")["violations"]


async def test_a_body_over_the_methods_limit_is_refused_before_parsing(make_server: ServerFactory) -> None:
    async with (
        make_server(http_port=0, max_message_bytes=1024) as server,
        aiohttp.ClientSession(f"http://127.0.0.1:{server.http_port}") as http,
    ):
        body = b'{"prompt": "' + b"x" * 1500 + b'"}'
        async with http.post("/v1/images:generate", data=body, headers={"Content-Type": "application/json"}) as resp:
            status = await resp.json()
    assert status["code"] == 8 and _detail(status, ERROR_INFO)["reason"] == "REQUEST_TOO_LARGE"


async def test_mutual_tls_on_the_rest_port(
    make_server: ServerFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="imagegen_server.access")
    ca = CertificateAuthority(tmp_path)
    server_cert, alice = ca.issue("imagegen-server", server=True), ca.issue("alice")
    tls = {"tls_cert": str(server_cert.cert_path), "tls_key": str(server_cert.key_path)}
    async with (
        make_server(http_port=0, tls_client_ca=str(ca.cert_path), **tls) as server,
        aiohttp.ClientSession(f"https://127.0.0.1:{server.http_port}") as http,
    ):
        with_cert = ssl.create_default_context(cafile=str(ca.cert_path))
        with_cert.load_cert_chain(alice.cert_path, alice.key_path)
        async with http.post("/v1/images:generate", json={"prompt": "a cat"}, ssl=with_cert) as resp:
            assert resp.status == 200
        without = ssl.create_default_context(cafile=str(ca.cert_path))
        with pytest.raises(aiohttp.ClientError):
            async with http.get("/v1/models", ssl=without) as resp:
                await resp.read()
    line = next(r for r in caplog.records if r.name == "imagegen_server.access")
    assert line.caller == "alice" and line.code == "OK"  # type: ignore[attr-defined]


async def test_rest_port_serves_replaced_certificates_without_restart(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    ca = CertificateAuthority(tmp_path)
    server_cert = ca.issue("imagegen-server", server=True)
    (tmp_path / "next").mkdir()
    next_ca = CertificateAuthority(tmp_path / "next", "next-ca")
    tls = {"tls_cert": str(server_cert.cert_path), "tls_key": str(server_cert.key_path)}
    old_trust = ssl.create_default_context(cafile=str(ca.cert_path))
    new_trust = ssl.create_default_context(cafile=str(next_ca.cert_path))
    async with make_server(http_port=0, **tls) as server, aiohttp.ClientSession() as http:
        url = f"https://127.0.0.1:{server.http_port}/v1/models"

        async def trusted(context: ssl.SSLContext) -> bool:
            # A new connection each time: certificates are picked at the handshake.
            try:
                async with http.get(url, ssl=context, headers={"Connection": "close"}) as resp:
                    return resp.status == 200
            except aiohttp.ClientConnectorCertificateError:
                return False

        assert await trusted(old_trust) and not await trusted(new_trust)
        renewed = next_ca.issue("imagegen-server", server=True, file_stem="renewed")
        server_cert.cert_path.write_bytes(renewed.cert_pem)
        server_cert.key_path.write_bytes(renewed.key_pem)
        stat = server_cert.key_path.stat()
        os.utime(server_cert.key_path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
        assert await trusted(new_trust) and not await trusted(old_trust)


@pytest.mark.parametrize("path", ["/v1/images:generateStream", "/v1/images:generate"])
async def test_a_caller_hanging_up_aborts_the_upstream_call(
    make_server: ServerFactory, emulator: Emulator, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="imagegen_server.access")
    slow = emulator.scenario("latency:30+ok")
    async with make_server(http_port=0) as server, aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{server.http_port}{path}"
        body = {"prompt": f"a fox {slow.marker}"}
        if "Stream" in path:
            resp = await http.post(url, json=body)
            assert (await resp.content.readline()).startswith(b"event: accepted")
            await slow.wait_for(lambda s: s.received == 1, timeout=10.0)
            resp.close()  # hang up mid-stream
        else:
            request = asyncio.ensure_future(http.post(url, json=body))
            await slow.wait_for(lambda s: s.received == 1, timeout=10.0)
            request.cancel()  # the connection closes under the waiting response
            with contextlib.suppress(asyncio.CancelledError):
                await request
        await slow.wait_for(lambda s: s.aborted == 1, timeout=5.0)
        for _ in range(200):  # bounded: the access line follows the abort
            if any(getattr(r, "code", "") == "CANCELLED" for r in caplog.records):
                break
            await asyncio.sleep(0.01)
        method = "imagegen.v1.ImageGenerationService/" + ("GenerateStream" if "Stream" in path else "Generate")
        assert server.metrics.registry.get_sample_value("imagegen_rpcs_in_flight", {"method": method}) == 0
    assert any(getattr(r, "code", "") == "CANCELLED" for r in caplog.records)
