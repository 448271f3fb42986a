"""The servicer and pipeline with a fake upstream: edge cases hard to reach over HTTP, and what the pipeline reports."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

import grpc
import pytest
from PIL import Image as PILImage

from imagegen.v1 import image_generation_service_pb2 as pb
from imagegen.v1 import image_generation_service_pb2_grpc as pb_grpc
from imagegen_server.config import ServerConfig
from imagegen_server.gemini.errors import ErrorKind, UpstreamError
from imagegen_server.gemini.types import InlineImage, Part, UpstreamRequest, UpstreamResult, Usage
from imagegen_server.lifecycle import GenerationObserver
from imagegen_server.pipeline import Pipeline
from imagegen_server.retry import RetryDecision
from imagegen_server.service import ImageGenerationServicer, add_to_server
from tests.integration.status_helpers import details_of


async def eventually(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait until ``predicate()`` holds (cleanup runs on the loop, later); fail after ``timeout`` s."""
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - polls state the server updates
            await asyncio.sleep(0.005)


def _png() -> bytes:
    buf = io.BytesIO()
    PILImage.new("RGB", (4, 4)).save(buf, "PNG")
    return buf.getvalue()


class FakeUpstream:
    """Answers after ``delay`` seconds (or once ``gate`` is set), or raises ``error``; records requests."""

    def __init__(self, delay: float = 0.0, error: Exception | None = None) -> None:
        self.delay = delay
        #: When set, calls wait for this event instead of ``delay``: the test decides when upstream answers.
        self.gate: asyncio.Event | None = None
        self.error = error
        #: Raised one per call, before ``error`` applies.
        self.failures: list[Exception] = []
        self.requests: list[UpstreamRequest] = []
        self.cancelled = 0

    async def generate(
        self,
        request: UpstreamRequest,
        *,
        timeout: float | None = None,
        on_draft: Callable[[InlineImage], None] | None = None,
    ) -> UpstreamResult:
        self.requests.append(request)
        try:
            if self.gate is not None:
                await self.gate.wait()
            else:
                await asyncio.sleep(self.delay)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if self.failures:
            raise self.failures.pop(0)
        if self.error is not None:
            raise self.error
        image = InlineImage(_png(), "image/png")
        return UpstreamResult(
            image=image,
            width=4,
            height=4,
            thought_signature=b"sig",
            text="",
            finish_reason="STOP",
            usage=Usage(),
            model_version="fake",
            response_id="r",
            parts=(Part(image=image, thought_signature=b"sig"),),
        )


@pytest.fixture
def upstream() -> FakeUpstream:
    return FakeUpstream()


class Recorder(GenerationObserver):
    """Writes down every lifecycle happening the pipeline reports."""

    def __init__(self) -> None:
        self.seen: list[tuple[object, ...]] = []

    def attempt_started(self, model: str, attempt: int, max_attempts: int) -> None:
        self.seen.append(("attempt_started", model, attempt, max_attempts))

    def attempt_failed(self, model: str, attempt: int, error: UpstreamError, decision: RetryDecision) -> None:
        self.seen.append(("attempt_failed", model, attempt, error.kind.name, decision.will_retry))

    def attempt_succeeded(self, model: str, attempt: int) -> None:
        self.seen.append(("attempt_succeeded", model, attempt))

    def retry_waiting(self, model: str, attempt: int, delay: float) -> None:
        self.seen.append(("retry_waiting", model, attempt))

    def generation_done(self, model: str, attempts: int, elapsed: float) -> None:
        self.seen.append(("generation_done", model, attempts))

    def generation_failed(
        self, model: str, attempts: int, error: UpstreamError, stop_reason: str, elapsed: float
    ) -> None:
        self.seen.append(("generation_failed", model, attempts, error.kind.name, stop_reason))


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def stub(upstream: FakeUpstream, recorder: Recorder) -> AsyncIterator[pb_grpc.ImageGenerationServiceStub]:
    config = replace(ServerConfig(), heartbeat_interval=0.05, initial_backoff=0.01)
    server = grpc.aio.server()
    add_to_server(ImageGenerationServicer(Pipeline(config, upstream, observer=recorder), config), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield pb_grpc.ImageGenerationServiceStub(channel)
    finally:
        await server.stop(None)


async def test_unexpected_exception_is_internal_without_python_text(
    stub: pb_grpc.ImageGenerationServiceStub, upstream: FakeUpstream
) -> None:
    upstream.error = ZeroDivisionError("secret internals")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Generate(pb.GenerateRequest(prompt="x", options=pb.GenerationOptions(request_id="req-9")))
    d = details_of(info.value)
    assert (d.code, d.reason) == (grpc.StatusCode.INTERNAL, "INTERNAL")
    assert "secret" not in d.message and "ZeroDivision" not in d.message
    assert d.metadata["requestId"] == "req-9"


async def test_heartbeats_while_upstream_is_slow(
    stub: pb_grpc.ImageGenerationServiceStub, upstream: FakeUpstream
) -> None:
    # Upstream answers only after three heartbeats reached the caller: they flow while it is slow.
    upstream.gate = asyncio.Event()
    events: list[str | None] = []
    async with asyncio.timeout(30):
        async for e in stub.GenerateStream(pb.GenerateStreamRequest(prompt="x")):
            events.append(e.WhichOneof("event"))
            if events.count("heartbeat") == 3:
                upstream.gate.set()
    assert events[:2] == ["accepted", "attempt_started"]
    assert events.count("heartbeat") >= 3
    assert events[-1] == "completed"


async def test_stream_cancel_cancels_upstream_and_leaks_no_task(
    stub: pb_grpc.ImageGenerationServiceStub, upstream: FakeUpstream
) -> None:
    upstream.delay = 10
    baseline = len(asyncio.all_tasks())
    call = stub.GenerateStream(pb.GenerateStreamRequest(prompt="x"))
    assert (await call.read()).WhichOneof("event") == "accepted"
    assert (await call.read()).WhichOneof("event") == "attempt_started"
    call.cancel()
    await eventually(lambda: upstream.cancelled == 1)
    await eventually(lambda: len(asyncio.all_tasks()) <= baseline)
    assert upstream.cancelled == 1


async def test_seed_and_model_turn_round_trip(stub: pb_grpc.ImageGenerationServiceStub, upstream: FakeUpstream) -> None:
    r = await stub.Generate(pb.GenerateRequest(prompt="x", options=pb.GenerationOptions(seed=0)))
    assert upstream.requests[0].seed == 0 and r.generation.seed == 0
    assert r.generation.model_turn.parts[0].thought_signature == b"sig"


async def test_duplicate_stream_gets_heartbeats_then_the_shared_result(
    stub: pb_grpc.ImageGenerationServiceStub, upstream: FakeUpstream
) -> None:
    # Upstream answers only after the duplicate got two heartbeats.
    upstream.gate = asyncio.Event()
    options = pb.GenerationOptions(request_id="same")
    owner = stub.Generate(pb.GenerateRequest(prompt="x", options=options))
    await eventually(lambda: len(upstream.requests) == 1)  # the owner's call is upstream
    events: list[pb.GenerateStreamResponse] = []
    async with asyncio.timeout(30):
        async for e in stub.GenerateStream(pb.GenerateStreamRequest(prompt="x", options=options)):
            events.append(e)
            if sum(seen.WhichOneof("event") == "heartbeat" for seen in events) == 2:
                upstream.gate.set()
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[-1] == "completed" and set(kinds[:-1]) == {"heartbeat"} and len(kinds) >= 3
    assert events[-1].completed.generation_id == (await owner).generation.generation_id
    assert len(upstream.requests) == 1


async def test_pipeline_reports_each_happening_to_its_observer(
    stub: pb_grpc.ImageGenerationServiceStub, upstream: FakeUpstream, recorder: Recorder
) -> None:
    upstream.failures = [UpstreamError(ErrorKind.UNAVAILABLE, "overloaded")]
    stream = [e async for e in stub.GenerateStream(pb.GenerateStreamRequest(prompt="x"))]
    model = stream[0].accepted.model
    assert recorder.seen == [
        ("attempt_started", model, 1, 3),
        ("attempt_failed", model, 1, "UNAVAILABLE", True),
        ("retry_waiting", model, 1),
        ("attempt_started", model, 2, 3),
        ("attempt_succeeded", model, 2),
        ("generation_done", model, 2),
    ]
    # The caller's stream tells the same story.
    assert [e.WhichOneof("event") for e in stream if e.WhichOneof("event") != "heartbeat"] == [
        "accepted",
        "attempt_started",
        "attempt_failed",
        "attempt_started",
        "completed",
    ]

    recorder.seen.clear()
    upstream.error = UpstreamError(ErrorKind.CONTENT_BLOCKED, "blocked")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Generate(pb.GenerateRequest(prompt="x"))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert recorder.seen == [
        ("attempt_started", model, 1, 3),
        ("attempt_failed", model, 1, "CONTENT_BLOCKED", False),
        ("generation_failed", model, 1, "CONTENT_BLOCKED", "not_retryable"),
    ]
