"""Request validation: every bad field is named by its proto path."""

from __future__ import annotations

import io

import grpc
import pytest
from google.rpc import error_details_pb2
from PIL import Image as PILImage

from imagegen.v1 import image_generation_service_pb2 as pb
from imagegen.v1 import image_pb2
from imagegen_server.config import ServerConfig
from imagegen_server.errors import ServiceError
from imagegen_server.validation import validate

CONFIG = ServerConfig()


def png(width: int = 8, height: int = 8) -> bytes:
    buf = io.BytesIO()
    PILImage.new("RGB", (width, height), (200, 10, 10)).save(buf, "PNG")
    return buf.getvalue()


def jpeg() -> bytes:
    buf = io.BytesIO()
    PILImage.new("RGB", (8, 8)).save(buf, "JPEG")
    return buf.getvalue()


def violations(err: ServiceError) -> dict[str, str]:
    bad = error_details_pb2.BadRequest()
    for detail in err.status.details:
        if detail.Unpack(bad):
            return {v.field: v.description for v in bad.field_violations}
    return {}


def fails(request: pb.GenerateRequest | pb.RefineRequest, **kwargs: object) -> dict[str, str]:
    with pytest.raises(ServiceError) as info:
        validate(request, CONFIG, **kwargs)  # type: ignore[arg-type]
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.error_info().reason == "INVALID_REQUEST"
    return violations(info.value)


def test_minimal_request_keeps_what_the_caller_sent_and_no_defaults() -> None:
    v = validate(pb.GenerateRequest(prompt="a red fox"), CONFIG)
    assert v.spec.name == "gemini-3.1-flash-image"  # the configured default model
    assert (v.prompt, v.aspect_ratio, v.image_size, v.width, v.height) == ("a red fox", "", "", 0, 0)
    assert v.seed is None  # the server picks one later (translation)
    assert v.input_images == () and v.history == () and v.history_len == 0


def test_seed_zero_is_kept() -> None:
    v = validate(pb.GenerateRequest(prompt="x", options=pb.GenerationOptions(seed=0)), CONFIG)
    assert v.seed == 0


def test_checked_options_are_passed_through() -> None:
    options = pb.GenerationOptions(
        model="gemini-3-pro-image", width=1920, height=1080, aspect_ratio="4:3", image_size="2K", request_id="r-1"
    )
    v = validate(pb.GenerateRequest(prompt="x", options=options), CONFIG)
    assert (v.spec.name, v.width, v.height, v.aspect_ratio, v.image_size, v.request_id) == (
        "gemini-3-pro-image",
        1920,
        1080,
        "4:3",
        "2K",
        "r-1",
    )


def test_input_image_type_is_detected_not_assumed() -> None:
    v = validate(pb.GenerateRequest(prompt="x", input_images=[image_pb2.Image(data=jpeg())]), CONFIG)
    assert [image.mime_type for image in v.input_images] == ["image/jpeg"]


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.GenerateRequest(prompt="  "), "prompt"),
        (pb.GenerateRequest(prompt="x" * 10_001), "prompt"),
        (pb.GenerateRequest(prompt="x", options=pb.GenerationOptions(model="gemini-2.0-flash-exp")), "options.model"),
        (pb.GenerateRequest(prompt="x", options=pb.GenerationOptions(width=10, height=10)), "options.width"),
        (pb.GenerateRequest(prompt="x", options=pb.GenerationOptions(width=1024)), "options.height"),
        (pb.GenerateRequest(prompt="x", options=pb.GenerationOptions(aspect_ratio="7:3")), "options.aspect_ratio"),
        (pb.GenerateRequest(prompt="x", options=pb.GenerationOptions(image_size="2k")), "options.image_size"),
        (
            pb.GenerateRequest(
                prompt="x", options=pb.GenerationOptions(model="gemini-2.5-flash-image", image_size="2K")
            ),
            "options.image_size",
        ),
        (pb.GenerateRequest(prompt="x", input_images=[image_pb2.Image(data=b"not an image")]), "input_images[0].data"),
        (
            pb.GenerateRequest(prompt="x", input_images=[image_pb2.Image(data=png(), mime_type="image/jpeg")]),
            "input_images[0].mime_type",
        ),
        (pb.GenerateRequest(prompt="x", input_images=[image_pb2.Image(data=png())] * 15), "input_images"),
    ],
)
def test_bad_fields_are_named(request_: pb.GenerateRequest, field: str) -> None:
    assert field in fails(request_)


def test_all_bad_fields_reported_at_once() -> None:
    bad = fails(pb.GenerateRequest(prompt="", options=pb.GenerationOptions(aspect_ratio="7:3", width=5, height=5)))
    assert {"prompt", "options.aspect_ratio", "options.width", "options.height"} <= set(bad)


def _turn(role: image_pb2.Role.ValueType, *parts: image_pb2.Part) -> image_pb2.Turn:
    return image_pb2.Turn(role=role, parts=parts)


def test_history_round_trips_signatures_and_order() -> None:
    history = [
        _turn(image_pb2.ROLE_USER, image_pb2.Part(text="a cat")),
        _turn(
            image_pb2.ROLE_MODEL,
            image_pb2.Part(text="here", thought_signature=b"\x00sigA"),
            image_pb2.Part(image=image_pb2.Image(data=png(), mime_type="image/png"), thought_signature=b"sigB\xff"),
        ),
    ]
    v = validate(pb.RefineRequest(prompt="make it blue", history=history), CONFIG, history=history)
    assert [turn.role for turn in v.history] == ["user", "model"]
    assert [p.thought_signature for p in v.history[1].parts] == [b"\x00sigA", b"sigB\xff"]
    image = v.history[1].parts[1].image
    assert image is not None and image.mime_type == "image/png"
    assert v.prompt == "make it blue"  # the new turn is not history
    assert v.history_len == 2


def test_history_problems_are_named() -> None:
    history = [
        _turn(image_pb2.ROLE_MODEL, image_pb2.Part(image=image_pb2.Image(data=png()))),
        _turn(image_pb2.ROLE_MODEL, image_pb2.Part()),
        _turn(image_pb2.ROLE_UNSPECIFIED, image_pb2.Part(text="x")),
    ]
    bad = fails(pb.RefineRequest(prompt="x", history=history), history=history)
    assert "history[0].role" in bad  # must start with the user
    assert "history[0].parts[0].thought_signature" in bad  # gemini-3 needs it
    assert "history[1].role" in bad  # two model turns in a row
    assert "history[1].parts[0]" in bad  # empty part
    assert "history[2].role" in bad


def test_refine_needs_history() -> None:
    assert "history" in fails(pb.RefineRequest(prompt="x"), history=[])


def test_violations_say_how_to_fix_in_field_order() -> None:
    history = [
        _turn(image_pb2.ROLE_USER, image_pb2.Part(text="a cat")),
        _turn(image_pb2.ROLE_MODEL, image_pb2.Part(image=image_pb2.Image(mime_type="image/png"))),
    ]
    request = pb.RefineRequest(
        prompt="",
        history=history,
        options=pb.GenerationOptions(model="gemini-3-pro-image", aspect_ratio="7:3", width=1024),
    )
    with pytest.raises(ServiceError) as info:
        validate(request, CONFIG, history=history)
    bad = error_details_pb2.BadRequest()
    assert any(detail.Unpack(bad) for detail in info.value.status.details)
    assert [(v.field, v.description) for v in bad.field_violations] == [
        ("prompt", "must not be empty"),
        ("options.height", "width and height must be given together"),
        (
            "options.aspect_ratio",
            "'7:3' is not supported by gemini-3-pro-image; use one of: "
            "1:1, 2:3, 3:2, 3:4, 4:3, 4:5, 5:4, 9:16, 16:9, 21:9",
        ),
        (
            "history[1].parts[0].image.data",
            "must not be empty (Generation.model_turn sends the final image's part without its bytes: "
            "pass that Generation.image in history_images[Generation.generation_id], or its bytes here)",
        ),
        (
            "history[1].parts[0].thought_signature",
            "gemini-3-pro-image requires the thought signature returned with this image; "
            "pass Generation.model_turn back unchanged",
        ),
    ]
