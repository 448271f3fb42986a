"""Translation: what Gemini is asked for a checked request (defaults, seed, system instruction)."""

from __future__ import annotations

import io
import random
from dataclasses import replace

from PIL import Image as PILImage

from imagegen.v1 import image_generation_service_pb2 as pb
from imagegen.v1 import image_pb2
from imagegen_server.config import DEFAULT_CONSTRAINT, ServerConfig
from imagegen_server.models import find_model
from imagegen_server.translation import SEED_RANGE, can_serve, choose_seed, output_shape, to_upstream
from imagegen_server.validation import ValidatedRequest, validate

CONFIG = ServerConfig()


def png() -> bytes:
    buf = io.BytesIO()
    PILImage.new("RGB", (8, 8)).save(buf, "PNG")
    return buf.getvalue()


def checked(prompt: str = "a red fox", *, images: int = 0, **options: object) -> ValidatedRequest:
    request = pb.GenerateRequest(
        prompt=prompt,
        input_images=[image_pb2.Image(data=png())] * images,
        options=pb.GenerationOptions(**options),  # type: ignore[arg-type]
    )
    return validate(request, CONFIG)


def test_minimal_request_gets_square_default_tier_and_constraint() -> None:
    up = to_upstream(checked(), CONFIG, seed=7)
    assert (up.model, up.seed, up.aspect_ratio, up.image_size) == ("gemini-3.1-flash-image", 7, "1:1", "1K")
    assert up.system_instruction == DEFAULT_CONSTRAINT  # on by default
    assert not up.include_thoughts
    assert len(up.contents) == 1 and up.contents[0].role == "user"
    assert up.contents[0].parts[0].text == "a red fox"


def test_constraint_off_sends_no_system_instruction() -> None:
    up = to_upstream(checked(), replace(CONFIG, strict_constraints=False), seed=1)
    assert up.system_instruction is None


def test_width_height_round_to_the_models_ratio_and_tier() -> None:
    spec = find_model("gemini-3.1-flash-image")
    assert spec is not None
    assert output_shape(checked(width=1920, height=1080), spec) == ("16:9", "2K")
    up = to_upstream(checked(width=1920, height=1080), CONFIG, seed=1)
    assert (up.aspect_ratio, up.image_size) == ("16:9", "2K")


def test_explicit_ratio_and_tier_win_over_width_and_height() -> None:
    up = to_upstream(checked(width=1920, height=1080, aspect_ratio="4:3", image_size="4K"), CONFIG, seed=1)
    assert (up.aspect_ratio, up.image_size) == ("4:3", "4K")


def test_reference_image_keeps_its_shape() -> None:
    up = to_upstream(checked(images=2), CONFIG, seed=1)
    assert up.aspect_ratio is None and up.image_size == "1K"
    assert [p.image.mime_type for p in up.contents[-1].parts[1:] if p.image] == ["image/png", "image/png"]


def test_model_without_tiers_sends_no_size() -> None:
    up = to_upstream(checked(model="gemini-2.5-flash-image"), CONFIG, seed=1)
    assert (up.model, up.aspect_ratio, up.image_size) == ("gemini-2.5-flash-image", "1:1", None)


def test_another_model_can_be_asked_for_the_same_request() -> None:
    # The hook fallback models use: same request, same seed, another model's vocabulary.
    other = find_model("gemini-2.5-flash-image")
    assert other is not None
    up = to_upstream(checked(width=1920, height=1080), CONFIG, seed=3, spec=other)
    assert (up.model, up.seed, up.aspect_ratio, up.image_size) == ("gemini-2.5-flash-image", 3, "16:9", None)


def test_history_comes_first_and_the_new_turn_last() -> None:
    history = [
        image_pb2.Turn(role=image_pb2.ROLE_USER, parts=[image_pb2.Part(text="a cat")]),
        image_pb2.Turn(
            role=image_pb2.ROLE_MODEL,
            parts=[image_pb2.Part(image=image_pb2.Image(data=png()), thought_signature=b"sig\x00")],
        ),
    ]
    v = validate(pb.RefineRequest(prompt="make it blue", history=history), CONFIG, history=history)
    up = to_upstream(v, CONFIG, seed=1)
    assert [c.role for c in up.contents] == ["user", "model", "user"]
    assert up.contents[1].parts[0].thought_signature == b"sig\x00"
    assert up.contents[2].parts[0].text == "make it blue"
    assert up.aspect_ratio is None  # refining keeps the image's shape


def test_previews_ask_for_thought_images() -> None:
    assert to_upstream(checked(), CONFIG, seed=1, previews=True).include_thoughts


def test_seed_is_the_callers_even_zero_else_random_in_range() -> None:
    assert choose_seed(0) == 0 and choose_seed(42) == 42
    seeds = {choose_seed(None, random.Random(i)) for i in range(50)}
    assert all(0 <= s < SEED_RANGE for s in seeds) and len(seeds) > 40
    assert choose_seed(None, random.Random(5)) == choose_seed(None, random.Random(5))  # injected randomness reproduces


def test_a_fallback_model_serves_only_requests_it_can_answer_as_asked() -> None:
    flash, pro, old = (
        find_model(n) for n in ("gemini-3.1-flash-image", "gemini-3-pro-image", "gemini-2.5-flash-image")
    )
    assert flash is not None and pro is not None and old is not None
    assert can_serve(old, checked(model="gemini-3-pro-image", width=1920, height=1080))  # re-rounded for it
    assert can_serve(flash, checked(model="gemini-3-pro-image", image_size="4K"))
    assert not can_serve(old, checked(model="gemini-3-pro-image", image_size="4K"))  # no tiers
    assert not can_serve(pro, checked(aspect_ratio="1:8"))  # a ratio only 3.1 Flash has
    history = [
        image_pb2.Turn(role=image_pb2.ROLE_USER, parts=[image_pb2.Part(text="a cat")]),
        image_pb2.Turn(
            role=image_pb2.ROLE_MODEL,
            parts=[image_pb2.Part(image=image_pb2.Image(data=png()), thought_signature=b"sig")],
        ),
    ]
    refine = validate(pb.RefineRequest(prompt="bluer", history=history), CONFIG, history=history)
    assert not can_serve(flash, refine)  # a conversation stays with its model
