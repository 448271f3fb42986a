"""Check every request field before anything goes upstream.

Turns a Generate/Refine request message into a :class:`ValidatedRequest` (the
caller's values, checked and typed), or raises INVALID_ARGUMENT with one
BadRequest field violation per bad field, named by its proto path. Every field
is checked before raising, so the caller learns all its mistakes at once.

Nothing here decides what Gemini is asked (defaults, seed, system instruction):
that is :mod:`imagegen_server.translation`.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from imagegen.v1 import image_pb2
from imagegen.v1.image_generation_service_pb2 import GenerationOptions
from imagegen_server import errors
from imagegen_server.config import ServerConfig
from imagegen_server.errors import FieldViolation
from imagegen_server.gemini.types import Content, InlineImage, Part, Role
from imagegen_server.imagetypes import SUPPORTED_INPUT_TYPES, same_type, sniff_mime_type, verify_image
from imagegen_server.models import ModelSpec, find_model
from imagegen_server.quoting import shown

MIN_SIDE, MAX_SIDE = 64, 8192
MAX_REQUEST_ID_CHARS = 128
#: Input images larger than this are refused from their header, before any decoding (Gemini's own
#: inputs are far smaller; a bigger header is a decompression bomb or a mistake).
MAX_INPUT_PIXELS = 50_000_000
#: The input image limit applied when the model itself is invalid.
DEFAULT_MAX_INPUT_IMAGES = 14

_ROLES: Final[Mapping[image_pb2.Role.ValueType, Role]] = {image_pb2.ROLE_USER: "user", image_pb2.ROLE_MODEL: "model"}


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
    """What the caller asked for, every field checked; no defaults applied yet."""

    prompt: str
    #: The requested (or default) model, known and allowed.
    spec: ModelSpec
    #: Requested output size in pixels, both within limits; both 0 when not given.
    width: int
    height: int
    #: As requested and supported by ``spec``; ``""`` when not given.
    aspect_ratio: str
    image_size: str
    #: The caller's seed; ``None`` when the server should pick one.
    seed: int | None
    request_id: str
    #: This turn's reference images, with their detected media types.
    input_images: tuple[InlineImage, ...]
    #: Refine's conversation so far (signatures kept byte for byte); empty for Generate.
    history: tuple[Content, ...]
    #: False when the caller set ``disable_model_fallback``.
    fallback_allowed: bool = True

    @property
    def history_len(self) -> int:
        """Turns before the new user turn (maps Gemini content positions back to ``history[i]``)."""
        return len(self.history)


def validate(
    request: GenerationMessage,
    config: ServerConfig,
    *,
    history: Sequence[image_pb2.Turn] | None = None,
) -> ValidatedRequest:
    """Check a request; ``history`` is given for Refine (required there)."""
    bad: list[FieldViolation] = []
    opts = request.options
    prompt = _check_prompt(request.prompt, config, bad)
    spec = _check_model(opts.model or config.default_model, config, bad)
    width, height = _check_pixel_size(opts.width, opts.height, bad)
    request_id = _check_request_id(opts.request_id, bad)
    aspect_ratio = _check_aspect_ratio(opts.aspect_ratio, spec, bad)
    image_size = _check_image_size(opts.image_size, spec, bad)
    images = _check_input_images(request.input_images, spec, config, bad)
    turns = _check_history(history, spec, config, bad) if history is not None else ()
    if bad:
        raise errors.invalid_request(bad, {"requestId": opts.request_id})
    assert spec is not None  # a None spec always added a violation
    return ValidatedRequest(
        prompt=prompt,
        spec=spec,
        width=width,
        height=height,
        aspect_ratio=aspect_ratio,
        image_size=image_size,
        seed=opts.seed if opts.HasField("seed") else None,
        request_id=request_id,
        input_images=images,
        history=turns,
        fallback_allowed=not opts.disable_model_fallback,
    )


#: Letters and symbols that draw nothing (the Hangul fillers, the braille blank).
_BLANK_CHARACTERS = frozenset("\u115f\u1160\u3164\uffa0\u2800")


def _visible(char: str) -> bool:
    """Whether ``char`` draws something: not a space, control, format character (U+200B...),
    lone combining mark or blank letter."""
    return (
        char.isprintable()
        and not char.isspace()
        and not unicodedata.category(char).startswith("M")
        and char not in _BLANK_CHARACTERS
    )


def _check_prompt(prompt: str, config: ServerConfig, bad: list[FieldViolation]) -> str:
    if not prompt.strip():
        bad.append(FieldViolation("prompt", "must not be empty"))
    elif len(prompt) > config.max_prompt_chars:
        bad.append(FieldViolation("prompt", f"must be at most {config.max_prompt_chars} characters"))
    elif not any(_visible(char) for char in prompt):
        bad.append(
            FieldViolation("prompt", "has no visible character (only spaces, zero-width or other invisible characters)")
        )
    return prompt


def _check_model(name: str, config: ServerConfig, bad: list[FieldViolation]) -> ModelSpec | None:
    spec = find_model(name)
    # Either the canonical name or the alias the caller used may be on the allow list.
    if spec is not None and (spec.name in config.allowed_models or name in config.allowed_models):
        return spec
    allowed = ", ".join(config.allowed_models)
    bad.append(FieldViolation("options.model", f"unknown or not allowed model {shown(name)}; use one of: {allowed}"))
    return None


def _check_pixel_size(width: int, height: int, bad: list[FieldViolation]) -> tuple[int, int]:
    for name, value in (("width", width), ("height", height)):
        if value and not MIN_SIDE <= value <= MAX_SIDE:
            bad.append(FieldViolation(f"options.{name}", f"must be between {MIN_SIDE} and {MAX_SIDE} pixels"))
    if bool(width) != bool(height):
        missing = "height" if width else "width"
        bad.append(FieldViolation(f"options.{missing}", "width and height must be given together"))
    return width, height


def _check_request_id(request_id: str, bad: list[FieldViolation]) -> str:
    if len(request_id) > MAX_REQUEST_ID_CHARS or not request_id.isprintable():
        bad.append(FieldViolation("options.request_id", f"must be printable and at most {MAX_REQUEST_ID_CHARS} chars"))
    return request_id


def _check_aspect_ratio(aspect_ratio: str, spec: ModelSpec | None, bad: list[FieldViolation]) -> str:
    # Without a valid model there is nothing to check against (the model is already reported).
    if spec is not None and aspect_ratio and aspect_ratio not in spec.aspect_ratios:
        supported = ", ".join(spec.aspect_ratios)
        bad.append(
            FieldViolation(
                "options.aspect_ratio",
                f"{shown(aspect_ratio)} is not supported by {spec.name}; use one of: {supported}",
            )
        )
    return aspect_ratio


def _check_image_size(image_size: str, spec: ModelSpec | None, bad: list[FieldViolation]) -> str:
    if spec is not None and image_size and image_size not in spec.image_sizes:
        supported = ", ".join(spec.image_sizes) if spec.image_sizes else "none (leave it empty)"
        bad.append(
            FieldViolation(
                "options.image_size", f"{shown(image_size)} is not supported by {spec.name}; supported: {supported}"
            )
        )
    return image_size


def _check_input_images(
    images: Sequence[image_pb2.Image], spec: ModelSpec | None, config: ServerConfig, bad: list[FieldViolation]
) -> tuple[InlineImage, ...]:
    max_images = spec.max_input_images if spec is not None else DEFAULT_MAX_INPUT_IMAGES
    if len(images) > max_images:
        bad.append(FieldViolation("input_images", f"at most {max_images} images per request"))
    checked = (_check_image(image, f"input_images[{i}]", config, bad) for i, image in enumerate(images))
    return tuple(image for image in checked if image is not None)


def _check_image(
    image: image_pb2.Image, path: str, config: ServerConfig, bad: list[FieldViolation]
) -> InlineImage | None:
    if not image.data:
        hint = ""
        if path.startswith("history["):
            hint = (
                " (Generation.model_turn sends the final image's part without its bytes: pass that Generation.image"
                " in history_images[Generation.generation_id], or its bytes here)"
            )
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
        bad.append(
            FieldViolation(f"{path}.mime_type", f"declared {shown(image.mime_type)} but the bytes are {detected}")
        )
        return None
    try:
        verify_image(image.data, detected, max_pixels=MAX_INPUT_PIXELS)
    except ValueError as exc:
        bad.append(FieldViolation(f"{path}.data", str(exc)))
        return None
    return InlineImage(data=image.data, mime_type=detected)


def _check_history(
    history: Sequence[image_pb2.Turn], spec: ModelSpec | None, config: ServerConfig, bad: list[FieldViolation]
) -> tuple[Content, ...]:
    if not history:
        bad.append(FieldViolation("history", "Refine needs the conversation so far; use Generate to start one"))
        return ()
    if len(history) > config.max_history_turns:
        bad.append(FieldViolation("history", f"at most {config.max_history_turns} turns"))
        return ()
    contents: list[Content] = []
    previous: Role | None = None
    for i, turn in enumerate(history):
        role = _check_role(turn.role, i, previous, bad)
        if role is None:
            continue
        previous = role
        contents.append(Content(role=role, parts=_check_parts(turn, i, role, spec, config, bad)))
    if not any(content.role == "model" for content in contents):
        bad.append(FieldViolation("history", "must contain at least one model turn (the image to refine)"))
    return tuple(contents)


def _check_role(
    value: image_pb2.Role.ValueType, i: int, previous: Role | None, bad: list[FieldViolation]
) -> Role | None:
    role = _ROLES.get(value)
    path = f"history[{i}].role"
    if role is None:
        bad.append(FieldViolation(path, "must be ROLE_USER or ROLE_MODEL"))
        return None
    if i == 0 and role != "user":
        bad.append(FieldViolation(path, "the conversation must start with a user turn"))
    if role == "model" and previous == "model":
        bad.append(FieldViolation(path, "two model turns in a row; a user turn must separate them"))
    return role


def _check_parts(
    turn: image_pb2.Turn,
    i: int,
    role: Role,
    spec: ModelSpec | None,
    config: ServerConfig,
    bad: list[FieldViolation],
) -> tuple[Part, ...]:
    if not turn.parts:
        bad.append(FieldViolation(f"history[{i}].parts", "a turn needs at least one part"))
    checked = (
        _check_part(part, f"history[{i}].parts[{j}]", role, spec, config, bad) for j, part in enumerate(turn.parts)
    )
    return tuple(part for part in checked if part is not None)


def _check_part(
    part: image_pb2.Part,
    path: str,
    role: Role,
    spec: ModelSpec | None,
    config: ServerConfig,
    bad: list[FieldViolation],
) -> Part | None:
    which = part.WhichOneof("data")
    signature = part.thought_signature or None
    if which == "text":
        return Part(text=part.text, thought=part.thought, thought_signature=signature)
    if which == "image":
        if not part.image.data and part.image_generation_id:
            # A model turn passed back as returned, without the image it refers to.
            key = shown(part.image_generation_id)
            bad.append(
                FieldViolation(
                    f"{path}.image.data",
                    f"empty: this part refers to the image of generation {key}; put that Generation.image "
                    f"in history_images[{key}] (or its bytes in this part's image.data)",
                )
            )
            image = None
        else:
            image = _check_image(part.image, f"{path}.image", config, bad)
        _check_signature(part, path, role, spec, bad)
        return None if image is None else Part(image=image, thought=part.thought, thought_signature=signature)
    bad.append(FieldViolation(path, "a part needs text or an image"))
    return None


def _check_signature(
    part: image_pb2.Part, path: str, role: Role, spec: ModelSpec | None, bad: list[FieldViolation]
) -> None:
    """A final (non-thought) model image must carry the signature its model requires."""
    if role != "model" or spec is None or not spec.requires_thought_signatures:
        return
    if not part.thought and not part.thought_signature:
        bad.append(
            FieldViolation(
                f"{path}.thought_signature",
                f"{spec.name} requires the thought signature returned with this image; "
                "pass Generation.model_turn back unchanged",
            )
        )
