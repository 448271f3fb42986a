"""Check every request field before anything goes upstream.

Turns a Generate/Refine request message into a :class:`ValidatedRequest` (the
upstream request plus what the response needs), or raises INVALID_ARGUMENT with
one BadRequest field violation per bad field, named by its proto path.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from imagegen.v1 import image_pb2
from imagegen.v1.image_generation_service_pb2 import GenerationOptions
from imagegen_server import errors
from imagegen_server.config import DEFAULT_CONSTRAINT, ServerConfig
from imagegen_server.errors import FieldViolation
from imagegen_server.gemini.types import Content, InlineImage, Part, UpstreamRequest
from imagegen_server.imagetypes import SUPPORTED_INPUT_TYPES, same_type, sniff_mime_type
from imagegen_server.models import ModelSpec, find_model

MIN_SIDE, MAX_SIDE = 64, 8192
MAX_REQUEST_ID_CHARS = 128
SEED_RANGE = 2**31


class GenerationMessage(Protocol):
    """What Generate, GenerateStream, Refine and RefineStream requests share."""

    @property
    def prompt(self) -> str:
        """What to draw, or the edit to make."""
        ...

    @property
    def input_images(self) -> Sequence[image_pb2.Image]:
        """Reference images for this turn."""
        ...

    @property
    def options(self) -> GenerationOptions:
        """Model, size, seed and idempotency options."""
        ...

    def SerializeToString(self, *, deterministic: bool = ...) -> bytes:
        """The wire bytes (used to fingerprint idempotent requests)."""
        ...


@dataclass(frozen=True, slots=True)
class ValidatedRequest:
    """A request that passed validation, ready for the retry loop."""

    upstream: UpstreamRequest
    spec: ModelSpec
    seed: int
    aspect_ratio: str
    image_size: str
    request_id: str
    #: Number of history turns before the new user turn (maps Gemini content
    #: positions back to ``history[i]``).
    history_len: int


def validate(
    request: GenerationMessage,
    config: ServerConfig,
    *,
    history: Sequence[image_pb2.Turn] | None = None,
    rng: random.Random | None = None,
) -> ValidatedRequest:
    """Validate a request; ``history`` is given for Refine (required there)."""
    bad: list[FieldViolation] = []
    opts = request.options

    prompt = request.prompt
    if not prompt.strip():
        bad.append(FieldViolation("prompt", "must not be empty"))
    elif len(prompt) > config.max_prompt_chars:
        bad.append(FieldViolation("prompt", f"must be at most {config.max_prompt_chars} characters"))

    model_name = opts.model or config.default_model
    spec = find_model(model_name)
    if spec is None or (spec.name not in config.allowed_models and model_name not in config.allowed_models):
        allowed = ", ".join(config.allowed_models)
        bad.append(
            FieldViolation("options.model", f"unknown or not allowed model {model_name!r}; use one of: {allowed}")
        )
        spec = None

    width, height = opts.width, opts.height
    for name, value in (("width", width), ("height", height)):
        if value and not MIN_SIDE <= value <= MAX_SIDE:
            bad.append(FieldViolation(f"options.{name}", f"must be between {MIN_SIDE} and {MAX_SIDE} pixels"))
    if bool(width) != bool(height):
        missing = "height" if width else "width"
        bad.append(FieldViolation(f"options.{missing}", "width and height must be given together"))

    if len(opts.request_id) > MAX_REQUEST_ID_CHARS or not opts.request_id.isprintable():
        bad.append(FieldViolation("options.request_id", f"must be printable and at most {MAX_REQUEST_ID_CHARS} chars"))

    aspect_ratio, image_size = "", ""
    if spec is not None:
        if opts.aspect_ratio and opts.aspect_ratio not in spec.aspect_ratios:
            bad.append(
                FieldViolation(
                    "options.aspect_ratio",
                    f"{opts.aspect_ratio!r} is not supported by {spec.name}; use one of: "
                    + ", ".join(spec.aspect_ratios),
                )
            )
        if opts.image_size and opts.image_size not in spec.image_sizes:
            supported = ", ".join(spec.image_sizes) if spec.image_sizes else "none (leave it empty)"
            bad.append(
                FieldViolation(
                    "options.image_size",
                    f"{opts.image_size!r} is not supported by {spec.name}; supported: {supported}",
                )
            )
        derived_ratio, derived_size = ("", "")
        if width and height and MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE:
            derived_ratio, derived_size = spec.nearest(width, height)
        has_reference = bool(request.input_images) or bool(history)
        # Without a size or a reference image Gemini draws 1:1; with a reference
        # and no size it keeps the reference's shape, so we leave it unset.
        aspect_ratio = opts.aspect_ratio or derived_ratio or ("" if has_reference else "1:1")
        image_size = opts.image_size or derived_size or spec.default_image_size

    max_images = spec.max_input_images if spec is not None else 14
    if len(request.input_images) > max_images:
        bad.append(FieldViolation("input_images", f"at most {max_images} images per request"))
    images = [_check_image(img, f"input_images[{i}]", config, bad) for i, img in enumerate(request.input_images)]

    contents: list[Content] = []
    if history is not None:
        contents = _check_history(history, spec, config, bad)

    if bad:
        raise errors.invalid_request(bad, {"requestId": opts.request_id})
    assert spec is not None  # a None spec always added a violation

    user_parts = [Part(text=prompt)] + [Part(image=img) for img in images if img is not None]
    contents.append(Content(role="user", parts=tuple(user_parts)))
    seed = opts.seed if opts.HasField("seed") else (rng or random.SystemRandom()).randrange(SEED_RANGE)
    upstream = UpstreamRequest(
        model=spec.name,
        contents=tuple(contents),
        seed=seed,
        aspect_ratio=aspect_ratio or None,
        image_size=image_size or None,
        system_instruction=DEFAULT_CONSTRAINT if config.strict_constraints else None,
    )
    return ValidatedRequest(
        upstream=upstream,
        spec=spec,
        seed=seed,
        aspect_ratio=aspect_ratio,
        image_size=image_size,
        request_id=opts.request_id,
        history_len=len(contents) - 1,
    )


def _check_image(
    image: image_pb2.Image, path: str, config: ServerConfig, bad: list[FieldViolation]
) -> InlineImage | None:
    if not image.data:
        hint = ""
        if path.startswith("history["):
            hint = " (a Generation.model_turn omits the final image's bytes: copy them from Generation.image.data)"
        bad.append(FieldViolation(f"{path}.data", "must not be empty" + hint))
        return None
    if len(image.data) > config.max_input_image_bytes:
        bad.append(FieldViolation(f"{path}.data", f"must be at most {config.max_input_image_bytes} bytes"))
        return None
    detected = sniff_mime_type(image.data)
    if detected not in SUPPORTED_INPUT_TYPES:
        kinds = ", ".join(sorted(SUPPORTED_INPUT_TYPES))
        bad.append(FieldViolation(f"{path}.data", f"not a supported image ({kinds})"))
        return None
    if image.mime_type and not same_type(image.mime_type, detected):
        bad.append(FieldViolation(f"{path}.mime_type", f"declared {image.mime_type!r} but the bytes are {detected}"))
        return None
    return InlineImage(data=image.data, mime_type=detected)


def _check_history(
    history: Sequence[image_pb2.Turn], spec: ModelSpec | None, config: ServerConfig, bad: list[FieldViolation]
) -> list[Content]:
    if not history:
        bad.append(FieldViolation("history", "Refine needs the conversation so far; use Generate to start one"))
        return []
    if len(history) > config.max_history_turns:
        bad.append(FieldViolation("history", f"at most {config.max_history_turns} turns"))
        return []
    contents: list[Content] = []
    previous_role = ""
    saw_model_turn = False
    for i, turn in enumerate(history):
        role = {image_pb2.ROLE_USER: "user", image_pb2.ROLE_MODEL: "model"}.get(turn.role)
        if role is None:
            bad.append(FieldViolation(f"history[{i}].role", "must be ROLE_USER or ROLE_MODEL"))
            continue
        if i == 0 and role != "user":
            bad.append(FieldViolation(f"history[{i}].role", "the conversation must start with a user turn"))
        if role == "model" and previous_role == "model":
            bad.append(FieldViolation(f"history[{i}].role", "two model turns in a row; a user turn must separate them"))
        previous_role = role
        saw_model_turn = saw_model_turn or role == "model"
        if not turn.parts:
            bad.append(FieldViolation(f"history[{i}].parts", "a turn needs at least one part"))
        parts: list[Part] = []
        for j, part in enumerate(turn.parts):
            path = f"history[{i}].parts[{j}]"
            which = part.WhichOneof("data")
            signature = part.thought_signature or None
            if which == "text":
                parts.append(Part(text=part.text, thought=part.thought, thought_signature=signature))
            elif which == "image":
                image = _check_image(part.image, f"{path}.image", config, bad)
                if (
                    role == "model"
                    and not part.thought
                    and not part.thought_signature
                    and spec is not None
                    and spec.requires_thought_signatures
                ):
                    bad.append(
                        FieldViolation(
                            f"{path}.thought_signature",
                            f"{spec.name} requires the thought signature returned with this image; "
                            "pass Generation.model_turn back unchanged",
                        )
                    )
                if image is not None:
                    parts.append(Part(image=image, thought=part.thought, thought_signature=signature))
            else:
                bad.append(FieldViolation(path, "a part needs text or an image"))
        contents.append(Content(role=role, parts=tuple(parts)))  # type: ignore[arg-type]
    if not saw_model_turn:
        bad.append(FieldViolation("history", "must contain at least one model turn (the image to refine)"))
    return contents
