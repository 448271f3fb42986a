"""The SDK against the real server and emulator: results, conversations, and
every exception class the server can produce, rebuilt from real statuses."""

from __future__ import annotations

import asyncio
import io

import pytest
from PIL import Image as PILImage

import imagegen
from imagegen_server.app import RunningServer
from imagegen_server.emulator import Emulator
from tests.conftest import ServerFactory


@pytest.fixture
async def client(server: RunningServer) -> imagegen.AsyncClient:
    async with imagegen.AsyncClient(server.target, timeout=10) as c:
        yield c  # type: ignore[misc]


async def test_generate_through_the_sdk(client: imagegen.AsyncClient) -> None:
    result = await client.generate("a red fox", width=1024, height=1024, seed=7)
    assert PILImage.open(io.BytesIO(result.image.data)).size == (1024, 1024)
    assert (result.seed, result.image.width, result.image.height) == (7, 1024, 1024)
    assert result.model_turn.images[0].data == result.image.data  # the SDK completes the model turn
    again = await client.generate("a red fox", width=1024, height=1024, seed=7)
    other = await client.generate("a red fox", width=1024, height=1024, seed=8)
    assert again.image.data == result.image.data != other.image.data


async def test_sync_client_and_conversation(server: RunningServer) -> None:
    # The sync client blocks, so it runs in a thread while the server serves on this loop.
    await asyncio.to_thread(_sync_conversation, server.target)


def _sync_conversation(target: str) -> None:
    with imagegen.Client(target, timeout=10) as client:
        chat = client.conversation("a cat", model="gemini-3-pro-image", seed=1)
        chat.refine("make it blue")
        last = chat.refine("add a hat")
        assert last.model == "gemini-3-pro-image"
        assert len(chat.history) == 6
        restored = imagegen.Conversation.from_json(chat.to_json(), client)
        assert restored.refine("now at night").image.data


@pytest.mark.parametrize(
    ("steps", "exc", "reason"),
    [
        (("prompt_blocked",), imagegen.ContentPolicyError, "CONTENT_BLOCKED"),
        (("output_blocked:IMAGE_SAFETY",), imagegen.ContentBlockedError, "CONTENT_BLOCKED"),
        (("invalid_argument",), imagegen.InvalidRequestError, "UPSTREAM_INVALID_ARGUMENT"),
        (("no_image",), imagegen.NoImageError, "NO_IMAGE"),
        (("failed_precondition",), imagegen.FailedPreconditionError, "UPSTREAM_FAILED_PRECONDITION"),
        (("rate_limit:0.01",), imagegen.RateLimitError, "UPSTREAM_RATE_LIMITED"),
        (("quota_daily",), imagegen.QuotaExhaustedError, "UPSTREAM_QUOTA_EXHAUSTED"),
        (("overloaded",), imagegen.UnavailableError, "UPSTREAM_UNAVAILABLE"),
        (("timeout",), imagegen.DeadlineExceededError, "UPSTREAM_TIMEOUT"),
        (("not_found",), imagegen.NotFoundError, "MODEL_NOT_FOUND"),
        (("bad_key",), imagegen.UpstreamAuthError, "UPSTREAM_AUTH"),
        (("bad_json",), imagegen.InternalError, "UPSTREAM_MALFORMED"),
    ],
)
async def test_exception_classes_from_real_statuses(
    client: imagegen.AsyncClient, emulator: Emulator, steps: tuple[str, ...], exc: type[Exception], reason: str
) -> None:
    scenario = emulator.scenario(*steps)
    with pytest.raises(exc) as info:
        await client.generate(f"a fox {scenario.marker}", request_id=f"req-{steps[0]}")
    err = info.value
    assert isinstance(err, imagegen.GenerationError)
    assert err.reason == reason and err.domain == "imagegen.dev"
    assert err.generation_id and err.request_id == f"req-{steps[0]}"


async def test_invalid_request_names_fields(client: imagegen.AsyncClient) -> None:
    with pytest.raises(imagegen.InvalidRequestError) as info:
        await client.generate("", aspect_ratio="7:3")
    assert {v.field for v in info.value.field_violations} >= {"prompt", "options.aspect_ratio"}


async def test_rate_limit_retry_after_and_block_side(client: imagegen.AsyncClient, emulator: Emulator) -> None:
    # A 3 s RetryInfo cannot fit in a 2 s deadline: the server gives up at once, on any machine.
    with pytest.raises(imagegen.RateLimitError) as limited:
        await client.generate(f"x {emulator.scenario('rate_limit:3').marker}", timeout=2)
    assert limited.value.retry_after == pytest.approx(3.0)
    with pytest.raises(imagegen.ContentPolicyError) as blocked:
        await client.generate(f"x {emulator.scenario('output_blocked:IMAGE_SAFETY').marker}")
    assert (blocked.value.block_side, blocked.value.block_reason) == ("output", "IMAGE_SAFETY")


async def test_overloaded_and_shutting_down(make_server: ServerFactory, emulator: Emulator) -> None:
    # The first call holds the only slot for 2 s, far longer than the refusals below take.
    slow = emulator.scenario("latency:2+ok")
    async with (
        make_server(max_concurrency=1, queue_timeout=0.05) as server,
        imagegen.AsyncClient(server.target, timeout=10) as client,
    ):
        first = asyncio.ensure_future(client.generate(f"x {slow.marker}"))
        await slow.wait_for(lambda s: s.received == 1)  # the first call holds the slot
        with pytest.raises(imagegen.RateLimitError) as overloaded:
            await client.generate("y")
        assert overloaded.value.reason == "OVERLOADED" and overloaded.value.retry_after
        server.pipeline.draining = True
        with pytest.raises(imagegen.UnavailableError) as draining:
            await client.generate("z")
        assert draining.value.reason == "SHUTTING_DOWN"
        assert (await first).image.data


async def test_stream_events_through_the_sdk(client: imagegen.AsyncClient, emulator: Emulator) -> None:
    scenario = emulator.scenario("rate_limit:0.05", "ok")
    events = [e async for e in client.generate_stream(f"a fox {scenario.marker}")]
    failed = [e for e in events if isinstance(e, imagegen.AttemptFailed)]
    assert len(failed) == 1 and failed[0].will_retry and failed[0].retry_delay == pytest.approx(0.05)
    assert isinstance(events[0], imagegen.Accepted) and isinstance(events[-1], imagegen.Completed)
    assert events[-1].result.attempts == 2
