"""Client-side retries: off by default, safe cases only, RetryInfo honoured, streams only before the first event."""

from __future__ import annotations

import time

import grpc
import pytest

import imagegen
from imagegen.testing import FakeError, FakeServer, FakeStream, stream_events

S = grpc.StatusCode
FAST = imagegen.ClientRetry(max_attempts=3, initial_backoff=0.01, max_backoff=0.02)


def _calls(server: FakeServer) -> int:
    return len(server.servicer.calls)


def test_off_by_default(server: FakeServer) -> None:
    server.servicer.push(FakeError.unavailable("SHUTTING_DOWN"))
    with imagegen.Client(server.target) as client:
        assert client.retry is None
        with pytest.raises(imagegen.UnavailableError):
            client.generate("x")
    assert _calls(server) == 1


@pytest.mark.parametrize(
    "fake",
    [
        FakeError.unavailable("SHUTTING_DOWN"),
        FakeError.unavailable(""),  # no details at all: never reached the service
        FakeError(S.RESOURCE_EXHAUSTED, "busy", "OVERLOADED", retry_after=0.01),
    ],
    ids=["shutting-down", "no-details", "overloaded"],
)
def test_retries_rejections_before_work_without_request_id(server: FakeServer, fake: FakeError) -> None:
    server.servicer.push(fake, fake)
    with imagegen.Client(server.target, retry=FAST) as client:
        result = client.generate("x")
    assert result.image.data
    assert _calls(server) == 3


@pytest.mark.parametrize(
    "fake",
    [
        FakeError.unavailable("UPSTREAM_UNAVAILABLE"),
        FakeError.rate_limited(retry_after=0.01),
        FakeError(S.DEADLINE_EXCEEDED, "upstream timeout", "UPSTREAM_TIMEOUT"),
    ],
    ids=["upstream-unavailable", "rate-limited", "upstream-timeout"],
)
def test_work_started_errors_need_a_request_id(server: FakeServer, fake: FakeError) -> None:
    with imagegen.Client(server.target, retry=FAST) as client:
        server.servicer.push(fake)
        with pytest.raises(imagegen.ImagegenError):
            client.generate("x")
        assert _calls(server) == 1

        server.servicer.push(fake)
        result = client.generate("x", request_id="idem-1")
        assert result.request_id == "idem-1"
    assert _calls(server) == 3
    assert all(c.request.options.request_id == "idem-1" for c in server.servicer.calls[1:])  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "fake",
    [
        FakeError(S.INVALID_ARGUMENT, "bad", "INVALID_REQUEST"),
        FakeError(S.RESOURCE_EXHAUSTED, "daily", "UPSTREAM_QUOTA_EXHAUSTED"),
        FakeError(S.INTERNAL, "boom", "INTERNAL"),
        FakeError(S.DEADLINE_EXCEEDED, "yours", "DEADLINE_EXCEEDED"),
        FakeError(S.INVALID_ARGUMENT, "blocked", "CONTENT_BLOCKED"),
    ],
    ids=["invalid", "quota", "internal", "deadline", "blocked"],
)
def test_never_retries_permanent_errors(server: FakeServer, fake: FakeError) -> None:
    server.servicer.push(fake)
    with imagegen.Client(server.target, retry=FAST) as client, pytest.raises(imagegen.ImagegenError):
        client.generate("x", request_id="idem")
    assert _calls(server) == 1


def test_gives_up_after_max_attempts(server: FakeServer) -> None:
    server.servicer.push(*[FakeError.unavailable("SHUTTING_DOWN")] * 5)
    with imagegen.Client(server.target, retry=FAST) as client, pytest.raises(imagegen.UnavailableError):
        client.generate("x")
    assert _calls(server) == 3


def test_honours_retry_info(server: FakeServer) -> None:
    server.servicer.push(FakeError(S.RESOURCE_EXHAUSTED, "busy", "OVERLOADED", retry_after=0.3))
    policy = imagegen.ClientRetry(max_attempts=2, initial_backoff=0.0, max_backoff=0.0)
    started = time.monotonic()
    with imagegen.Client(server.target, retry=policy) as client:
        client.generate("x")
    assert time.monotonic() - started >= 0.3


def test_retry_info_beyond_limit_or_deadline_is_not_waited(server: FakeServer) -> None:
    policy = imagegen.ClientRetry(max_attempts=3, max_retry_after=60.0)
    server.servicer.push(FakeError(S.RESOURCE_EXHAUSTED, "busy", "OVERLOADED", retry_after=120.0))
    with imagegen.Client(server.target, retry=policy) as client:
        started = time.monotonic()
        with pytest.raises(imagegen.RateLimitError):
            client.generate("x")
        assert _calls(server) == 1
        # Within the limit but past the 20 s deadline: raised at once, where waiting would take ~20 s.
        server.servicer.push(FakeError(S.RESOURCE_EXHAUSTED, "busy", "OVERLOADED", retry_after=30.0))
        with pytest.raises(imagegen.RateLimitError):
            client.generate("x", timeout=20)
        assert time.monotonic() - started < 10, "neither wait was slept"
    assert _calls(server) == 2


def test_stream_retried_only_before_first_event(server: FakeServer) -> None:
    with imagegen.Client(server.target, retry=FAST) as client:
        server.servicer.push(FakeError.unavailable("SHUTTING_DOWN"))
        kinds = [e.kind for e in client.generate_stream("x")]
        assert kinds[-1] == "completed"
        assert _calls(server) == 2

        server.servicer.push(FakeStream(stream_events()[:1], error=FakeError.unavailable("SHUTTING_DOWN")))
        with pytest.raises(imagegen.UnavailableError):
            list(client.generate_stream("x", request_id="idem"))
    assert _calls(server) == 3


async def test_async_retries(server: FakeServer) -> None:
    server.servicer.push(FakeError.unavailable("SHUTTING_DOWN"), FakeError.rate_limited(retry_after=0.01))
    async with imagegen.AsyncClient(server.target, retry=FAST) as client:
        assert client.retry is FAST
        with pytest.raises(imagegen.RateLimitError):
            await client.generate("x")
        assert _calls(server) == 2
        server.servicer.push(FakeError.unavailable(""))
        kinds = [e.kind async for e in client.generate_stream("x")]
        assert kinds[-1] == "completed"
    assert _calls(server) == 4


def test_policy_rules_and_validation() -> None:
    policy = imagegen.ClientRetry(max_attempts=4, initial_backoff=1.0, max_backoff=3.0, jitter=0.0)
    assert [policy.backoff(n) for n in (1, 2, 3, 4)] == [1.0, 2.0, 3.0, 3.0]
    unavailable = imagegen.UnavailableError("x", code=S.UNAVAILABLE, reason="UPSTREAM_UNAVAILABLE")
    assert not policy.is_retryable(unavailable, idempotent=False)
    assert policy.is_retryable(unavailable, idempotent=True)
    assert policy.next_delay(unavailable, attempt=4, idempotent=True, remaining=None) is None
    assert policy.next_delay(unavailable, attempt=1, idempotent=True, remaining=None) == 1.0
    assert policy.next_delay(unavailable, attempt=1, idempotent=True, remaining=0.5) is None
    with pytest.raises(ValueError):
        imagegen.ClientRetry(max_attempts=0)
    with pytest.raises(ValueError):
        imagegen.ClientRetry(jitter=2.0)
    with pytest.raises(ValueError):
        imagegen.ClientRetry(backoff_multiplier=0.5)
