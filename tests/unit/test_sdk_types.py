"""Conversions between the SDK's typed values and the imagegen.v1 messages (no server needed)."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import grpc
import pytest
from google.protobuf import duration_pb2

import imagegen
from imagegen._convert import RequestSpec, event_from_response, normalize_metadata, to_image_proto
from imagegen.testing import make_generation, make_png, stream_events
from imagegen.types import finish_reason_name, sniff_mime_type, status_code_from_int
from imagegen.v1 import image_generation_service_pb2 as pb
from imagegen.v1 import image_pb2

PNG = make_png(3, 2)
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 16
WEBP = b"RIFF\x00\x00\x00\x00WEBPVP8 "


@pytest.mark.parametrize(
    ("data", "mime"),
    [
        (PNG, "image/png"),
        (JPEG, "image/jpeg"),
        (WEBP, "image/webp"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00", "image/heic"),
        (b"\x00\x00\x00\x18ftypmif1\x00\x00\x00\x00", "image/heif"),
        (b"GIF89a\x01\x00\x01\x00", "image/gif"),
        (b"GIF87a", "image/gif"),
        # Unknown or truncated: "" (the server then detects, and rejects, the bytes itself).
        (b"WEBPWEBPWEBP", ""),
        (b"RIFF\x00\x00\x00\x00WAVE", ""),
        (b"\x00\x00\x00\x18ftypisom", ""),
        (b"\x89PNG", ""),
        (b"BM\x00\x00", ""),
        (b"", ""),
    ],
)
def test_sniff_mime_type(data: bytes, mime: str) -> None:
    assert sniff_mime_type(data) == mime


def test_sniffed_type_is_sent_with_bytes_input() -> None:
    heic = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00"
    assert to_image_proto(heic).mime_type == "image/heic"
    assert to_image_proto(b"not an image").mime_type == ""
    assert imagegen.Image.from_bytes(b"GIF89a").extension == ".gif"


def test_image_from_path_and_save(tmp_path: Path) -> None:
    source = tmp_path / "in.png"
    source.write_bytes(PNG)
    image = imagegen.Image.from_path(source)
    assert image.data == PNG and image.mime_type == "image/png"
    assert image.extension == ".png"
    saved = image.save(tmp_path / "out.png")
    assert saved.read_bytes() == PNG
    assert "bytes" in repr(image) and "\\x89" not in repr(image)
    assert imagegen.Image.from_bytes(b"xx", "image/heic").extension == ".heic"


@pytest.mark.parametrize(
    ("value", "mime"),
    [
        (PNG, "image/png"),
        (bytearray(JPEG), "image/jpeg"),
        (imagegen.Image(PNG, "image/png", 3, 2), "image/png"),
        (image_pb2.Image(data=WEBP, mime_type="image/webp", width=9), "image/webp"),
    ],
)
def test_to_image_proto(value: imagegen.ImageInput, mime: str) -> None:
    message = to_image_proto(value)
    assert message.mime_type == mime
    assert message.width == 0  # output-only fields are never sent


def test_to_image_proto_paths(tmp_path: Path) -> None:
    path = tmp_path / "a.jpg"
    path.write_bytes(JPEG)
    assert to_image_proto(path).data == JPEG
    assert to_image_proto(str(path)).mime_type == "image/jpeg"
    with pytest.raises(FileNotFoundError):
        to_image_proto(tmp_path / "missing.png")
    with pytest.raises(TypeError):
        to_image_proto(42)  # type: ignore[arg-type]


def test_request_spec_options_and_seed_presence() -> None:
    spec = RequestSpec.build(
        "a fox",
        input_images=[PNG],
        model="m",
        width=1024,
        height=768,
        aspect_ratio="4:3",
        image_size="2K",
        seed=0,
        request_id="r1",
    )
    request = spec.generate_request()
    assert request.prompt == "a fox"
    assert request.options.HasField("seed") and request.options.seed == 0
    assert (request.options.width, request.options.height) == (1024, 768)
    assert (request.options.aspect_ratio, request.options.image_size) == ("4:3", "2K")
    assert request.options.request_id == "r1" and spec.idempotent
    assert request.input_images[0].mime_type == "image/png"
    assert spec.generate_stream_request().SerializeToString() == request.SerializeToString()

    unseeded = RequestSpec.build("x")
    assert not unseeded.generate_request().options.HasField("seed")
    assert not unseeded.idempotent


def test_request_spec_rejects_bad_types() -> None:
    with pytest.raises(TypeError):
        RequestSpec.build(b"bytes prompt")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="wrap a single image"):
        RequestSpec.build("x", input_images=PNG)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        RequestSpec.build("x", history=["not a turn"])  # type: ignore[list-item]


def test_generation_kwargs_are_the_options_request_spec_takes() -> None:
    # RequestSpec.build holds the defaults of GenerationKwargs; the two lists must not drift.
    parameters = inspect.signature(RequestSpec.build).parameters
    named = [name for name, p in parameters.items() if p.kind is p.KEYWORD_ONLY and name != "history"]
    assert named == list(imagegen.GenerationKwargs.__annotations__)
    assert imagegen.GenerationKwargs.__optional_keys__ == frozenset(named)
    # help(imagegen.Client.generate) names every option and where they are documented.
    doc = imagegen.Client.generate.__doc__ or ""
    assert all(f"``{name}``" in doc for name in named) and "GenerationKwargs" in doc
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'widht'.*GenerationKwargs"):
        RequestSpec.build("x", widht=3)


def test_refine_request_keeps_history_bytes_exactly() -> None:
    generation = make_generation(signature=b"\x00\x01\xfe\xff")
    user = imagegen.Turn("user", (imagegen.Part(text="a fox"),))
    spec = RequestSpec.build("night", history=[user, generation.model_turn], seed=5)
    request = spec.refine_request()
    assert request.history[0].role == image_pb2.ROLE_USER
    assert request.history[1] == generation.model_turn
    assert request.history[1].parts[0].thought_signature == b"\x00\x01\xfe\xff"
    assert spec.refine_stream_request().SerializeToString() == request.SerializeToString()


def test_turn_and_part_round_trip() -> None:
    message = image_pb2.Turn(
        role=image_pb2.ROLE_MODEL,
        parts=[
            image_pb2.Part(text="thinking", thought=True),
            image_pb2.Part(text="here", thought_signature=b"t-sig"),
            image_pb2.Part(
                image=image_pb2.Image(data=PNG, mime_type="image/png", width=3, height=2), thought_signature=b"\xff"
            ),
        ],
    )
    turn = imagegen.Turn.from_proto(message)
    assert turn.role == "model"
    assert turn.text == "here"
    assert turn.images[0].size == (3, 2)
    assert turn.to_proto() == message
    with pytest.raises(ValueError):
        imagegen.Turn.from_proto(image_pb2.Turn())
    assert imagegen.Turn.from_proto(image_pb2.Turn(), default_role="user").role == "user"


def test_generation_result_from_proto() -> None:
    message = make_generation(seed=42, width=6, height=4, text="hi", request_id="rid", inference_time=2.25)
    result = imagegen.GenerationResult.from_proto(message)
    assert result.seed == 42
    assert (result.width, result.height) == (6, 4)
    assert result.image.data.startswith(b"\x89PNG")
    assert result.inference_time == pytest.approx(2.25)
    assert result.finish_reason == "STOP"
    assert result.usage == imagegen.Usage(prompt_tokens=10, output_tokens=1120, total_tokens=1130)
    assert result.model_turn.role == "model"
    assert result.model_turn.parts[-1].thought_signature == message.thought_signature
    assert result.text == "hi" and result.request_id == "rid"
    assert result.raw is message
    assert "sig" not in repr(result)


def test_finish_reason_and_code_names() -> None:
    assert finish_reason_name(image_pb2.FINISH_REASON_IMAGE_SAFETY) == "IMAGE_SAFETY"
    assert finish_reason_name(0) == "UNSPECIFIED"
    assert finish_reason_name(999) == "999"
    assert status_code_from_int(8) is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert status_code_from_int(99) is grpc.StatusCode.UNKNOWN


def test_events_from_responses() -> None:
    generation = make_generation(generation_id="g7")
    responses = stream_events(
        generation, failures=[(grpc.StatusCode.RESOURCE_EXHAUSTED, "UPSTREAM_RATE_LIMITED", 1.5)], previews=1
    )
    events = [event_from_response(r) for r in responses]
    kinds = [type(e).__name__ for e in events]
    assert kinds == [
        "Accepted",
        "AttemptStarted",
        "AttemptFailed",
        "Heartbeat",
        "AttemptStarted",
        "Preview",
        "Completed",
    ]
    accepted, _, failed, heartbeat, started, preview, completed = events
    assert isinstance(accepted, imagegen.Accepted) and accepted.generation_id == "g7"
    assert isinstance(failed, imagegen.AttemptFailed)
    assert failed.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert failed.retry_delay == pytest.approx(1.5) and failed.will_retry
    assert isinstance(heartbeat, imagegen.Heartbeat) and heartbeat.elapsed == pytest.approx(0.1)
    assert isinstance(started, imagegen.AttemptStarted) and started.attempt == 2
    assert isinstance(preview, imagegen.Preview) and preview.image.mime_type == "image/png"
    assert isinstance(completed, imagegen.Completed) and completed.result.attempts == 2
    assert event_from_response(pb.GenerateStreamResponse()) is None
    refine = pb.RefineStreamResponse(heartbeat=pb.Heartbeat(elapsed=duration_pb2.Duration(seconds=3)))
    assert isinstance(event_from_response(refine), imagegen.Heartbeat)


def test_fallback_and_stop_reason_events_from_responses() -> None:
    fell = pb.GenerateStreamResponse(
        model_fallback=pb.ModelFallback(
            from_model="gemini-3-pro-image",
            to_model="gemini-3.1-flash-image",
            reason=image_pb2.FALLBACK_REASON_RATE_LIMITED,
        )
    )
    event = event_from_response(fell)
    assert isinstance(event, imagegen.ModelFallback)
    assert (event.from_model, event.to_model, event.reason, event.kind) == (
        "gemini-3-pro-image",
        "gemini-3.1-flash-image",
        "rate_limited",
        "model_fallback",
    )
    stopped = event_from_response(
        pb.GenerateStreamResponse(
            attempt_failed=pb.AttemptFailed(attempt=1, code=14, stop_reason=pb.RETRY_STOP_REASON_CIRCUIT_OPEN)
        )
    )
    assert isinstance(stopped, imagegen.AttemptFailed) and stopped.stop_reason == "circuit_open"
    accepted = event_from_response(
        pb.GenerateStreamResponse(
            accepted=pb.Accepted(
                model="gemini-3.1-flash-image",
                requested_model="gemini-3-pro-image",
                fallback_reason=image_pb2.FALLBACK_REASON_CIRCUIT_OPEN,
            )
        )
    )
    assert isinstance(accepted, imagegen.Accepted)
    assert (accepted.requested_model, accepted.fallback_reason, accepted.fallback_models) == (
        "gemini-3-pro-image",
        "circuit_open",
        (),
    )
    # From an older server: no requested model means the model that answered; no reasons.
    plain = event_from_response(pb.GenerateStreamResponse(accepted=pb.Accepted(model="m")))
    assert isinstance(plain, imagegen.Accepted) and (plain.requested_model, plain.fallback_reason) == ("m", "")


def test_normalize_metadata() -> None:
    assert normalize_metadata(None) == ()
    assert normalize_metadata({"X-Team": "a"}) == (("x-team", "a"),)
    assert normalize_metadata([("k", "v"), ("t-bin", b"\x00")]) == (("k", "v"), ("t-bin", b"\x00"))


def test_public_names_are_exported() -> None:
    for name in imagegen.__all__:
        assert getattr(imagegen, name) is not None
        obj = getattr(imagegen, name)
        if isinstance(obj, type):
            assert obj.__doc__, name
    assert imagegen.GenerationError is imagegen.ImagegenError
    assert imagegen.ContentBlockedError is imagegen.ContentPolicyError


def test_usage_has_the_same_fields_in_every_layer() -> None:
    # Gemini's usageMetadata (server) -> imagegen.v1.Usage (wire) -> imagegen.Usage (SDK), field for field.
    from imagegen_server.gemini.types import Usage as UpstreamUsage

    wire = [f.name for f in image_pb2.Usage.DESCRIPTOR.fields]
    assert [f.name for f in dataclasses.fields(imagegen.Usage)] == wire
    assert [f.name for f in dataclasses.fields(UpstreamUsage)] == wire
    message = image_pb2.Usage(prompt_tokens=1, output_tokens=2, thoughts_tokens=3, total_tokens=6)
    assert imagegen.Usage.from_proto(message) == imagegen.Usage(1, 2, 3, 6)
