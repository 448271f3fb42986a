"""Client and AsyncClient against a fake grpc.aio server: calls, streams, metadata, deadlines."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest

import imagegen
from imagegen.testing import Delayed, FakeError, FakeServer, FakeStream, make_generation, make_png, stream_events
from imagegen.v1 import image_generation_service_pb2 as pb
from imagegen.v1 import image_generation_service_pb2_grpc as pb_grpc

S = grpc.StatusCode


def test_generate_sends_every_option(server: FakeServer, client: imagegen.Client, tmp_path: Path) -> None:
    reference = tmp_path / "ref.png"
    reference.write_bytes(make_png(2, 2))
    result = client.generate(
        "a red fox",
        input_images=[reference, make_png(1, 1), imagegen.Image.from_bytes(make_png(3, 3))],
        model="gemini-3-pro-image",
        width=1024,
        height=1024,
        aspect_ratio="1:1",
        image_size="2K",
        seed=0,
        request_id="req-1",
    )
    call = server.servicer.calls[-1]
    assert call.method == "Generate"
    request = call.request
    assert isinstance(request, pb.GenerateRequest)
    assert request.prompt == "a red fox"
    assert len(request.input_images) == 3
    assert all(img.mime_type == "image/png" for img in request.input_images)
    assert request.options.model == "gemini-3-pro-image"
    assert request.options.HasField("seed") and request.options.seed == 0
    assert request.options.request_id == "req-1"
    assert result.seed == 0 and result.request_id == "req-1"
    saved = result.save(tmp_path / "out.png")
    assert saved.read_bytes() == result.image.data


def test_refine_sends_history(server: FakeServer, client: imagegen.Client) -> None:
    first = client.generate("a fox", seed=1)
    user = imagegen.Turn("user", (imagegen.Part(text="a fox"),))
    second = client.refine("make it night", history=[user, first.model_turn], input_images=[make_png()])
    request = server.servicer.calls[-1].request
    assert isinstance(request, pb.RefineRequest)
    assert request.prompt == "make it night"
    assert [t.role for t in request.history] == [1, 2]
    assert request.history[1] == first.raw.model_turn
    assert len(request.input_images) == 1
    assert second.generation_id != first.generation_id


def test_list_models(client: imagegen.Client) -> None:
    models = client.list_models()
    assert [m.name for m in models] == ["gemini-3.1-flash-image"]
    assert models[0].is_default and models[0].requires_thought_signatures
    assert models[0].image_sizes == ("1K", "2K")


def test_metadata_and_bearer_token(server: FakeServer) -> None:
    with imagegen.Client(server.target, metadata={"X-Team": "art"}, bearer_token="s3cret") as client:
        client.generate("x", metadata=[("x-trace", "t1")])
    metadata = server.servicer.calls[-1].metadata
    assert metadata["x-team"] == "art"
    assert metadata["authorization"] == "Bearer s3cret"
    assert metadata["x-trace"] == "t1"
    assert str(metadata["user-agent"]).startswith("imagegen-python/")


def test_default_and_per_call_timeout(server: FakeServer) -> None:
    with imagegen.Client(server.target, timeout=30) as client:
        client.generate("x")
        default_remaining = server.servicer.calls[-1].time_remaining
        client.generate("x", timeout=5)
        call_remaining = server.servicer.calls[-1].time_remaining
    assert default_remaining is not None and 20 < default_remaining <= 30.5
    assert call_remaining is not None and 0 < call_remaining <= 5.5  # grpc-timeout rounds up
    with imagegen.Client(server.target, timeout=None) as client:
        client.generate("x")
    assert server.servicer.calls[-1].time_remaining is None


def test_deadline_exceeded(server: FakeServer, client: imagegen.Client) -> None:
    server.servicer.push(Delayed(30.0, make_generation()))
    started = time.monotonic()
    with pytest.raises(imagegen.DeadlineExceededError) as info:
        client.generate("slow", timeout=0.2)
    assert time.monotonic() - started < 10, "the 0.2 s deadline ends the call, not the 30 s answer"
    assert info.value.code is S.DEADLINE_EXCEEDED


def test_stream_events_in_order(server: FakeServer, client: imagegen.Client) -> None:
    server.servicer.push(
        FakeStream(stream_events(failures=[(S.RESOURCE_EXHAUSTED, "UPSTREAM_RATE_LIMITED", 4.0)], previews=2))
    )
    with client.generate_stream("a fox", seed=3) as stream:
        events = list(stream)
    kinds = [e.kind for e in events]
    assert kinds == [
        "accepted",
        "attempt_started",
        "attempt_failed",
        "heartbeat",
        "attempt_started",
        "preview",
        "preview",
        "completed",
    ]
    failed = events[2]
    assert isinstance(failed, imagegen.AttemptFailed)
    assert failed.code is S.RESOURCE_EXHAUSTED and failed.retry_delay == 4.0
    assert stream.result is not None and stream.result.attempts == 2
    assert isinstance(server.servicer.calls[-1].request, pb.GenerateStreamRequest)


def test_stream_error_after_events_raises_typed(server: FakeServer, client: imagegen.Client) -> None:
    events = stream_events()[:2]
    server.servicer.push(FakeStream(events, error=FakeError.rate_limited(retry_after=1.0)))
    seen: list[imagegen.StreamEvent] = []
    with pytest.raises(imagegen.RateLimitError) as info:
        for event in client.generate_stream("x"):
            seen.append(event)
    assert [e.kind for e in seen] == ["accepted", "attempt_started"]
    assert info.value.retry_after == 1.0


def test_stream_final_result(client: imagegen.Client) -> None:
    result = client.generate_stream("x", seed=9).final_result()
    assert result.seed == 9


def test_stream_result_callbacks_run_in_order_on_completed(client: imagegen.Client) -> None:
    seen: list[str] = []
    stream = client.generate_stream("x", seed=5)
    stream.add_result_callback(lambda result: seen.append(f"first {result.seed}"))
    stream.add_result_callback(lambda result: seen.append(f"second {result.seed}"))
    kinds = []
    for event in stream:
        kinds.append(event.kind)
        if event.kind != "completed":
            assert seen == []
    assert kinds[-1] == "completed"
    assert seen == ["first 5", "second 5"]


def test_refine_stream(server: FakeServer, client: imagegen.Client) -> None:
    first = client.generate("a fox")
    user = imagegen.Turn("user", (imagegen.Part(text="a fox"),))
    result = client.refine_stream("night", history=[user, first.model_turn]).final_result()
    assert isinstance(server.servicer.calls[-1].request, pb.RefineStreamRequest)
    assert result.image.mime_type == "image/png"


def test_stream_close_cancels_the_call(server: FakeServer, client: imagegen.Client) -> None:
    server.servicer.push(FakeStream(stream_events(), interval=30))
    stream = client.generate_stream("x")
    first = next(stream)
    assert first.kind == "accepted"
    started = time.monotonic()
    stream.close()
    assert time.monotonic() - started < 10, "close cancels at once, it does not wait for the next event (30 s)"
    with pytest.raises(StopIteration):
        next(stream)


def test_raw_stub_on_channel(server: FakeServer, client: imagegen.Client) -> None:
    stub = pb_grpc.ImageGenerationServiceStub(client.channel)
    response = stub.ListModels(pb.ListModelsRequest(), timeout=5)
    assert response.models[0].name == "gemini-3.1-flash-image"


def test_closed_client_raises(server: FakeServer) -> None:
    client = imagegen.Client(server.target)
    client.close()
    with pytest.raises(ValueError):
        client.generate("x")


# ---------------------------------------------------------------------------------------------- async


async def test_async_generate_and_refine(server: FakeServer) -> None:
    async with imagegen.AsyncClient(server.target, timeout=10, bearer_token="tok") as client:
        first = await client.generate("a fox", seed=4, width=512, height=512)
        assert first.seed == 4
        user = imagegen.Turn("user", (imagegen.Part(text="a fox"),))
        second = await client.refine("night", history=[user, first.model_turn])
        assert second.model == "gemini-3.1-flash-image"
        models = await client.list_models()
        assert models[0].is_default
    assert server.servicer.calls[0].metadata["authorization"] == "Bearer tok"
    assert isinstance(server.servicer.calls[1].request, pb.RefineRequest)


async def test_async_stream(server: FakeServer) -> None:
    server.servicer.push(FakeStream(stream_events(failures=[(S.UNAVAILABLE, "UPSTREAM_UNAVAILABLE", 0.5)])))
    async with imagegen.AsyncClient(server.target, timeout=10) as client:
        stream = client.generate_stream("x")
        kinds = [event.kind async for event in stream]
        assert kinds[0] == "accepted" and kinds[-1] == "completed"
        assert stream.result is not None
        user = imagegen.Turn("user", (imagegen.Part(text="x"),))
        async with client.refine_stream("y", history=[user, stream.result.model_turn]) as refine:
            result = await refine.final_result()
        assert result.image.data


async def test_async_stream_error_and_early_close(server: FakeServer) -> None:
    server.servicer.push(
        FakeStream(stream_events()[:1], error=FakeError(S.INVALID_ARGUMENT, "blocked", "CONTENT_BLOCKED")),
        FakeStream(stream_events(), interval=0.5),
    )
    async with imagegen.AsyncClient(server.target, timeout=10) as client:
        with pytest.raises(imagegen.ContentPolicyError):
            async for _ in client.generate_stream("x"):
                pass
        async with client.generate_stream("x") as stream:
            async for event in stream:
                assert event.kind == "accepted"
                break


async def test_async_deadline(server: FakeServer) -> None:
    server.servicer.push(Delayed(2.0, make_generation()))
    async with imagegen.AsyncClient(server.target, timeout=0.2) as client:
        with pytest.raises(imagegen.DeadlineExceededError):
            await client.generate("slow")


async def test_async_client_close_is_idempotent(server: FakeServer) -> None:
    client = imagegen.AsyncClient(server.target)
    await client.close()  # never used: no channel yet
    await client.generate("x")
    await client.close()
    await client.close()
    assert repr(client) == f"AsyncClient(target='{server.target}')"
