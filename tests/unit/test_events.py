"""Event and result building: typed pipeline values -> imagegen.v1 messages."""

from __future__ import annotations

import io

import grpc
import pytest
from PIL import Image as PILImage

from imagegen.v1 import image_generation_service_pb2 as pb
from imagegen.v1 import image_pb2
from imagegen_server import events
from imagegen_server.gemini.errors import ErrorKind, UpstreamError
from imagegen_server.gemini.types import Content, InlineImage, Part, UpstreamRequest, UpstreamResult, Usage
from imagegen_server.retry import RetryDecision


def png(width: int = 6, height: int = 4) -> bytes:
    buf = io.BytesIO()
    PILImage.new("RGB", (width, height)).save(buf, "PNG")
    return buf.getvalue()


REQUEST = UpstreamRequest(
    model="gemini-3-pro-image",
    contents=(Content(role="user", parts=(Part(text="x"),)),),
    seed=0,
    aspect_ratio="16:9",
    image_size="2K",
)


def result(finish_reason: str = "STOP") -> UpstreamResult:
    final = InlineImage(png(), "image/png")
    draft = InlineImage(png(2, 2), "image/png")
    return UpstreamResult(
        image=final,
        width=6,
        height=4,
        thought_signature=b"sig-final",
        text="here you go",
        finish_reason=finish_reason,
        usage=Usage(prompt_tokens=1, output_tokens=2, thoughts_tokens=3, total_tokens=6),
        model_version="v-1",
        response_id="resp-1",
        parts=(
            Part(text="here you go", thought_signature=b"sig-text"),
            Part(image=draft, thought=True),
            Part(image=final, thought_signature=b"sig-final"),
        ),
    )


def test_accepted_says_what_was_asked_of_which_model() -> None:
    a = events.accepted("g1", REQUEST, 3)
    assert (a.generation_id, a.seed, a.model, a.max_attempts, a.aspect_ratio, a.image_size) == (
        "g1",
        0,
        "gemini-3-pro-image",
        3,
        "16:9",
        "2K",
    )
    unset = events.accepted("g2", UpstreamRequest(model="m", contents=(), seed=9), 1)
    assert (unset.seed, unset.aspect_ratio, unset.image_size) == (9, "", "")  # left to Gemini


def test_attempt_failed_carries_the_final_statuss_code_and_reason() -> None:
    error = UpstreamError(ErrorKind.RATE_LIMITED, "slow down")
    retrying = events.attempt_failed(1, error, RetryDecision(will_retry=True, delay=2.5, reason="retryable"))
    assert (retrying.attempt, retrying.code, retrying.reason, retrying.message) == (
        1,
        grpc.StatusCode.RESOURCE_EXHAUSTED.value[0],
        "UPSTREAM_RATE_LIMITED",
        "slow down",
    )
    assert retrying.will_retry and retrying.retry_delay.ToMilliseconds() == 2500
    stopping = events.attempt_failed(3, error, RetryDecision(will_retry=False, delay=4.0, reason="attempts_exhausted"))
    assert not stopping.will_retry and stopping.retry_delay.ToNanoseconds() == 0  # no wait follows
    assert retrying.stop_reason == pb.RETRY_STOP_REASON_UNSPECIFIED
    assert stopping.stop_reason == pb.RETRY_STOP_REASON_ATTEMPTS_EXHAUSTED


@pytest.mark.parametrize("reason", ["attempts_exhausted", "deadline", "retry_budget", "circuit_open", "not_retryable"])
def test_every_stop_reason_has_its_enum_value(reason: str) -> None:
    value = events.stop_reason(reason)
    assert pb.RetryStopReason.Name(value) == f"RETRY_STOP_REASON_{reason.upper()}"


def test_an_open_circuit_says_when_its_probe_goes() -> None:
    error = UpstreamError(ErrorKind.CIRCUIT_OPEN, "open", model="gemini-3-pro-image")
    refused = events.attempt_failed(1, error, RetryDecision(will_retry=False, delay=12.5, reason="circuit_open"))
    assert (refused.code, refused.reason) == (grpc.StatusCode.UNAVAILABLE.value[0], "CIRCUIT_OPEN")
    assert refused.stop_reason == pb.RETRY_STOP_REASON_CIRCUIT_OPEN and refused.retry_delay.ToMilliseconds() == 12500


def test_preview_has_its_pixel_size_and_undecodable_bytes_get_zero() -> None:
    p = events.preview(InlineImage(png(6, 4), "image/png"), 2)
    assert (p.index, p.image.width, p.image.height, p.image.mime_type) == (2, 6, 4, "image/png")
    junk = events.preview(InlineImage(b"\x89PNG broken", "image/png"), 1)
    assert (junk.image.width, junk.image.height) == (0, 0)


def test_heartbeat_elapsed() -> None:
    assert events.heartbeat(1.25).elapsed.ToMilliseconds() == 1250


def test_generation_carries_request_result_and_ids() -> None:
    g = events.generation(REQUEST, result(), generation_id="g1", request_id="r1", attempts=2, elapsed=3.5)
    assert (g.generation_id, g.request_id, g.response_id, g.attempts) == ("g1", "r1", "resp-1", 2)
    assert (g.model, g.model_version, g.seed, g.aspect_ratio, g.image_size) == (
        "gemini-3-pro-image",
        "v-1",
        0,
        "16:9",
        "2K",
    )
    assert (g.image.data, g.image.width, g.image.height) == (png(), 6, 4)
    assert g.thought_signature == b"sig-final" and g.text == "here you go"
    assert g.finish_reason == image_pb2.FINISH_REASON_STOP
    assert (g.usage.prompt_tokens, g.usage.output_tokens, g.usage.thoughts_tokens, g.usage.total_tokens) == (1, 2, 3, 6)
    assert g.inference_time.ToMilliseconds() == 3500


def test_model_turn_keeps_signatures_and_sends_the_final_image_once() -> None:
    turn = events.model_turn(result(), "gen-7")
    assert turn.role == image_pb2.ROLE_MODEL
    text, draft, final = turn.parts
    assert (text.text, text.thought_signature) == ("here you go", b"sig-text")
    assert draft.thought and draft.image.data == png(2, 2)
    # The final image's bytes travel in Generation.image only.
    assert final.image.data == b"" and final.thought_signature == b"sig-final"
    assert (final.image.mime_type, final.image.width, final.image.height) == ("image/png", 6, 4)
    # ...and the part says whose Generation.image holds them; no other part refers anywhere.
    assert final.image_generation_id == "gen-7"
    assert text.image_generation_id == draft.image_generation_id == ""


@pytest.mark.parametrize(
    ("gemini", "ours"),
    [
        ("STOP", image_pb2.FINISH_REASON_STOP),
        ("SAFETY", image_pb2.FINISH_REASON_SAFETY),
        ("SOMETHING_NEW", image_pb2.FINISH_REASON_OTHER),
        ("", image_pb2.FINISH_REASON_UNSPECIFIED),
    ],
)
def test_finish_reason(gemini: str, ours: image_pb2.FinishReason.ValueType) -> None:
    assert events.finish_reason(gemini) == ours


@pytest.mark.parametrize("wrap", [pb.GenerateStreamResponse, pb.RefineStreamResponse])
def test_every_event_wraps_into_its_stream_field(wrap: type[pb.GenerateStreamResponse]) -> None:
    built: list[events.Event] = [
        events.accepted("g", REQUEST, 3),
        events.attempt_started(1, 3),
        events.attempt_failed(1, UpstreamError(ErrorKind.UNAVAILABLE, "x"), RetryDecision(True, 1.0, "retryable")),
        events.model_fallback("gemini-3-pro-image", "gemini-3.1-flash-image", image_pb2.FALLBACK_REASON_UNAVAILABLE),
        events.heartbeat(1.0),
        events.preview(InlineImage(png(), "image/png"), 1),
        events.generation(REQUEST, result(), generation_id="g", request_id="", attempts=1, elapsed=1.0),
    ]
    fields = []
    for event in built:
        message = events.stream_message(event, wrap)
        field = message.WhichOneof("event")
        assert getattr(message, str(field)) == event
        fields.append(field)
    assert fields == [
        "accepted",
        "attempt_started",
        "attempt_failed",
        "model_fallback",
        "heartbeat",
        "preview",
        "completed",
    ]
