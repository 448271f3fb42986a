"""What a step's outcome answers: an :class:`ApiError` or an :class:`Answer`.

HTTP faults are decided before the body is validated (a 429 does not care
what was asked); content outcomes need a validated :class:`GenerateCall`.
"""

from __future__ import annotations

import secrets
from dataclasses import replace

from ..models import ModelSpec
from . import errors
from .errors import ApiError
from .render import Renderer, RenderKey
from .responses import (
    IMAGE_OTHER_MESSAGE,
    IMAGE_SAFETY_MESSAGE,
    REFUSAL_TEXT,
    THOUGHT_TEXT,
    Answer,
    image_part,
    output_tokens,
    text_part,
    usage,
)
from .steps import Step
from .wire import GenerateCall

#: ``rate_limit`` without an argument: short enough for tests, long enough to notice.
DEFAULT_RETRY_DELAY = 1.0
#: ``quota_daily`` still sends a RetryInfo; a client that honours it waits this long.
DEFAULT_DAILY_RETRY_DELAY = 30.0
#: Thought tokens per draft image and for the always-on thinking of Gemini 3.
THOUGHT_TOKENS_BASE = 128
THOUGHT_TOKENS_PER_DRAFT = 280


def http_fault(step: Step, *, model: str, resource: str, version: str, method: str) -> ApiError:
    """The error answer for an HTTP-fault step (``step.is_http_fault``)."""
    arg = step.arg
    match step.outcome:
        case "rate_limit":
            return errors.rate_limited(model, float(arg) if arg else DEFAULT_RETRY_DELAY)
        case "rate_limit_bare":
            return errors.rate_limited_bare()
        case "rate_limit_help_only":
            return errors.rate_limited_help_only(model)
        case "quota_daily":
            return errors.quota_daily(model, float(arg) if arg else DEFAULT_DAILY_RETRY_DELAY)
        case "retry_after_header":
            return errors.rate_limited_bare({"Retry-After": arg})
        case "internal":
            return ApiError(500, "INTERNAL", errors.INTERNAL_MESSAGE)
        case "bad_gateway":
            if arg == "html":
                return ApiError(502, "UNAVAILABLE", "Bad Gateway", html=errors.GFE_502_HTML)
            return ApiError(502, "UNAVAILABLE", "Bad Gateway")
        case "overloaded":
            message = errors.HIGH_DEMAND_MESSAGE if arg == "demand" else errors.OVERLOADED_MESSAGE
            return ApiError(503, "UNAVAILABLE", message)
        case "timeout":
            return ApiError(504, "DEADLINE_EXCEEDED", errors.DEADLINE_MESSAGE)
        case "not_found":
            return errors.model_not_found(resource, version, method)
        case "unknown_field":
            return errors.unknown_fields("generation_config.image_config", ["outputMimeType"])
        case "invalid_argument":
            return ApiError(400, "INVALID_ARGUMENT", errors.INVALID_ARGUMENT_MESSAGE)
        case "failed_precondition":
            return ApiError(400, "FAILED_PRECONDITION", errors.FAILED_PRECONDITION_MESSAGE)
        case "bad_key":
            return errors.bad_key()
        case "no_key":
            return errors.no_key()
    raise AssertionError(f"not an HTTP fault: {step.outcome}")


def _resolve(call: GenerateCall, spec: ModelSpec) -> tuple[str, str, int, int]:
    ratio = call.aspect_ratio or "1:1"
    size = call.image_size or spec.default_image_size
    width, height = spec.pixel_size(ratio, size)
    return ratio, size, width, height


async def build_answer(
    step: Step,
    call: GenerateCall,
    *,
    spec: ModelSpec,
    model_version: str,
    renderer: Renderer,
) -> Answer:
    """The 200 answer for a content step, as stream chunks."""
    answer = Answer(model_version=model_version)
    thinks = spec.requires_thought_signatures
    if step.outcome == "prompt_blocked":
        prompt_tokens = call.text_tokens + call.image_tokens
        answer.add(
            promptFeedback={"blockReason": step.arg or "PROHIBITED_CONTENT"},
            usageMetadata={"promptTokenCount": prompt_tokens, "totalTokenCount": prompt_tokens},
        )
        return answer

    seed = call.seed if call.seed is not None else secrets.randbelow(2**31)
    ratio, size, width, height = _resolve(call, spec)
    key = RenderKey(
        model=spec.name,
        prompt=call.prompt,
        seed=seed,
        aspect_ratio=ratio,
        image_size=size if spec.image_sizes else "",
        width=width,
        height=height,
        image_digests=call.image_digests,
    )
    # Gemini 3 always thinks (and bills it), but thought parts, the summary
    # and any draft images, are sent only when the request sets
    # generationConfig.thinkingConfig.includeThoughts (gemini-api.md section 3).
    # Draft images appear only when a thoughts:N step asks for them, so plain
    # requests stay predictable for tests.
    drafts = step.thoughts or 0
    if call.include_thoughts:
        if thinks or drafts:
            answer.add([{"text": THOUGHT_TEXT, "thought": True}])
        for n in range(1, drafts + 1):
            draft = await renderer.render_encoded(replace(key, draft=n))
            answer.add([image_part(draft, thought=True)])
    thought_tokens = (THOUGHT_TOKENS_BASE if thinks else 0) + THOUGHT_TOKENS_PER_DRAFT * drafts

    if step.outcome in {"output_blocked", "no_image", "image_other"}:
        reason = {"no_image": "NO_IMAGE", "image_other": "IMAGE_OTHER"}.get(step.outcome) or (
            step.arg or "IMAGE_SAFETY"
        )
        message = {"NO_IMAGE": None, "IMAGE_OTHER": IMAGE_OTHER_MESSAGE}.get(reason, IMAGE_SAFETY_MESSAGE)
        answer.add(
            finishReason=reason,
            **({"finishMessage": message} if message else {}),
            usageMetadata=usage(call, thoughts_tokens=thought_tokens),
        )
        return answer

    if step.outcome == "text_only":
        answer.add(
            [text_part(REFUSAL_TEXT, signed=thinks)],
            finishReason="STOP",
            usageMetadata=usage(call, text_tokens=len(REFUSAL_TEXT) // 4, thoughts_tokens=thought_tokens),
        )
        return answer

    image = await renderer.render_encoded(key)
    text_tokens = 0
    if "TEXT" in call.modalities:
        text = f"Here is the image you asked for ({width}x{height}, seed {seed})."
        text_tokens = len(text) // 4
        answer.add([text_part(text, signed=thinks)])
    answer.add(
        [image_part(image, signed=thinks, corruption=step.corruption)],
        finishReason="STOP",
        usageMetadata=usage(
            call,
            image_tokens=output_tokens(spec, size),
            text_tokens=text_tokens,
            thoughts_tokens=thought_tokens,
        ),
    )
    return answer
