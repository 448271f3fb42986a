"""Overload handling through the real server and emulator: retry budget, circuit breaker, fallback models.

Every test scripts the real emulator per request (a scenario marker in the
prompt) and calls the real grpc.aio server with a raw stub. Upstream attempts
are counted where they arrive: the emulator's ``scenario.stats.received``.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import imagegen
from imagegen.v1 import image_generation_service_pb2 as pb
from imagegen.v1 import image_generation_service_pb2_grpc as pb_grpc
from imagegen.v1 import image_pb2
from imagegen_server.emulator import Emulator, Scenario
from tests.conftest import ServerFactory
from tests.integration.status_helpers import Details, details_of

Stub = pb_grpc.ImageGenerationServiceStub

#: Transient faults of every kind the retry loop retries (503, 504, 500, per-minute 429, a cut body).
TRANSIENT = ("overloaded", "timeout", "internal", "rate_limit:0.01", "cut_body")


async def fail(stub: Stub, prompt: str, **options: object) -> Details:
    """Call Generate, expecting an error; its decoded details."""
    request = pb.GenerateRequest(prompt=prompt, options=pb.GenerationOptions(**options))  # type: ignore[arg-type]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Generate(request, timeout=10)
    return details_of(info.value)


async def stream_events(stub: Stub, prompt: str, **options: object) -> list[pb.GenerateStreamResponse]:
    """Every event of a GenerateStream that ends well."""
    request = pb.GenerateStreamRequest(prompt=prompt, options=pb.GenerationOptions(**options))  # type: ignore[arg-type]
    return [event async for event in stub.GenerateStream(request, timeout=10)]


# --- Sequence: history never starves a lone caller's retries ------------------------------------


async def test_sequence_requests_with_transient_faults_keep_their_retries(
    make_server: ServerFactory, emulator: Emulator
) -> None:
    """Ten requests that each met two transient faults, then one more: all get their attempts.

    (The old A6 token bucket, 10 tokens and 0.1 back per success, refused the
    third request's second retry.)
    """
    async with make_server() as server, grpc.aio.insecure_channel(server.target) as channel:
        stub = Stub(channel)
        for i in range(11):
            scenario = emulator.scenario(TRANSIENT[i % len(TRANSIENT)], TRANSIENT[(i + 1) % len(TRANSIENT)], "ok")
            response = await stub.Generate(pb.GenerateRequest(prompt=f"cat {scenario.marker}"), timeout=10)
            assert response.generation.attempts == 3 == scenario.stats.received, f"request {i}"


async def test_sequence_after_ten_failed_requests_the_next_transient_fault_is_retried(
    make_server: ServerFactory, emulator: Emulator
) -> None:
    """A fresh server sees ten requests fail on every attempt, then a request with one transient fault.

    Ten overloaded requests in a row are an outage to the circuit breaker
    (which opens after five by default, see the Outage tests); its threshold is
    raised here so that only the retry budget's memory is on trial.
    """
    async with make_server(breaker_failure_threshold=20) as server, grpc.aio.insecure_channel(server.target) as channel:
        stub = Stub(channel)
        for i in range(10):
            scenario = emulator.scenario(TRANSIENT[i % len(TRANSIENT)])
            details = await fail(stub, f"cat {scenario.marker}")
            assert details.metadata["attempts"] == "3" and details.metadata["stopReason"] == "attempts_exhausted"
            assert scenario.stats.received == 3
        scenario = emulator.scenario("overloaded", "ok")
        events = await stream_events(stub, f"cat {scenario.marker}")
    failed = [e.attempt_failed for e in events if e.HasField("attempt_failed")]
    assert len(failed) == 1 and failed[0].will_retry and failed[0].reason == "UPSTREAM_UNAVAILABLE"
    assert events[-1].completed.attempts == 2 == scenario.stats.received


async def test_sequence_with_default_settings_ten_failed_requests_cost_the_next_one_nothing(
    make_server: ServerFactory, emulator: Emulator
) -> None:
    """Defaults throughout: ten requests that failed after retries the model itself provoked
    (an answer without an image, twice) are no outage; the next transient fault is retried."""
    async with make_server() as server, grpc.aio.insecure_channel(server.target) as channel:
        stub = Stub(channel)
        for _ in range(10):
            scenario = emulator.scenario("text_only")
            details = await fail(stub, f"cat {scenario.marker}")
            assert (details.reason, details.metadata["stopReason"]) == ("NO_IMAGE", "attempts_exhausted")
            assert scenario.stats.received == 2
        scenario = emulator.scenario("overloaded", "timeout", "ok")
        response = await stub.Generate(pb.GenerateRequest(prompt=f"cat {scenario.marker}"), timeout=10)
    assert response.generation.attempts == 3 == scenario.stats.received


# --- Outage: every answer a 503 -------------------------------------------------------------------

#: Circuits that reopen within a test's time: 0.2 s open, at most 0.4 s.
SHORT_BREAKER = {"breaker_open_seconds": 0.2, "breaker_max_open_seconds": 0.4}


async def outage_load(stub: Stub, marker: str, *, callers: int, each: int) -> list[Details]:
    """``callers`` concurrent callers, each making ``each`` requests in a row; every error's details."""

    async def caller() -> list[Details]:
        return [await fail(stub, f"cat {marker}") for _ in range(each)]

    batches = await asyncio.gather(*(caller() for _ in range(callers)))
    return [d for batch in batches for d in batch]


async def test_outage_opens_the_circuit_bounds_upstream_load_and_recovers(
    make_server: ServerFactory, emulator: Emulator
) -> None:
    outage = emulator.scenario("overloaded")
    model = "gemini-3.1-flash-image"
    async with (
        make_server(**SHORT_BREAKER) as server,
        grpc.aio.insecure_channel(server.target) as channel,
    ):
        stub = Stub(channel)
        started = time.monotonic()
        results = await outage_load(stub, outage.marker, callers=8, each=25)
        elapsed = time.monotonic() - started
        requests, attempts = len(results), outage.stats.received
        outcomes = Counter(f"{d.code.name}/{d.reason}" for d in results)
        print(
            f"\noutage: {requests} requests in {elapsed:.2f}s, outcomes {dict(outcomes)}, "
            f"{attempts} upstream attempts ({attempts / requests:.2f} per request)"
        )

        # Bounded upstream load: at most 1.25 x requests plus a small constant (the threshold's
        # requests with all their attempts, the retries of requests in flight when it opened,
        # and at most one probe attempt per open period).
        probes = 1 + elapsed / SHORT_BREAKER["breaker_open_seconds"]
        assert attempts <= 1.25 * requests + 5 * 3 + 8 * 2 + probes
        assert attempts < requests  # most requests never reached upstream
        assert set(outcomes) <= {"UNAVAILABLE/UPSTREAM_UNAVAILABLE", "UNAVAILABLE/CIRCUIT_OPEN"}
        fast = [d for d in results if d.reason == "CIRCUIT_OPEN"]
        # Most never reached upstream; a few were refused before a retry, after attempts of their own.
        assert sum(d.metadata["attempts"] == "0" for d in fast) >= requests // 2
        for d in fast:
            assert d.metadata["stopReason"] == "circuit_open"
            assert d.metadata["model"] == model
            assert d.retry_delay is not None and 0 < d.retry_delay <= SHORT_BREAKER["breaker_max_open_seconds"]

        # While open: a stream says so in an AttemptFailed, without starting an attempt; health stays SERVING.
        request = pb.GenerateStreamRequest(prompt=f"cat {outage.marker}")
        for _ in range(5):
            before = outage.stats.received
            events: list[pb.GenerateStreamResponse] = []
            with pytest.raises(grpc.aio.AioRpcError) as info:
                async for event in stub.GenerateStream(request, timeout=10):
                    events.append(event)
            if events[1].HasField("attempt_failed"):
                break
            # The open time had just ended: this stream was the probe, and its 503 reopened the circuit.
            assert events[1].HasField("attempt_started")
        assert details_of(info.value).reason == "CIRCUIT_OPEN"
        assert [e.WhichOneof("event") for e in events] == ["accepted", "attempt_failed"]
        assert events[1].attempt_failed.reason == "CIRCUIT_OPEN" and not events[1].attempt_failed.will_retry
        assert outage.stats.received == before
        health = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="imagegen.v1.ImageGenerationService")
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        state = server.metrics.registry.get_sample_value("imagegen_circuit_state", {"model": model})
        assert state == 2.0
        stops = server.metrics.registry.get_sample_value(
            "imagegen_retry_stops_total", {"model": model, "reason": "circuit_open"}
        )
        assert stops >= sum(d.metadata["stopReason"] == "circuit_open" for d in results) + 1  # + the stream(s)

        # Upstream recovers: after the RetryInfo delay one probe closes the circuit, and requests succeed.
        healthy = emulator.scenario("ok")
        await asyncio.sleep(details_of(info.value).retry_delay or 0.0)
        for _ in range(5):
            response = await stub.Generate(pb.GenerateRequest(prompt=f"cat {healthy.marker}"), timeout=10)
            assert response.generation.attempts == 1
        assert healthy.stats.received == 5
        assert server.metrics.registry.get_sample_value("imagegen_circuit_state", {"model": model}) == 0.0


# --- Fallback: an overloaded model's requests served by another ----------------------------------

PRO = "gemini-3-pro-image"
FLASH = "gemini-3.1-flash-image"
FALLBACK = {"fallback_models": (f"{PRO}={FLASH}",)}


def models_called(scenario: Scenario) -> list[str]:
    """The model of each attempt that reached the emulator, in order."""
    return [path.rsplit("/", 1)[-1].split(":")[0] for path in scenario.stats.paths]


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("overloaded", image_pb2.FALLBACK_REASON_UNAVAILABLE),
        ("rate_limit:0.01", image_pb2.FALLBACK_REASON_RATE_LIMITED),
    ],
)
async def test_fallback_serves_an_overloaded_model_and_the_events_say_so(
    make_server: ServerFactory, emulator: Emulator, fault: str, reason: image_pb2.FallbackReason.ValueType
) -> None:
    async with make_server(**FALLBACK) as server, grpc.aio.insecure_channel(server.target) as channel:
        stub = Stub(channel)
        streamed = emulator.scenario(fault, fault, fault, "ok")
        events = await stream_events(stub, f"cat {streamed.marker}", model=PRO)
        unary = emulator.scenario(fault, fault, fault, "ok")
        response = await stub.Generate(
            pb.GenerateRequest(prompt=f"cat {unary.marker}", options=pb.GenerationOptions(model=PRO)), timeout=10
        )
    # Three attempts on the requested model, then the fallback answered.
    assert models_called(streamed) == models_called(unary) == [PRO, PRO, PRO, FLASH]
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds == ["accepted"] + ["attempt_started", "attempt_failed"] * 3 + [
        "model_fallback",
        "attempt_started",
        "completed",
    ]
    accepted = events[0].accepted
    assert (accepted.model, accepted.requested_model, list(accepted.fallback_models)) == (PRO, PRO, [FLASH])
    last_failure = events[6].attempt_failed
    assert not last_failure.will_retry and last_failure.stop_reason == pb.RETRY_STOP_REASON_ATTEMPTS_EXHAUSTED
    moved = events[7].model_fallback
    assert (moved.from_model, moved.to_model, moved.reason) == (PRO, FLASH, reason)
    for generation in (events[-1].completed, response.generation):
        assert (generation.model, generation.requested_model, generation.fallback_reason) == (FLASH, PRO, reason)
        assert generation.attempts == 1  # the attempts of the model that answered
    assert (
        server.metrics.registry.get_sample_value(
            "imagegen_model_fallbacks_total",
            {"from_model": PRO, "to_model": FLASH, "reason": image_pb2.FallbackReason.Name(reason)[16:].lower()},
        )
        == 2
    )


@pytest.mark.parametrize(
    ("steps", "code", "reason", "attempts"),
    [
        # Blocked content, a bad argument or a per-day quota: another model would not help.
        (("prompt_blocked", "ok"), grpc.StatusCode.INVALID_ARGUMENT, "CONTENT_BLOCKED", 1),
        (("output_blocked", "ok"), grpc.StatusCode.INVALID_ARGUMENT, "CONTENT_BLOCKED", 1),
        (("invalid_argument", "ok"), grpc.StatusCode.INVALID_ARGUMENT, "UPSTREAM_INVALID_ARGUMENT", 1),
        (("quota_daily", "ok"), grpc.StatusCode.RESOURCE_EXHAUSTED, "UPSTREAM_QUOTA_EXHAUSTED", 1),
        # Timeouts are not overload: the caller's time is mostly spent.
        (("timeout", "timeout", "timeout", "ok"), grpc.StatusCode.DEADLINE_EXCEEDED, "UPSTREAM_TIMEOUT", 3),
    ],
)
async def test_fallback_never_for_content_argument_or_per_day_quota(
    make_server: ServerFactory,
    emulator: Emulator,
    steps: tuple[str, ...],
    code: grpc.StatusCode,
    reason: str,
    attempts: int,
) -> None:
    scenario = emulator.scenario(*steps)
    async with make_server(**FALLBACK) as server, grpc.aio.insecure_channel(server.target) as channel:
        details = await fail(Stub(channel), f"cat {scenario.marker}", model=PRO)
    assert (details.code, details.reason) == (code, reason)
    assert models_called(scenario) == [PRO] * attempts
    assert details.metadata["stopReason"] == ("attempts_exhausted" if attempts > 1 else "not_retryable")


async def test_fallback_forbidden_by_the_caller(make_server: ServerFactory, emulator: Emulator) -> None:
    async with make_server(**FALLBACK) as server, grpc.aio.insecure_channel(server.target) as channel:
        stub = Stub(channel)
        unary = emulator.scenario("overloaded", "overloaded", "overloaded", "ok")
        details = await fail(stub, f"cat {unary.marker}", model=PRO, disable_model_fallback=True)
        streamed = emulator.scenario("overloaded", "overloaded", "overloaded", "ok")
        request = pb.GenerateStreamRequest(
            prompt=f"cat {streamed.marker}", options=pb.GenerationOptions(model=PRO, disable_model_fallback=True)
        )
        events: list[pb.GenerateStreamResponse] = []
        with pytest.raises(grpc.aio.AioRpcError):
            async for event in stub.GenerateStream(request, timeout=10):
                events.append(event)
    assert (details.code, details.reason) == (grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE")
    assert models_called(unary) == models_called(streamed) == [PRO] * 3
    assert list(events[0].accepted.fallback_models) == []  # the caller is told none will be tried
    assert not any(e.HasField("model_fallback") for e in events)


async def test_fallback_never_after_a_preview_reached_the_caller(
    make_server: ServerFactory, emulator: Emulator
) -> None:
    # Each attempt streams a draft image, then the connection is cut.
    scenario = emulator.scenario("thoughts:1+cut_body", "thoughts:1+cut_body", "thoughts:1+cut_body", "ok")
    async with make_server(**FALLBACK) as server, grpc.aio.insecure_channel(server.target) as channel:
        request = pb.GenerateStreamRequest(prompt=f"cat {scenario.marker}", options=pb.GenerationOptions(model=PRO))
        events: list[pb.GenerateStreamResponse] = []
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for event in Stub(channel).GenerateStream(request, timeout=10):
                events.append(event)
    assert any(e.HasField("preview") for e in events)
    assert not any(e.HasField("model_fallback") for e in events)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert models_called(scenario) == [PRO] * 3


async def test_fallback_starts_on_the_fallback_while_the_circuit_is_open(
    make_server: ServerFactory, emulator: Emulator
) -> None:
    async with (
        make_server(**FALLBACK, breaker_failure_threshold=1) as server,
        grpc.aio.insecure_channel(server.target) as channel,
    ):
        stub = Stub(channel)
        first = emulator.scenario("overloaded", "overloaded", "overloaded", "ok")
        response = await stub.Generate(
            pb.GenerateRequest(prompt=f"cat {first.marker}", options=pb.GenerationOptions(model=PRO)), timeout=10
        )
        assert response.generation.fallback_reason == image_pb2.FALLBACK_REASON_UNAVAILABLE
        # One failed request opened the Pro circuit: the next request goes straight to Flash.
        second = emulator.scenario("ok")
        events = await stream_events(stub, f"cat {second.marker}", model=PRO)
    accepted = events[0].accepted
    assert (accepted.model, accepted.requested_model, accepted.fallback_reason) == (
        FLASH,
        PRO,
        image_pb2.FALLBACK_REASON_CIRCUIT_OPEN,
    )
    assert list(accepted.fallback_models) == []
    completed = events[-1].completed
    assert (completed.model, completed.fallback_reason) == (FLASH, image_pb2.FALLBACK_REASON_CIRCUIT_OPEN)
    assert models_called(second) == [FLASH]


async def test_the_sdk_shows_fallbacks_and_raises_a_typed_error_for_an_open_circuit(
    make_server: ServerFactory, emulator: Emulator
) -> None:
    async with (
        make_server(**FALLBACK, breaker_failure_threshold=1) as server,
        imagegen.AsyncClient(server.target, timeout=10) as client,
    ):
        overloaded = emulator.scenario("overloaded", "overloaded", "overloaded", "ok")
        events = [event async for event in client.generate_stream(f"cat {overloaded.marker}", model=PRO)]
        fallbacks = [e for e in events if isinstance(e, imagegen.ModelFallback)]
        assert [(e.from_model, e.to_model, e.reason) for e in fallbacks] == [(PRO, FLASH, "unavailable")]
        stops = [e.stop_reason for e in events if isinstance(e, imagegen.AttemptFailed)]
        assert stops == ["", "", "attempts_exhausted"]
        assert isinstance(events[0], imagegen.Accepted) and events[0].fallback_models == (FLASH,)
        completed = events[-1]
        assert isinstance(completed, imagegen.Completed)
        assert (completed.result.model, completed.result.requested_model, completed.result.fallback_reason) == (
            FLASH,
            PRO,
            "unavailable",
        )

        # That failed request opened Pro's circuit: Pro or nothing is a typed, retryable error...
        healthy = emulator.scenario("ok")
        with pytest.raises(imagegen.UnavailableError) as info:
            await client.generate(f"cat {healthy.marker}", model=PRO, disable_model_fallback=True)
        assert info.value.reason == "CIRCUIT_OPEN" and info.value.metadata["model"] == PRO
        assert info.value.retry_after is not None and info.value.retry_after > 0
        assert healthy.stats.received == 0
        # ... and by default Flash answers at once.
        result = await client.generate(f"cat {healthy.marker}", model=PRO)
        assert (result.model, result.fallback_reason, result.attempts) == (FLASH, "circuit_open", 1)
