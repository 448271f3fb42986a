"""One test per row of the README's error table, through the real server and emulator.

Each scripts the emulator (a scenario marker in the prompt), calls the real
grpc.aio server with a raw stub, and checks the status code, the one ErrorInfo
reason, RetryInfo where it applies, and how many attempts reached upstream.
"""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from imagegen.v1 import image_generation_service_pb2 as pb
from imagegen.v1 import image_generation_service_pb2_grpc as pb_grpc
from imagegen.v1 import image_pb2
from imagegen_server.emulator import Emulator
from tests.conftest import ServerFactory
from tests.integration.status_helpers import Details, details_of, history_turn

Stub = pb_grpc.ImageGenerationServiceStub


async def fail(stub: Stub, prompt: str, timeout: float = 10.0, **options: object) -> Details:
    request = pb.GenerateRequest(prompt=prompt, options=pb.GenerationOptions(**options))  # type: ignore[arg-type]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Generate(request, timeout=timeout)
    d = details_of(info.value)
    assert d.error_infos == 1, "exactly one ErrorInfo per error"
    assert d.domain == "imagegen.dev"
    return d


@pytest.mark.parametrize(
    ("steps", "code", "reason", "attempts"),
    [
        (("invalid_argument",), grpc.StatusCode.INVALID_ARGUMENT, "UPSTREAM_INVALID_ARGUMENT", 1),
        (("unknown_field",), grpc.StatusCode.INVALID_ARGUMENT, "UPSTREAM_INVALID_ARGUMENT", 1),
        (("failed_precondition",), grpc.StatusCode.FAILED_PRECONDITION, "UPSTREAM_FAILED_PRECONDITION", 1),
        (("prompt_blocked",), grpc.StatusCode.INVALID_ARGUMENT, "CONTENT_BLOCKED", 1),
        (("output_blocked:IMAGE_SAFETY",), grpc.StatusCode.INVALID_ARGUMENT, "CONTENT_BLOCKED", 1),
        (("output_blocked:IMAGE_PROHIBITED_CONTENT",), grpc.StatusCode.INVALID_ARGUMENT, "CONTENT_BLOCKED", 1),
        (("no_image",), grpc.StatusCode.FAILED_PRECONDITION, "NO_IMAGE", 2),
        (("text_only",), grpc.StatusCode.FAILED_PRECONDITION, "NO_IMAGE", 2),
        (("rate_limit:0.01",), grpc.StatusCode.RESOURCE_EXHAUSTED, "UPSTREAM_RATE_LIMITED", 3),
        (("quota_daily",), grpc.StatusCode.RESOURCE_EXHAUSTED, "UPSTREAM_QUOTA_EXHAUSTED", 1),
        (("internal",), grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE", 3),
        (("bad_gateway",), grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE", 3),
        (("overloaded",), grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE", 3),
        (("cut_body",), grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE", 3),
        (("timeout",), grpc.StatusCode.DEADLINE_EXCEEDED, "UPSTREAM_TIMEOUT", 3),
        (("not_found",), grpc.StatusCode.NOT_FOUND, "MODEL_NOT_FOUND", 1),
        (("bad_key",), grpc.StatusCode.INTERNAL, "UPSTREAM_AUTH", 1),
        (("no_key",), grpc.StatusCode.INTERNAL, "UPSTREAM_AUTH", 1),
        (("bad_json",), grpc.StatusCode.INTERNAL, "UPSTREAM_MALFORMED", 2),
        (("bad_base64",), grpc.StatusCode.INTERNAL, "UPSTREAM_MALFORMED", 2),
        (("not_image",), grpc.StatusCode.INTERNAL, "UPSTREAM_MALFORMED", 2),
    ],
)
async def test_upstream_failure_maps_to_status(
    stub: Stub,
    emulator: Emulator,
    steps: tuple[str, ...],
    code: grpc.StatusCode,
    reason: str,
    attempts: int,
) -> None:
    scenario = emulator.scenario(*steps)
    d = await fail(stub, f"a red fox {scenario.marker}")
    assert (d.code, d.reason) == (code, reason), d
    assert scenario.stats.received == attempts
    assert d.metadata["attempts"] == str(attempts)
    assert d.metadata["generationId"]
    assert emulator.api_key not in d.message and emulator.api_key not in str(d.metadata)


async def test_validation_names_the_field(stub: Stub, emulator: Emulator) -> None:
    d = await fail(stub, "", aspect_ratio="7:3")
    assert (d.code, d.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
    assert {"prompt", "options.aspect_ratio"} <= set(d.fields)
    assert emulator.requests_received == 0  # nothing went upstream


async def test_content_blocked_says_which_side(stub: Stub, emulator: Emulator) -> None:
    prompt = await fail(stub, f"x {emulator.scenario('prompt_blocked:PROHIBITED_CONTENT').marker}")
    assert prompt.metadata["blockSide"] == "prompt"
    assert prompt.metadata["blockReason"] == "PROHIBITED_CONTENT"
    output = await fail(stub, f"x {emulator.scenario('output_blocked:IMAGE_SAFETY').marker}")
    assert output.metadata["blockSide"] == "output"
    assert output.metadata["blockReason"] == "IMAGE_SAFETY"


async def test_no_image_keeps_the_models_text(stub: Stub, emulator: Emulator) -> None:
    d = await fail(stub, f"x {emulator.scenario('text_only').marker}")
    assert d.metadata["modelText"]


async def test_rate_limit_carries_retry_info_and_quota(stub: Stub, emulator: Emulator) -> None:
    d = await fail(stub, f"x {emulator.scenario('rate_limit:0.25').marker}")
    assert d.retry_delay == pytest.approx(0.25)
    assert d.quota_subjects and "PerMinute" in d.quota_subjects[0]


async def test_daily_quota_is_not_retried_and_has_no_retry_info(stub: Stub, emulator: Emulator) -> None:
    d = await fail(stub, f"x {emulator.scenario('quota_daily').marker}")
    assert d.retry_delay is None
    assert "PerDay" in d.quota_subjects[0]


async def test_unknown_field_violations_are_forwarded(stub: Stub, emulator: Emulator) -> None:
    d = await fail(stub, f"x {emulator.scenario('unknown_field').marker}")
    assert d.fields


async def test_deadline_shorter_than_retry_delay_fails_fast(make_server: ServerFactory, emulator: Emulator) -> None:
    # A 30 s RetryInfo (honoured up to 60 s) against a 20 s deadline: answering takes milliseconds,
    # sleeping toward the deadline would take ~20 s; the 5 s bound tells them apart on any machine.
    scenario = emulator.scenario("rate_limit:30")
    async with make_server(max_upstream_delay=60.0) as server, grpc.aio.insecure_channel(server.target) as channel:
        started = time.monotonic()
        d = await fail(Stub(channel), f"x {scenario.marker}", timeout=20.0)
        assert time.monotonic() - started < 5.0, "must not sleep toward a wait that passes the deadline"
    assert (d.code, d.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "UPSTREAM_RATE_LIMITED")
    assert d.retry_delay == pytest.approx(30.0)
    assert scenario.stats.received == 1
    assert d.metadata["stopReason"] == "deadline"


async def test_callers_deadline_during_upstream_call(stub: Stub, emulator: Emulator) -> None:
    scenario = emulator.scenario("latency:5+ok")
    d = await fail(stub, f"x {scenario.marker}", timeout=0.5)
    assert d.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert d.reason == "DEADLINE_EXCEEDED"


async def test_wrong_api_key_configured_is_upstream_auth(make_server: ServerFactory, emulator: Emulator) -> None:
    async with (
        make_server(api_key="definitely-wrong-key") as server,
        grpc.aio.insecure_channel(server.target) as channel,
    ):
        d = await fail(Stub(channel), "a fox")
    assert (d.code, d.reason) == (grpc.StatusCode.INTERNAL, "UPSTREAM_AUTH")
    assert "definitely-wrong-key" not in d.message + str(d.metadata)


async def test_concurrency_limit_answers_overloaded_with_retry_info(
    make_server: ServerFactory, emulator: Emulator
) -> None:
    # The first call holds the only slot for 2 s, twenty times the 0.1 s queue timeout.
    slow = emulator.scenario("latency:2+ok")
    async with (
        make_server(max_concurrency=1, queue_timeout=0.1) as server,
        grpc.aio.insecure_channel(server.target) as channel,
    ):
        stub = Stub(channel)
        first = asyncio.ensure_future(stub.Generate(pb.GenerateRequest(prompt=f"x {slow.marker}"), timeout=10))
        await slow.wait_for(lambda s: s.received == 1)  # the first call holds the slot
        d = await fail(stub, "y")
        assert (d.code, d.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "OVERLOADED")
        assert d.retry_delay is not None and d.retry_delay > 0
        assert (await first).generation.image.data


async def test_cancel_aborts_the_upstream_request(stub: Stub, emulator: Emulator) -> None:
    # Upstream would answer after 30 s; the abort must reach it long before (milliseconds, in fact).
    scenario = emulator.scenario("latency:30+ok")
    call = stub.Generate(pb.GenerateRequest(prompt=f"x {scenario.marker}"), timeout=60)
    await scenario.wait_for(lambda s: s.received == 1)
    cancelled_at = time.monotonic()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await scenario.wait_for(lambda s: s.aborted == 1, timeout=10.0)
    assert time.monotonic() - cancelled_at < 10.0, "upstream must see the connection close, not the answer"
    assert scenario.stats.completed == 0


async def test_shutdown_drains_in_flight_calls_and_refuses_new_ones(
    make_server: ServerFactory, emulator: Emulator
) -> None:
    # The in-flight call lasts 1.5 s: long next to the milliseconds the refusal below takes, short
    # next to the 5 s grace.
    slow = emulator.scenario("latency:1.5+ok")
    async with make_server(shutdown_grace=5.0) as server, grpc.aio.insecure_channel(server.target) as channel:
        stub = Stub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""))
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
        in_flight = asyncio.ensure_future(stub.Generate(pb.GenerateRequest(prompt=f"x {slow.marker}"), timeout=10))
        await slow.wait_for(lambda s: s.received == 1)  # the call is in flight upstream
        stopping = asyncio.ensure_future(server.shutdown(grace=5.0))
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Generate(pb.GenerateRequest(prompt="a new call"), timeout=2)
        refused = details_of(info.value)
        assert (refused.code, refused.reason, refused.retry_delay) == (
            grpc.StatusCode.UNAVAILABLE,
            "SHUTTING_DOWN",
            1.0,
        )
        watch.cancel()  # an open Watch stream would hold the server for the whole grace
        response = await in_flight
        assert response.generation.image.data  # the in-flight call finished within the grace
        await stopping


async def test_shutdown_ends_calls_beyond_the_grace_with_details(
    make_server: ServerFactory, emulator: Emulator
) -> None:
    slow = emulator.scenario("latency:10+ok")
    async with make_server() as server, grpc.aio.insecure_channel(server.target) as channel:
        stub = Stub(channel)
        unary = asyncio.ensure_future(stub.Generate(pb.GenerateRequest(prompt=f"x {slow.marker}"), timeout=20))
        stream = stub.GenerateStream(pb.GenerateStreamRequest(prompt=f"x {slow.marker}"), timeout=20)
        assert (await stream.read()).WhichOneof("event") == "accepted"
        await slow.wait_for(lambda s: s.received == 2)
        await server.shutdown(grace=0.4)
        with pytest.raises(grpc.aio.AioRpcError) as unary_error:
            await unary
        with pytest.raises(grpc.aio.AioRpcError) as stream_error:
            while await stream.read() is not grpc.aio.EOF:
                pass
        for err in (unary_error.value, stream_error.value):
            d = details_of(err)
            assert (d.code, d.reason, d.retry_delay) == (grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN", 1.0)
            assert d.metadata["generationId"]
        await slow.wait_for(lambda s: s.aborted == 2)
        assert slow.stats.completed == 0


async def test_missing_signature_upstream_names_the_history_part(stub: Stub, emulator: Emulator) -> None:
    first = await stub.Generate(pb.GenerateRequest(prompt="a cat", options=pb.GenerationOptions(seed=1)))
    model_turn = history_turn(first.generation)
    for part in model_turn.parts:
        if part.WhichOneof("data") == "image":
            part.thought_signature = b"corrupted"
    history = [image_pb2.Turn(role=image_pb2.ROLE_USER, parts=[image_pb2.Part(text="a cat")]), model_turn]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Refine(pb.RefineRequest(prompt="make it blue", history=history))
    d = details_of(info.value)
    assert d.code == grpc.StatusCode.INVALID_ARGUMENT
    assert d.reason in {"MISSING_THOUGHT_SIGNATURE", "UPSTREAM_INVALID_ARGUMENT"}


async def test_stream_hang_up_aborts_the_upstream_request(stub: Stub, emulator: Emulator) -> None:
    # Upstream would answer after 30 s: an abort seen within 10 s was the hang-up, not the answer.
    scenario = emulator.scenario("latency:30+ok")
    call = stub.GenerateStream(pb.GenerateStreamRequest(prompt=f"x {scenario.marker}"), timeout=60)
    assert (await call.read()).WhichOneof("event") == "accepted"
    assert (await call.read()).WhichOneof("event") == "attempt_started"
    await scenario.wait_for(lambda s: s.received == 1)
    call.cancel()
    await scenario.wait_for(lambda s: s.aborted == 1, timeout=10.0)
    assert (scenario.stats.aborted, scenario.stats.completed) == (1, 0)


async def test_retry_budget_stops_an_outage_from_multiplying_load(
    make_server: ServerFactory, emulator: Emulator
) -> None:
    outage = emulator.scenario("overloaded")
    async with (
        make_server(retry_budget_min_retries=2, retry_budget_percent=0) as server,
        grpc.aio.insecure_channel(server.target) as channel,
    ):
        stub = Stub(channel)
        infos = [await fail(stub, f"x {outage.marker}") for _ in range(4)]
    attempts = [int(info.metadata["attempts"]) for info in infos]
    # Two failed retries per window: the first request uses both of its retries;
    # later ones get one attempt each, and say why.
    assert attempts == [3, 1, 1, 1]
    assert [info.metadata["stopReason"] for info in infos] == ["attempts_exhausted"] + ["retry_budget"] * 3
    assert outage.stats.received == sum(attempts)
