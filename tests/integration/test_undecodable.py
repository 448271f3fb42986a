"""Request bytes that do not decode, sent raw over a real channel to every method: INVALID_ARGUMENT, no traceback."""

from __future__ import annotations

import logging

import grpc
import pytest
from grpc_health.v1 import health_pb2

from imagegen.v1 import image_generation_service_pb2 as pb
from imagegen_server.app import RunningServer
from tests.integration.status_helpers import access_lines, details_of

SERVICE = "/imagegen.v1.ImageGenerationService/"
UNARY = ["Generate", "Refine", "ListModels"]
STREAMING = ["GenerateStream", "RefineStream"]

#: Field 1 (prompt) with 4 bytes of invalid UTF-8; a length running past the end; bytes that are no message.
HOSTILE = {
    "invalid_utf8": bytes.fromhex("0a04fffec080"),
    "truncated": bytes.fromhex("0a10") + b"abc",
    "garbage": b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",
    "bad_wire_type": b"\x0f\x00",
}


def _check(err: grpc.aio.AioRpcError, method: str, size: int) -> None:
    d = details_of(err)
    assert d.code is grpc.StatusCode.INVALID_ARGUMENT, (d.code, d.message)
    assert d.reason == "UNDECODABLE_REQUEST"
    assert d.domain == "imagegen.dev"
    assert d.error_infos == 1
    assert d.metadata == {"method": method, "requestBytes": str(size)}
    assert "Error" not in d.message and "Exception" not in d.message, d.message
    assert "not a valid imagegen.v1." in d.message or "not a valid grpc.health" in d.message


def _no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR or "Traceback" in r.getMessage()]
    assert not bad, [r.getMessage() for r in bad]


@pytest.mark.parametrize("method", UNARY)
@pytest.mark.parametrize("kind", sorted(HOSTILE))
async def test_unary_methods_reject_undecodable_bytes(
    server: RunningServer, method: str, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    raw = HOSTILE[kind]
    if method == "ListModels" and kind == "invalid_utf8":
        raw = b"\x0a\x02ab\x10"  # ListModelsRequest has no fields: only framing can be wrong (a tag cut short)
    async with grpc.aio.insecure_channel(server.target) as channel:
        call = channel.unary_unary(SERVICE + method, request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(raw, timeout=10)
    _check(info.value, method, len(raw))
    _no_tracebacks(caplog)


@pytest.mark.parametrize("method", STREAMING)
@pytest.mark.parametrize("kind", sorted(HOSTILE))
async def test_streaming_methods_reject_undecodable_bytes(
    server: RunningServer, method: str, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    raw = HOSTILE[kind]
    async with grpc.aio.insecure_channel(server.target) as channel:
        call = channel.unary_stream(SERVICE + method, request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in call(raw, timeout=10):
                pytest.fail("no message expected before the error")
    _check(info.value, method, len(raw))
    _no_tracebacks(caplog)


async def test_health_check_rejects_undecodable_bytes(server: RunningServer, caplog: pytest.LogCaptureFixture) -> None:
    raw = b"\x0a\x02\xc3\x28"  # `service` with invalid UTF-8
    async with grpc.aio.insecure_channel(server.target) as channel:
        call = channel.unary_unary("/grpc.health.v1.Health/Check", request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(raw, timeout=10)
        # The server still answers a well-formed call afterwards.
        ok = await call(health_pb2.HealthCheckRequest().SerializeToString(), timeout=10)
    _check(info.value, "Check", len(raw))
    assert health_pb2.HealthCheckResponse.FromString(ok).status == health_pb2.HealthCheckResponse.SERVING
    _no_tracebacks(caplog)


async def test_undecodable_request_is_access_logged(server: RunningServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="imagegen_server.access")
    async with grpc.aio.insecure_channel(server.target) as channel:
        call = channel.unary_unary(SERVICE + "Generate", request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.aio.AioRpcError):
            await call(HOSTILE["invalid_utf8"], timeout=10)
    lines = await access_lines(
        lambda: caplog.records, lambda found: any(line.startswith("Generate INVALID_ARGUMENT ") for line in found)
    )
    assert any(line.startswith("Generate INVALID_ARGUMENT ") for line in lines), lines


async def test_valid_raw_bytes_still_work(server: RunningServer) -> None:
    async with grpc.aio.insecure_channel(server.target) as channel:
        call = channel.unary_unary(SERVICE + "ListModels", request_serializer=None, response_deserializer=None)
        raw = await call(pb.ListModelsRequest().SerializeToString(), timeout=10)
    assert pb.ListModelsResponse.FromString(raw).models


async def test_reflection_stream_rejects_undecodable_bytes(
    server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    raw = b"\x1a\x03\xff\xfe\xfd"  # file_containing_symbol (a string) with invalid UTF-8
    async with grpc.aio.insecure_channel(server.target) as channel:
        call = channel.stream_stream(
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            request_serializer=None,
            response_deserializer=None,
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in call(iter([raw]), timeout=10):
                pytest.fail("no message expected before the error")
    d = details_of(info.value)
    assert d.code is grpc.StatusCode.INVALID_ARGUMENT, (d.code, d.message)
    assert d.reason == "UNDECODABLE_REQUEST"
    assert d.metadata["method"] == "ServerReflectionInfo"
    _no_tracebacks(caplog)
