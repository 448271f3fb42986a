"""Per-caller quotas, the bound on request bytes in flight and per-method size limits, on the real server."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
from pathlib import Path

import grpc
import pytest
from PIL import Image

import imagegen
from imagegen.v1 import image_generation_service_pb2 as pb
from imagegen.v1 import image_generation_service_pb2_grpc as pb_grpc
from imagegen_server.emulator import Emulator
from tests.conftest import ServerFactory
from tests.integration.status_helpers import details_of

SERVICE = "imagegen.v1.ImageGenerationService"


def sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def quota_file(tmp_path: Path, **quota: int) -> Path:
    lines = [f"{k} = {v}" for k, v in quota.items()]
    path = tmp_path / "tokens.toml"
    path.write_text('[[callers]]\nname = "limited"\n' + f'token_sha256 = "{sha("lim")}"\n' + "\n".join(lines) + "\n")
    return path


AUTH = (("authorization", "Bearer lim"),)


async def arrived(scenario: object, count: int) -> None:
    """Wait (up to 10 s) until ``count`` requests of the emulator scenario reached it."""
    for _ in range(1000):
        if scenario.stats.received >= count:  # type: ignore[attr-defined]
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{count} request(s) never reached the emulator")


async def test_requests_per_minute_quota_refuses_with_retry_info(make_server: ServerFactory, tmp_path: Path) -> None:
    tokens = quota_file(tmp_path, requests_per_minute=60, burst=2)
    async with make_server(auth_tokens_file=str(tokens)) as server:
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = pb_grpc.ImageGenerationServiceStub(channel)
            await stub.ListModels(pb.ListModelsRequest(), metadata=AUTH)
            await stub.ListModels(pb.ListModelsRequest(), metadata=AUTH)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.ListModels(pb.ListModelsRequest(), metadata=AUTH)
        d = details_of(refused.value)
        assert d.code is grpc.StatusCode.RESOURCE_EXHAUSTED and d.reason == "CALLER_QUOTA_EXCEEDED"
        assert d.metadata["quota"] == "requests_per_minute" and d.metadata["caller"] == "limited"
        assert d.retry_delay is not None and 0 < d.retry_delay <= 1.0
        assert d.quota_subjects == ["caller:limited"]
        async with imagegen.AsyncClient(server.target, bearer_token="lim") as client:
            with pytest.raises(imagegen.RateLimitError) as sdk_refused:
                await client.list_models()
            assert sdk_refused.value.reason == "CALLER_QUOTA_EXCEEDED" and sdk_refused.value.retry_after


async def test_max_concurrent_quota(make_server: ServerFactory, emulator: Emulator, tmp_path: Path) -> None:
    tokens = quota_file(tmp_path, max_concurrent=1)
    slow = emulator.scenario("latency:1+ok")
    async with (
        make_server(auth_tokens_file=str(tokens)) as server,
        imagegen.AsyncClient(server.target, bearer_token="lim") as client,
    ):
        first = asyncio.create_task(client.generate(f"a fox {slow.marker}"))
        await arrived(slow, 1)
        with pytest.raises(imagegen.RateLimitError) as refused:
            await client.generate("a second fox")
        assert refused.value.metadata["quota"] == "max_concurrent" and refused.value.retry_after
        assert (await first).image.data
        # The first call's end gave its slot back.
        assert (await client.generate("a third fox")).image.data


def noise_png(size: int) -> bytes:
    """A valid PNG of about ``size`` bytes (random pixels do not compress)."""
    side = int((size / 3) ** 0.5)
    image = Image.frombytes("RGB", (side, side), os.urandom(side * side * 3))
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=0)
    return out.getvalue()


async def test_request_bytes_in_flight_are_bounded(
    make_server: ServerFactory, emulator: Emulator, tmp_path: Path
) -> None:
    png = noise_png(1_200_000)
    slow = emulator.scenario("latency:1+ok")
    async with (
        make_server(max_request_bytes_in_flight=3_000_000) as server,
        imagegen.AsyncClient(server.target) as client,
    ):
        held = [asyncio.create_task(client.generate(f"keep {i} {slow.marker}", input_images=[png])) for i in range(2)]
        await arrived(slow, 2)
        # Two 1.2 MB requests are in flight: a third does not fit under 3 MB.
        with pytest.raises(imagegen.RateLimitError) as refused:
            await client.generate("one more", input_images=[png])
        assert refused.value.reason == "MEMORY_OVERLOADED" and refused.value.retry_after
        # Small requests still fit.
        assert (await client.generate("no image")).image.data
        for task in held:
            assert (await task).image.data
        # The finished calls gave their bytes back.
        assert (await client.generate("now it fits", input_images=[png])).image.data


async def test_a_request_larger_than_its_method_accepts_is_refused_before_decoding(
    make_server: ServerFactory,
) -> None:
    async with make_server() as server, grpc.aio.insecure_channel(server.target) as channel:
        # 100 KB of bytes that are not even a valid ListModelsRequest: never decoded.
        raw = channel.unary_unary(
            f"/{SERVICE}/ListModels", request_serializer=None, response_deserializer=pb.ListModelsResponse.FromString
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await raw(b"\xff" * 100_000)
        d = details_of(refused.value)
        assert d.code is grpc.StatusCode.RESOURCE_EXHAUSTED and d.reason == "REQUEST_TOO_LARGE"
        assert d.metadata["limitBytes"] == str(64 * 1024)
        # A normal ListModels still works.
        assert (await pb_grpc.ImageGenerationServiceStub(channel).ListModels(pb.ListModelsRequest())).models
