"""Decide what Gemini is asked, given a checked request.

:mod:`imagegen_server.validation` says what the caller asked for; this module
turns it into the :class:`~imagegen_server.gemini.types.UpstreamRequest` the
retry loop sends: the output shape Gemini understands (aspect ratio and size
tier, with the server's defaults), a seed for every call (so each result can be
reproduced), the system instruction, and the conversation with the new user
turn last. Pure functions, no I/O; the seed's randomness is injected.
"""

from __future__ import annotations

import random

from imagegen_server.config import DEFAULT_CONSTRAINT, ServerConfig
from imagegen_server.gemini.types import Content, Part, UpstreamRequest
from imagegen_server.models import ModelSpec
from imagegen_server.validation import ValidatedRequest

#: Seeds are drawn from ``[0, SEED_RANGE)``: Gemini's seed is an int32.
SEED_RANGE = 2**31

#: Gemini's shape when there is neither a requested size nor a reference image.
DEFAULT_ASPECT_RATIO = "1:1"


def choose_seed(requested: int | None, rng: random.Random | None = None) -> int:
    """The caller's seed (0 included), or a fresh random one."""
    if requested is not None:
        return requested
    return (rng or random.SystemRandom()).randrange(SEED_RANGE)


def output_shape(validated: ValidatedRequest, spec: ModelSpec) -> tuple[str, str]:
    """The (aspect ratio, image size tier) to ask ``spec`` for; ``""`` leaves it to Gemini.

    An explicit ratio or tier wins; otherwise width x height is rounded to the
    model's nearest ratio and the smallest tier that covers it.
    """
    derived_ratio, derived_size = ("", "")
    if validated.width and validated.height:
        derived_ratio, derived_size = spec.nearest(validated.width, validated.height)
    has_reference = bool(validated.input_images) or bool(validated.history)
    # Without a size or a reference image Gemini draws 1:1; with a reference
    # and no size it keeps the reference's shape, so we leave it unset.
    aspect_ratio = validated.aspect_ratio or derived_ratio or ("" if has_reference else DEFAULT_ASPECT_RATIO)
    image_size = validated.image_size or derived_size or spec.default_image_size
    return aspect_ratio, image_size


def can_serve(spec: ModelSpec, validated: ValidatedRequest) -> bool:
    """Whether ``spec`` can answer ``validated`` as asked (for a fallback model).

    The explicit ratio and size tier must be ones it supports, the reference
    images within its limit; a conversation (Refine history) stays with its
    model, whose thought signatures it carries.
    """
    if validated.history:
        return False
    if validated.aspect_ratio and validated.aspect_ratio not in spec.aspect_ratios:
        return False
    if validated.image_size and validated.image_size not in spec.image_sizes:
        return False
    return len(validated.input_images) <= spec.max_input_images


def to_upstream(
    validated: ValidatedRequest,
    config: ServerConfig,
    *,
    seed: int,
    previews: bool = False,
    spec: ModelSpec | None = None,
) -> UpstreamRequest:
    """The Gemini request for ``validated``, sent to ``spec`` (default: the requested model).

    ``previews`` asks for thought images too, so drafts can be streamed.
    """
    spec = spec or validated.spec
    aspect_ratio, image_size = output_shape(validated, spec)
    user_turn = Content(
        role="user",
        parts=(Part(text=validated.prompt), *(Part(image=image) for image in validated.input_images)),
    )
    return UpstreamRequest(
        model=spec.name,
        contents=(*validated.history, user_turn),
        seed=seed,
        aspect_ratio=aspect_ratio or None,
        image_size=image_size or None,
        system_instruction=DEFAULT_CONSTRAINT if config.strict_constraints else None,
        include_thoughts=previews,
    )
