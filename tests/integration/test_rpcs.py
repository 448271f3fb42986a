"""The four generation RPCs, ListModels, health and reflection through the real server."""

from __future__ import annotations

import asyncio
import io
import logging

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from PIL import Image as PILImage

from imagegen.v1 import image_generation_service_pb2 as pb
from imagegen.v1 import image_generation_service_pb2_grpc as pb_grpc
from imagegen.v1 import image_pb2
from imagegen_server.app import RunningServer
from imagegen_server.emulator import Emulator
from tests.conftest import ServerFactory
from tests.integration.status_helpers import details_of, history_turn

Stub = pb_grpc.ImageGenerationServiceStub


def decode(image: image_pb2.Image) -> PILImage.Image:
    return PILImage.open(io.BytesIO(image.data))


async def test_generate_returns_a_real_png_at_the_models_pixel_size(stub: Stub) -> None:
    response = await stub.Generate(
        pb.GenerateRequest(
            prompt="a red fox", options=pb.GenerationOptions(width=1920, height=1080, seed=7, request_id="r1")
        )
    )
    g = response.generation
    img = decode(g.image)
    assert img.format == "PNG" and g.image.mime_type == "image/png"
    assert img.size == (2752, 1536) == (g.image.width, g.image.height)  # 16:9 at 2K
    assert (g.seed, g.model, g.aspect_ratio, g.image_size) == (7, "gemini-3.1-flash-image", "16:9", "2K")
    assert g.attempts == 1 and g.generation_id and g.request_id == "r1"
    assert g.thought_signature and g.finish_reason == image_pb2.FINISH_REASON_STOP
    assert g.usage.total_tokens > 0 and g.inference_time.ToNanoseconds() > 0
    image_parts = [p for p in g.model_turn.parts if p.WhichOneof("data") == "image"]
    assert [p.thought_signature for p in image_parts] == [g.thought_signature]
    # The final image's bytes travel once: the model turn's part has its type and size only.
    assert (image_parts[0].image.data, image_parts[0].image.mime_type) == (b"", "image/png")
    assert (image_parts[0].image.width, image_parts[0].image.height) == (2752, 1536)


async def test_seed_zero_is_a_real_seed_and_seeds_are_deterministic(stub: Stub) -> None:
    async def gen(seed: int) -> image_pb2.Generation:
        opts = pb.GenerationOptions(seed=seed, image_size="512")
        return (await stub.Generate(pb.GenerateRequest(prompt="a fox", options=opts))).generation

    zero_a, zero_b, one = await asyncio.gather(gen(0), gen(0), gen(1))
    assert zero_a.seed == 0
    assert zero_a.image.data == zero_b.image.data
    assert zero_a.image.data != one.image.data


async def test_absent_seed_is_picked_and_reported(stub: Stub) -> None:
    g = (await stub.Generate(pb.GenerateRequest(prompt="a fox"))).generation
    assert 0 <= g.seed < 2**31


async def test_stream_reports_each_retry_then_completes(stub: Stub, emulator: Emulator) -> None:
    scenario = emulator.scenario("rate_limit:0.05", "overloaded", "ok")
    events = [
        e async for e in stub.GenerateStream(pb.GenerateStreamRequest(prompt=f"a fox {scenario.marker}"), timeout=10)
    ]
    kinds = [e.WhichOneof("event") for e in events if e.WhichOneof("event") != "heartbeat"]
    assert kinds == [
        "accepted",
        "attempt_started",
        "attempt_failed",
        "attempt_started",
        "attempt_failed",
        "attempt_started",
        "completed",
    ]
    accepted = events[0].accepted
    assert accepted.max_attempts == 3 and accepted.generation_id
    failed = [e.attempt_failed for e in events if e.WhichOneof("event") == "attempt_failed"]
    assert (failed[0].attempt, failed[0].code, failed[0].reason) == (1, 8, "UPSTREAM_RATE_LIMITED")
    assert failed[0].will_retry and failed[0].retry_delay.ToNanoseconds() == 50_000_000
    assert (failed[1].attempt, failed[1].code, failed[1].reason) == (2, 14, "UPSTREAM_UNAVAILABLE")
    completed = events[-1].completed
    assert completed.attempts == 3 and completed.generation_id == accepted.generation_id
    assert scenario.stats.received == 3


async def test_stream_forwards_draft_previews_but_returns_the_final_image(stub: Stub, emulator: Emulator) -> None:
    scenario = emulator.scenario("thoughts:2")
    events = [e async for e in stub.GenerateStream(pb.GenerateStreamRequest(prompt=f"a fox {scenario.marker}"))]
    previews = [e.preview for e in events if e.WhichOneof("event") == "preview"]
    assert [p.index for p in previews] == [1, 2]
    assert all(decode(p.image).size == (p.image.width, p.image.height) for p in previews)
    final = events[-1].completed
    assert all(p.image.data != final.image.data for p in previews)
    assert all(not p.thought for p in final.model_turn.parts)


async def test_unary_never_returns_a_draft(stub: Stub, emulator: Emulator) -> None:
    scenario = emulator.scenario("thoughts:2")
    g = (await stub.Generate(pb.GenerateRequest(prompt=f"a fox {scenario.marker}"))).generation
    assert g.thought_signature and all(not p.thought for p in g.model_turn.parts)


async def test_stream_failure_ends_with_the_unary_status(stub: Stub, emulator: Emulator) -> None:
    scenario = emulator.scenario("prompt_blocked")
    call = stub.GenerateStream(pb.GenerateStreamRequest(prompt=f"x {scenario.marker}"))
    seen = []
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for event in call:
            seen.append(event.WhichOneof("event"))
    assert seen[:2] == ["accepted", "attempt_started"]
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details_of(info.value).reason == "CONTENT_BLOCKED"


async def test_refine_three_turns_keeps_signatures(stub: Stub, emulator: Emulator) -> None:
    """Fails if a signature is lost: the emulator enforces them like Gemini 3 does."""
    options = pb.GenerationOptions(model="gemini-3.1-flash-image", image_size="512", seed=3)
    first = (await stub.Generate(pb.GenerateRequest(prompt="a cat", options=options))).generation
    history = [image_pb2.Turn(role=image_pb2.ROLE_USER, parts=[image_pb2.Part(text="a cat")]), history_turn(first)]
    images = [first.image.data]
    for prompt in ("make it blue", "add a hat"):
        g = (await stub.Refine(pb.RefineRequest(prompt=prompt, history=history, options=options))).generation
        images.append(g.image.data)
        history += [image_pb2.Turn(role=image_pb2.ROLE_USER, parts=[image_pb2.Part(text=prompt)]), history_turn(g)]
    assert len(set(images)) == 3
    assert len(history) == 6


async def test_refine_stream(stub: Stub) -> None:
    first = (await stub.Generate(pb.GenerateRequest(prompt="a cat"))).generation
    history = [image_pb2.Turn(role=image_pb2.ROLE_USER, parts=[image_pb2.Part(text="a cat")]), history_turn(first)]
    events = [e async for e in stub.RefineStream(pb.RefineStreamRequest(prompt="make it blue", history=history))]
    assert events[0].WhichOneof("event") == "accepted"
    assert events[-1].WhichOneof("event") == "completed"


async def test_idempotent_duplicates_share_one_upstream_call(stub: Stub, emulator: Emulator) -> None:
    scenario = emulator.scenario("latency:0.3+ok")
    request = pb.GenerateRequest(prompt=f"a fox {scenario.marker}", options=pb.GenerationOptions(request_id="dup-1"))
    a, b = await asyncio.gather(stub.Generate(request), stub.Generate(request))
    c = await stub.Generate(request)  # a retry after completion, within the TTL
    assert a.generation.generation_id == b.generation.generation_id == c.generation.generation_id
    assert scenario.stats.received == 1
    other = pb.GenerateRequest(prompt="a different prompt", options=pb.GenerationOptions(request_id="dup-1"))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Generate(other)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_list_models(stub: Stub) -> None:
    models = {m.name: m for m in (await stub.ListModels(pb.ListModelsRequest())).models}
    assert models["gemini-3.1-flash-image"].is_default
    assert "16:9" in models["gemini-3.1-flash-image"].aspect_ratios
    assert models["gemini-3-pro-image"].requires_thought_signatures


async def test_health_and_reflection(server: RunningServer) -> None:
    async with grpc.aio.insecure_channel(server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "imagegen.v1.ImageGenerationService"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name async for r in responses for s in r.list_services_response.service}
        assert "imagegen.v1.ImageGenerationService" in names
        await server.shutdown(grace=0.1)
        # After shutdown begins the server stops answering (health went NOT_SERVING first).


async def test_large_input_image_above_grpc_default_limit(stub: Stub) -> None:
    buf = io.BytesIO()
    PILImage.effect_noise((1400, 1400), 100).convert("RGB").save(buf, "PNG")
    data = buf.getvalue()
    assert len(data) > 4 * 1024 * 1024
    g = (
        await stub.Generate(
            pb.GenerateRequest(prompt="like this", input_images=[image_pb2.Image(data=data, mime_type="image/png")])
        )
    ).generation
    assert g.image.data


async def test_metrics_and_access_log(
    make_server: ServerFactory, emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    flaky = emulator.scenario("overloaded", "ok")
    async with make_server(metrics_port=0) as server, grpc.aio.insecure_channel(server.target) as channel:
        stub = Stub(channel)
        await stub.Generate(
            pb.GenerateRequest(prompt=f"x {flaky.marker}", options=pb.GenerationOptions(request_id="m1"))
        )
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Generate(pb.GenerateRequest(prompt=""))
        url = f"http://127.0.0.1:{server.metrics_port}/metrics"
        async with aiohttp.ClientSession() as http, http.get(url) as resp:
            text = await resp.text()
    method = "imagegen.v1.ImageGenerationService/Generate"
    assert f'imagegen_rpcs_total{{caller="anonymous",code="OK",method="{method}"}} 1.0' in text
    assert f'imagegen_rpcs_total{{caller="anonymous",code="INVALID_ARGUMENT",method="{method}"}} 1.0' in text
    model = 'model="gemini-3.1-flash-image"'
    assert f'imagegen_upstream_attempts_total{{{model},outcome="UNAVAILABLE"}} 1.0' in text
    assert f'imagegen_upstream_attempts_total{{{model},outcome="ok"}} 1.0' in text
    lines = [r.getMessage() for r in caplog.records if r.name == "imagegen_server.access"]
    assert any(line.startswith("Generate OK") and "requestId=m1" in line for line in lines)
    assert any(line.startswith("Generate INVALID_ARGUMENT") for line in lines)
    assert all(emulator.api_key not in r.getMessage() for r in caplog.records)


async def test_model_turn_without_its_image_bytes_is_rejected_with_a_hint(stub: Stub) -> None:
    first = (await stub.Generate(pb.GenerateRequest(prompt="a cat"))).generation
    history = [image_pb2.Turn(role=image_pb2.ROLE_USER, parts=[image_pb2.Part(text="a cat")]), first.model_turn]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Refine(pb.RefineRequest(prompt="make it blue", history=history))
    fields = details_of(info.value).fields
    (field,) = [f for f in fields if f.startswith("history[1]")]
    assert field.endswith(".image.data")
    assert f"history_images[{first.generation_id!r}]" in fields[field], fields[field]
