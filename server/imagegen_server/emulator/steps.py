"""The scenario step grammar: ``"latency:0.2+rate_limit:0.5"`` -> :class:`Step`.

A step is one or more ``+``-joined components, each ``name`` or ``name:arg``:
at most one *outcome* (``ok`` when none is given) plus any modifiers. Steps
are parsed when a scenario is registered, so a typo fails the test that wrote
it instead of silently answering ``ok``.

Outcomes answered with an HTTP error (Gemini's JSON envelope):

==========================  ==========================================================
``rate_limit[:S]``          429 with Help, QuotaFailure (per minute), RetryInfo ``S``
                            (default 1 s; fractional allowed, e.g. ``"0.2s"``)
``rate_limit_bare``         429 without details
``rate_limit_help_only``    429 with only a Help detail (no retry hint)
``quota_daily[:S]``         429, QuotaFailure ``GenerateRequestsPerDayPerProjectPerModel-FreeTier``
                            (still with a RetryInfo, default 30 s, as Gemini does)
``retry_after_header:S``    bare 429 plus a ``Retry-After: S`` header, as a proxy adds
``internal``                500 INTERNAL
``bad_gateway[:html]``      502 (JSON; ``:html`` sends a Google front end HTML page)
``overloaded[:demand]``     503 UNAVAILABLE, "model is overloaded" (or "high demand")
``timeout``                 504 DEADLINE_EXCEEDED
``not_found``               404 NOT_FOUND for the requested model
``unknown_field``           400 with a BadRequest (``outputMimeType`` unknown)
``invalid_argument``        400 "Request contains an invalid argument."
``failed_precondition``     400 FAILED_PRECONDITION (free tier / billing text)
``bad_key``                 400 ``API_KEY_INVALID`` with ErrorInfo + LocalizedMessage
``no_key``                  403 PERMISSION_DENIED
==========================  ==========================================================

Outcomes answered with HTTP 200:

==========================  ==========================================================
``ok``                      text (if TEXT was asked) + the signed final image
``prompt_blocked[:REASON]`` no candidates, ``promptFeedback.blockReason`` (PROHIBITED_CONTENT)
``output_blocked[:REASON]`` a candidate without content, ``finishReason`` (IMAGE_SAFETY)
``text_only``               ``finishReason: STOP`` with only a text refusal
``no_image``                ``finishReason: NO_IMAGE``
``image_other``             ``finishReason: IMAGE_OTHER``
==========================  ==========================================================

Modifiers:

==========================  ==========================================================
``latency:S``               wait S seconds before answering
``slow_body:S``             send headers and part of the body (all SSE events but the
                            last), then the rest after S seconds
``cut_body``                send part of the body, then close the connection
``reset_body``              send part of the body, then reset the connection (TCP RST)
``thoughts:N``              N ``thought: true`` draft images before the answer (SSE:
                            in earlier events); with ``ok`` or a no-image 200 outcome.
                            Like all thought parts they are sent only when the request
                            sets ``thinkingConfig.includeThoughts`` (still billed if not)
``bad_json``                the (last) JSON body or event is cut in half
``garbage``                 the whole body is random bytes (same status and content type)
``bad_base64``              the final image's ``data`` is not base64 (``ok`` only)
``not_image``               valid base64 of bytes that are not a PNG (``ok`` only)
``echo_key``                the API key received is written into every text of the answer
                            (error message and details, quota details, text parts,
                            ``modelVersion``, ``responseId``, ``finishMessage``): see ``echo.py``
==========================  ==========================================================
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

#: Outcomes answered with an HTTP error status, before any candidate is produced.
HTTP_FAULTS: frozenset[str] = frozenset(
    {
        "rate_limit",
        "rate_limit_bare",
        "rate_limit_help_only",
        "quota_daily",
        "retry_after_header",
        "internal",
        "bad_gateway",
        "overloaded",
        "timeout",
        "not_found",
        "unknown_field",
        "invalid_argument",
        "failed_precondition",
        "bad_key",
        "no_key",
    }
)

#: Outcomes answered with HTTP 200 and a candidate (or prompt feedback).
CONTENT_OUTCOMES: frozenset[str] = frozenset(
    {"ok", "prompt_blocked", "output_blocked", "text_only", "no_image", "image_other"}
)

#: Outcomes that may be preceded by thought (draft) images.
_THOUGHTFUL_OUTCOMES: frozenset[str] = frozenset({"ok", "output_blocked", "text_only", "no_image", "image_other"})

#: Body corruptions that need an image to corrupt.
_IMAGE_CORRUPTIONS: frozenset[str] = frozenset({"bad_base64", "not_image"})
_CORRUPTIONS: frozenset[str] = _IMAGE_CORRUPTIONS | {"bad_json", "garbage"}

_MODIFIERS: frozenset[str] = (
    frozenset({"latency", "slow_body", "cut_body", "reset_body", "thoughts", "echo_key"}) | _CORRUPTIONS
)

#: Whether each name takes an argument: "required", "optional" or "none".
_ARG_RULES: dict[str, str] = {
    **dict.fromkeys(HTTP_FAULTS | CONTENT_OUTCOMES | _MODIFIERS, "none"),
    "rate_limit": "optional",
    "quota_daily": "optional",
    "bad_gateway": "optional",
    "overloaded": "optional",
    "prompt_blocked": "optional",
    "output_blocked": "optional",
    "retry_after_header": "required",
    "latency": "required",
    "slow_body": "required",
    "thoughts": "required",
}

#: Draft images Gemini 3 sends at most is 2; allow a few more for stress tests.
MAX_THOUGHT_IMAGES = 8


@dataclass(frozen=True, slots=True)
class Step:
    """One parsed scenario step: what a single request is answered with."""

    #: The outcome name, e.g. ``"ok"`` or ``"rate_limit"``.
    outcome: str = "ok"
    #: The outcome's ``:arg``, or ``""``.
    arg: str = ""
    #: Seconds to wait before sending anything.
    latency: float = 0.0
    #: Seconds to pause in the middle of the body (``None``: no pause).
    slow_body: float | None = None
    #: Close the connection in the middle of the body.
    cut_body: bool = False
    #: Reset the connection (RST) in the middle of the body.
    reset_body: bool = False
    #: Number of ``thought: true`` draft images before the final answer
    #: (``None``: the default, which depends on ``includeThoughts``).
    thoughts: int | None = None
    #: ``"bad_json"``, ``"bad_base64"``, ``"not_image"`` or ``""``.
    corruption: str = ""
    #: Echo the API key received into every text of the answer (``echo_key``).
    echo_key: bool = False
    #: The original text, for stats and error messages.
    source: str = "ok"

    @property
    def is_http_fault(self) -> bool:
        """True when the answer is an HTTP error rather than a 200."""
        return self.outcome in HTTP_FAULTS


DEFAULT_STEP = Step()


def _seconds(name: str, arg: str) -> float:
    try:
        value = float(arg)
    except ValueError:
        raise ValueError(f"step {name!r} needs a number of seconds, got {arg!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"step {name!r} needs a non-negative number of seconds, got {arg!r}")
    return value


def parse_step(text: str) -> Step:
    """Parse one step string; raise :class:`ValueError` on anything unknown."""
    source = text.strip()
    if not source:
        raise ValueError("empty scenario step")
    step = Step(outcome="", source=source)
    seen: set[str] = set()
    for component in source.split("+"):
        name, sep, arg = component.strip().partition(":")
        rule = _ARG_RULES.get(name)
        if rule is None:
            raise ValueError(f"unknown scenario step {name!r} in {source!r}")
        if name in seen:
            raise ValueError(f"step {name!r} appears twice in {source!r}")
        seen.add(name)
        if rule == "none" and sep:
            raise ValueError(f"step {name!r} takes no argument in {source!r}")
        if rule == "required" and not arg:
            raise ValueError(f"step {name!r} needs an argument, as in {name}:VALUE")
        step = _add_component(step, name, arg)
    if not step.outcome:
        step = replace(step, outcome="ok")
    _check_combination(step)
    return step


def _add_component(step: Step, name: str, arg: str) -> Step:
    if name == "latency":
        return replace(step, latency=_seconds(name, arg))
    if name == "slow_body":
        return replace(step, slow_body=_seconds(name, arg))
    if name == "cut_body":
        return replace(step, cut_body=True)
    if name == "echo_key":
        return replace(step, echo_key=True)
    if name == "reset_body":
        return replace(step, reset_body=True)
    if name == "thoughts":
        if not arg.isdigit() or int(arg) > MAX_THOUGHT_IMAGES:
            raise ValueError(f"thoughts:N needs an integer 0..{MAX_THOUGHT_IMAGES}, got {arg!r}")
        return replace(step, thoughts=int(arg))
    if name in _CORRUPTIONS:
        if step.corruption:
            raise ValueError(f"only one of {sorted(_CORRUPTIONS)} per step")
        return replace(step, corruption=name)
    if step.outcome:
        raise ValueError(f"step {step.source!r} has two outcomes: {step.outcome!r} and {name!r}")
    if name in {"rate_limit", "quota_daily"} and arg:
        _seconds(name, arg)
    return replace(step, outcome=name, arg=arg)


def _check_combination(step: Step) -> None:
    if step.thoughts is not None and step.outcome not in _THOUGHTFUL_OUTCOMES:
        raise ValueError(f"thoughts:N cannot be combined with {step.outcome!r}")
    if step.corruption in _IMAGE_CORRUPTIONS and step.outcome != "ok":
        raise ValueError(f"{step.corruption} corrupts an image, so it needs the 'ok' outcome")
    if sum((step.cut_body, step.reset_body, step.slow_body is not None)) > 1:
        raise ValueError("only one of cut_body, reset_body and slow_body per step")


def parse_steps(steps: tuple[str, ...] | list[str]) -> tuple[Step, ...]:
    """Parse a scenario's step list; an empty list means ``("ok",)``."""
    if not steps:
        return (DEFAULT_STEP,)
    for step in steps:
        if not isinstance(step, str):
            raise ValueError(f"scenario steps must be strings, got {step!r}")
    return tuple(parse_step(step) for step in steps)
