"""history.with_history_images: referring parts get their bytes; everything else is passed through untouched."""

from __future__ import annotations

from imagegen.v1 import image_pb2
from imagegen_server.history import with_history_images

PNG = b"\x89PNG\r\n\x1a\n-final"


def model_turn(generation_id: str, data: bytes = b"") -> image_pb2.Turn:
    return image_pb2.Turn(
        role=image_pb2.ROLE_MODEL,
        parts=[
            image_pb2.Part(text="here", thought_signature=b"t"),
            image_pb2.Part(image=image_pb2.Image(data=b"draft"), thought=True),
            image_pb2.Part(
                image=image_pb2.Image(data=data, mime_type="image/png", width=4, height=4),
                thought_signature=b"s",
                image_generation_id=generation_id,
            ),
        ],
    )


def test_fills_only_parts_that_refer_to_a_given_image() -> None:
    user = image_pb2.Turn(role=image_pb2.ROLE_USER, parts=[image_pb2.Part(text="a cat")])
    history = [user, model_turn("g1"), user, model_turn("g2")]
    out = with_history_images(history, {"g1": image_pb2.Image(data=PNG, mime_type="image/png")})
    assert out[0] is user and out[3] is history[3]  # nothing to fill: the same message, not a copy
    filled = out[1].parts
    assert filled[2].image.data == PNG and filled[2].thought_signature == b"s"
    assert (filled[2].image.width, filled[2].image.mime_type) == (4, "image/png")
    assert filled[1].image.data == b"draft" and filled[0].text == "here"
    assert history[1].parts[2].image.data == b""  # the caller's request is not modified
    assert out[3].parts[2].image.data == b""  # no entry for g2: left for validation to report


def test_bytes_already_in_the_part_win_and_no_images_is_a_no_op() -> None:
    history = [model_turn("g1", data=b"own")]
    assert with_history_images(history, {}) is history
    out = with_history_images(history, {"g1": image_pb2.Image(data=PNG)})
    assert out[0].parts[2].image.data == b"own"
