"""The upstream half of the system, table-driven, with real parts only.

Every row scripts the real :class:`~imagegen_server.emulator.Emulator` (on a
loopback port) with a scenario, then runs the real
:class:`~imagegen_server.gemini.client.GeminiClient` over real HTTP inside the
real :func:`~imagegen_server.retry.call_with_retries` loop, on the real
monotonic clock, with a shortened :class:`~imagegen_server.retry.RetryPolicy`
and a fresh :class:`~imagegen_server.retry.RetryBudget`. Each row states:

* the steps the emulator follows (request n gets step n, the last repeats);
* the classification of every failed attempt, as the retry observer saw it,
  and the key fields of the first one (retry_after, block side, per-day quota,
  signature positions...);
* how the call ended: success (with facts about the image) or the loop's
  stop reason and the retry delay it hands to the caller;
* how many attempts reached the emulator (``scenario.stats.received``);
* the waits the loop made (recorded by a clock that really sleeps: exactly the
  delays it decided), a lower bound on the wall-clock time those waits and the
  row's latency steps take, and a generous upper bound that only catches a hang.

Faults that must not be retried are followed by an ``ok`` step, so a wrongly
retried fault would show up as a second attempt and a success.
"""

from __future__ import annotations

import io
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from PIL import Image

from imagegen_server.emulator import SKIP_SENTINEL, Emulator, image_signature, parse_step, text_signature
from imagegen_server.emulator.responses import REFUSAL_TEXT
from imagegen_server.emulator.steps import CONTENT_OUTCOMES, HTTP_FAULTS
from imagegen_server.gemini.client import GeminiClient
from imagegen_server.gemini.errors import ErrorKind, UpstreamError
from imagegen_server.gemini.types import Content, InlineImage, Part, UpstreamRequest, UpstreamResult
from imagegen_server.retry import (
    ATTEMPTS_EXHAUSTED,
    DEADLINE,
    MONOTONIC_CLOCK,
    NOT_RETRYABLE,
    RetryBudget,
    RetryDecision,
    RetryFailure,
    RetryPolicy,
    call_with_retries,
)

K = ErrorKind

MODEL = "gemini-3.1-flash-image"
OLD_MODEL = "gemini-2.5-flash-image"
ASPECT = "16:9"
#: Gemini's pixel sizes for 16:9 (3.1 Flash Image at 1K, and 2.5 Flash Image).
SIZE_3 = (1376, 768)
SIZE_25 = (1344, 768)

#: Short enough that retried rows take milliseconds; upstream delays up to 2 s are honoured.
#: The attempt timeout is long: only rows that override it may end an attempt by timing out.
POLICY = RetryPolicy(
    max_attempts=3,
    initial_backoff=0.01,
    max_backoff=0.05,
    max_upstream_delay=2.0,
    attempt_timeout=20.0,
)
#: A per-attempt timeout for the rows whose slow step must time out.
SHORT_ATTEMPT = 0.3

#: Upper bound for rows that wait for nothing: no retry delay, no latency step. Such a row takes
#: milliseconds (under a second on a loaded machine); the bound is only a hang guard, an order of
#: magnitude below the waits a bug would cause (the 20 s attempt timeout, 5 s and 30 s RetryInfo).
#: The waits themselves are checked exactly, through the recording clock.
QUICK = 3.0
#: Slack added on top of a deliberate wait (latency, RetryInfo, attempt timeout): a hang guard too.
SLACK = 3.0

#: Kinds whose failed retries count against the retry budget (the retryable ones).
BUDGET_KINDS = frozenset({K.RATE_LIMITED, K.UNAVAILABLE, K.DEADLINE_EXCEEDED, K.MALFORMED, K.NO_IMAGE})

PER_MINUTE_QUOTA = "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"
PER_DAY_QUOTA = "GenerateRequestsPerDayPerProjectPerModel-FreeTier"
UNKNOWN_MODEL = "gemini-9-imaginary-image"
WRONG_KEY = "AIzaSy-this-key-is-wrong-000000000000000"


@dataclass(frozen=True)
class Row:
    """One scenario and everything it must produce."""

    id: str
    steps: tuple[str, ...]
    #: Attempts that reached the emulator (and that the loop made).
    attempts: int
    #: Kind of each failed attempt, in order, as reported to the observer.
    failures: tuple[ErrorKind, ...] = ()
    #: ``None``: the call succeeds; else the loop's stop reason.
    stop: str | None = None
    #: ``RetryFailure.retry_delay``: exact, ``None``, or a ``(low, high)`` range.
    retry_delay: float | tuple[float, float] | None = None
    #: Facts about the first failure (see :func:`error_facts`); a subset is compared.
    error: Mapping[str, Any] = field(default_factory=dict)
    #: Facts about the result of a successful call (see :func:`result_facts`).
    result: Mapping[str, Any] = field(default_factory=dict)
    #: Bounds on the wall-clock time of the whole call, in seconds.
    min_s: float = 0.0
    max_s: float = QUICK
    model: str = MODEL
    version: str = "v1beta"
    #: Use ``streamGenerateContent?alt=sse`` (an ``on_draft`` callback).
    stream: bool = False
    #: Ask for thought parts (streams always do, for their previews).
    include_thoughts: bool = False
    #: Prior turns: "" (none), "unsigned" (image), "unsigned-text", "signed" or "sentinel" model turn.
    history: str = ""
    #: "emulator" (the right key), "wrong" or "none".
    key: str = "emulator"
    #: RetryPolicy overrides.
    policy: Mapping[str, Any] = field(default_factory=dict)
    #: Caller's deadline, seconds from the start of the call.
    deadline: float | None = None
    #: How the emulator must have counted its requests in the end.
    aborted: int = 0
    cut: int = 0
    #: Stream rows: drafts must reach on_draft while the emulator is still writing the response.
    drafts_first: bool = False


def ok_then(fault: str, kind: ErrorKind, *, id: str, **kw: Any) -> Row:
    """A retryable fault once, then success on the second attempt."""
    return Row(id=id, steps=(fault, "ok"), attempts=2, failures=(kind,), **kw)


def never_retried(fault: str, kind: ErrorKind, *, id: str, **kw: Any) -> Row:
    """A fault that must end the call at once (the ``ok`` after it must never be reached)."""
    return Row(id=id, steps=(fault, "ok"), attempts=1, failures=(kind,), stop=NOT_RETRYABLE, **kw)


def retried_once(fault: str, kind: ErrorKind, *, id: str, **kw: Any) -> Row:
    """A malformed / no-image answer every time: one retry, then give up."""
    return Row(id=id, steps=(fault,), attempts=2, failures=(kind, kind), stop=ATTEMPTS_EXHAUSTED, **kw)


def blocked_output(reason: str) -> Row:
    return never_retried(
        f"output_blocked:{reason}",
        K.CONTENT_BLOCKED,
        id=f"output-blocked-{reason}",
        error={"block_side": "output", "block_reason": reason, "finish_reason": reason, "http_status": None},
    )


SUCCESS_3 = {"size": SIZE_3, "mime_type": "image/png", "finish_reason": "STOP", "signed": True, "drafts": 0}

ROWS: list[Row] = [
    # --- success, both API versions, unary and SSE ---------------------------------------
    Row(id="ok-v1beta", steps=("ok",), attempts=1, result=SUCCESS_3),
    Row(id="ok-v1", steps=("ok",), attempts=1, version="v1", result=SUCCESS_3),
    Row(id="ok-sse-v1beta", steps=("ok",), attempts=1, stream=True, result=SUCCESS_3),
    Row(id="ok-sse-v1", steps=("ok",), attempts=1, stream=True, version="v1", result=SUCCESS_3),
    Row(
        id="ok-gemini-2.5-unsigned",
        steps=("ok",),
        attempts=1,
        model=OLD_MODEL,
        result={"size": SIZE_25, "signed": False, "finish_reason": "STOP"},
    ),
    # --- thought images before the final image ---------------------------------------------
    Row(
        id="thoughts-2-unary",
        steps=("thoughts:2",),
        attempts=1,
        include_thoughts=True,
        result={**SUCCESS_3, "drafts": 2},
    ),
    Row(id="thoughts-2-unary-hidden-without-includeThoughts", steps=("thoughts:2",), attempts=1, result=SUCCESS_3),
    Row(id="thoughts-2-sse-v1beta", steps=("thoughts:2",), attempts=1, stream=True, result={**SUCCESS_3, "drafts": 2}),
    Row(
        id="thoughts-2-sse-v1",
        steps=("thoughts:2",),
        attempts=1,
        stream=True,
        version="v1",
        result={**SUCCESS_3, "drafts": 2},
    ),
    # --- 429 variants ------------------------------------------------------------------------
    ok_then(
        "rate_limit:0.25",
        K.RATE_LIMITED,
        id="429-realistic-retryinfo-0.25s",
        min_s=0.25,
        max_s=0.25 + SLACK,
        error={
            "http_status": 429,
            "upstream_status": "RESOURCE_EXHAUSTED",
            "retry_after": 0.25,
            "quota_ids": (PER_MINUTE_QUOTA,),
            "per_day": (False,),
        },
    ),
    Row(
        id="429-realistic-every-time",
        steps=("rate_limit:0.1",),
        attempts=3,
        failures=(K.RATE_LIMITED,) * 3,
        stop=ATTEMPTS_EXHAUSTED,
        retry_delay=0.1,
        min_s=0.2,
        max_s=0.2 + SLACK,
        error={"retry_after": 0.1},
    ),
    Row(
        id="429-retryinfo-above-cap",
        steps=("rate_limit:5", "ok"),
        attempts=1,
        failures=(K.RATE_LIMITED,),
        stop=DEADLINE,
        retry_delay=5.0,
        error={"retry_after": 5.0},
    ),
    Row(
        id="429-retryinfo-past-deadline",
        steps=("rate_limit:1.5", "ok"),
        attempts=1,
        failures=(K.RATE_LIMITED,),
        stop=DEADLINE,
        retry_delay=1.5,
        deadline=0.8,
        error={"retry_after": 1.5},
    ),
    ok_then(
        "rate_limit_bare",
        K.RATE_LIMITED,
        id="429-bare",
        error={"http_status": 429, "retry_after": None, "quota_ids": ()},
    ),
    ok_then(
        "rate_limit_help_only",
        K.RATE_LIMITED,
        id="429-help-only",
        error={"http_status": 429, "retry_after": None, "quota_ids": ()},
    ),
    never_retried(
        "quota_daily",
        K.QUOTA_EXHAUSTED,
        id="429-per-day-quota",
        error={"http_status": 429, "retry_after": 30.0, "quota_ids": (PER_DAY_QUOTA,), "per_day": (True,)},
    ),
    ok_then(
        "retry_after_header:1",
        K.RATE_LIMITED,
        id="429-retry-after-header-seconds",
        min_s=1.0,
        max_s=1.0 + SLACK,
        error={"retry_after": 1.0, "quota_ids": ()},
    ),
    ok_then(
        "retry_after_header:Thu, 01 Jan 1970 00:00:00 GMT",
        K.RATE_LIMITED,
        id="429-retry-after-header-past-date",
        error={"retry_after": 0.0},
    ),
    Row(
        id="429-retry-after-header-far-date",
        steps=("retry_after_header:Fri, 01 Jan 2100 00:00:00 GMT", "ok"),
        attempts=1,
        failures=(K.RATE_LIMITED,),
        stop=DEADLINE,
        retry_delay=(2.0e9, 5.0e9),
        error={"retry_after": (2.0e9, 5.0e9)},
    ),
    # --- 5xx and transport -------------------------------------------------------------------
    ok_then("internal", K.UNAVAILABLE, id="500-internal", error={"http_status": 500, "upstream_status": "INTERNAL"}),
    ok_then("bad_gateway", K.UNAVAILABLE, id="502-json", error={"http_status": 502}),
    ok_then("bad_gateway:html", K.UNAVAILABLE, id="502-gfe-html", error={"http_status": 502, "upstream_status": ""}),
    ok_then(
        "overloaded",
        K.UNAVAILABLE,
        id="503-overloaded",
        error={"http_status": 503, "upstream_status": "UNAVAILABLE", "message_has": "overloaded"},
    ),
    ok_then(
        "overloaded:demand",
        K.UNAVAILABLE,
        id="503-high-demand",
        error={"http_status": 503, "message_has": "high demand"},
    ),
    ok_then(
        "timeout",
        K.DEADLINE_EXCEEDED,
        id="504-deadline",
        error={"http_status": 504, "upstream_status": "DEADLINE_EXCEEDED"},
    ),
    Row(
        id="503-every-time",
        steps=("overloaded",),
        attempts=3,
        failures=(K.UNAVAILABLE,) * 3,
        stop=ATTEMPTS_EXHAUSTED,
        retry_delay=None,
    ),
    Row(
        id="503-then-429-then-ok",
        steps=("overloaded", "rate_limit:0.1", "ok"),
        attempts=3,
        failures=(K.UNAVAILABLE, K.RATE_LIMITED),
        min_s=0.1,
        max_s=0.1 + SLACK,
        result=SUCCESS_3,
    ),
    ok_then("cut_body", K.UNAVAILABLE, id="cut-mid-body", cut=1, error={"http_status": None}),
    ok_then("cut_body", K.UNAVAILABLE, id="cut-mid-body-sse", stream=True, cut=1),
    ok_then("reset_body", K.UNAVAILABLE, id="reset-mid-body", cut=1, error={"http_status": None}),
    ok_then("reset_body", K.UNAVAILABLE, id="reset-mid-body-sse", stream=True, cut=1),
    Row(
        id="cut-mid-body-every-time",
        steps=("cut_body",),
        attempts=3,
        failures=(K.UNAVAILABLE,) * 3,
        stop=ATTEMPTS_EXHAUSTED,
        cut=3,
    ),
    # --- latency, slow bodies, per-attempt timeouts ------------------------------------------
    Row(id="latency-fixed-0.3s", steps=("latency:0.3",), attempts=1, min_s=0.3, max_s=0.3 + SLACK, result=SUCCESS_3),
    Row(
        id="latency-per-attempt-slow-then-fast",
        steps=("latency:1.5", "latency:0.05"),
        attempts=2,
        failures=(K.DEADLINE_EXCEEDED,),
        policy={"attempt_timeout": SHORT_ATTEMPT},
        min_s=SHORT_ATTEMPT + 0.05,
        max_s=SHORT_ATTEMPT + SLACK,
        aborted=1,
        error={"http_status": None},
        result=SUCCESS_3,
    ),
    Row(
        id="latency-clipped-by-deadline",
        steps=("latency:1.5", "ok"),
        attempts=1,
        failures=(K.DEADLINE_EXCEEDED,),
        stop=DEADLINE,
        retry_delay=(0.0, POLICY.initial_backoff),
        deadline=0.4,
        min_s=0.4,
        max_s=0.4 + SLACK,
        aborted=1,
    ),
    Row(id="slow-body-0.3s", steps=("slow_body:0.3",), attempts=1, min_s=0.3, max_s=0.3 + SLACK, result=SUCCESS_3),
    Row(
        id="slow-body-past-attempt-timeout",
        steps=("slow_body:1.5", "ok"),
        attempts=2,
        failures=(K.DEADLINE_EXCEEDED,),
        policy={"attempt_timeout": SHORT_ATTEMPT},
        min_s=SHORT_ATTEMPT,
        max_s=SHORT_ATTEMPT + SLACK,
        aborted=1,
        result=SUCCESS_3,
    ),
    Row(
        id="slow-body-sse-drafts-first",
        steps=("thoughts:2+slow_body:0.4",),
        attempts=1,
        stream=True,
        min_s=0.4,
        max_s=0.4 + SLACK,
        drafts_first=True,
        result={**SUCCESS_3, "drafts": 2},
    ),
    # --- malformed 200s: retried once --------------------------------------------------------
    ok_then("bad_json", K.MALFORMED, id="invalid-json", error={"message_has": "invalid JSON"}),
    retried_once("bad_json", K.MALFORMED, id="invalid-json-every-time"),
    ok_then("bad_json", K.MALFORMED, id="invalid-json-sse", stream=True),
    ok_then("garbage", K.MALFORMED, id="garbage-body"),
    ok_then("garbage", K.MALFORMED, id="garbage-body-sse", stream=True),
    ok_then("bad_base64", K.MALFORMED, id="invalid-base64", error={"message_has": "base64"}),
    retried_once("bad_base64", K.MALFORMED, id="invalid-base64-every-time"),
    ok_then("not_image", K.MALFORMED, id="not-an-image", error={"message_has": "final image"}),
    retried_once("not_image", K.MALFORMED, id="not-an-image-every-time"),
    # --- 200 without an image: retried once --------------------------------------------------
    ok_then(
        "text_only",
        K.NO_IMAGE,
        id="text-only-refusal",
        error={"finish_reason": "STOP", "model_text": REFUSAL_TEXT, "block_side": ""},
    ),
    retried_once("text_only", K.NO_IMAGE, id="text-only-refusal-every-time", error={"model_text": REFUSAL_TEXT}),
    ok_then("no_image", K.NO_IMAGE, id="no-image", error={"finish_reason": "NO_IMAGE", "model_text": ""}),
    retried_once("no_image", K.NO_IMAGE, id="no-image-every-time", error={"finish_reason": "NO_IMAGE"}),
    ok_then("image_other", K.NO_IMAGE, id="image-other", error={"finish_reason": "IMAGE_OTHER"}),
    retried_once("image_other", K.NO_IMAGE, id="image-other-every-time", error={"finish_reason": "IMAGE_OTHER"}),
    ok_then(
        "no_image+thoughts:1",
        K.NO_IMAGE,
        id="no-image-after-a-draft-sse",
        stream=True,
        error={"finish_reason": "NO_IMAGE"},
        result=SUCCESS_3,
    ),
    # --- content blocks: never retried -------------------------------------------------------
    never_retried(
        "prompt_blocked",
        K.CONTENT_BLOCKED,
        id="prompt-blocked",
        error={"block_side": "prompt", "block_reason": "PROHIBITED_CONTENT", "http_status": None},
    ),
    never_retried(
        "prompt_blocked:SAFETY",
        K.CONTENT_BLOCKED,
        id="prompt-blocked-SAFETY",
        error={"block_side": "prompt", "block_reason": "SAFETY"},
    ),
    never_retried(
        "prompt_blocked:OTHER",
        K.CONTENT_BLOCKED,
        id="prompt-blocked-OTHER-sse",
        stream=True,
        error={"block_side": "prompt", "block_reason": "OTHER"},
    ),
    never_retried(
        "output_blocked",
        K.CONTENT_BLOCKED,
        id="output-blocked-default",
        error={"block_side": "output", "block_reason": "IMAGE_SAFETY"},
    ),
    *(
        blocked_output(reason)
        for reason in (
            "SAFETY",
            "IMAGE_SAFETY",
            "PROHIBITED_CONTENT",
            "IMAGE_PROHIBITED_CONTENT",
            "BLOCKLIST",
            "SPII",
            "RECITATION",
            "IMAGE_RECITATION",
        )
    ),
    never_retried(
        "output_blocked:IMAGE_SAFETY+thoughts:1",
        K.CONTENT_BLOCKED,
        id="output-blocked-after-a-draft-sse",
        stream=True,
        error={"block_side": "output", "block_reason": "IMAGE_SAFETY"},
    ),
    # --- request errors, auth, not found: never retried --------------------------------------
    never_retried(
        "unknown_field",
        K.INVALID_ARGUMENT,
        id="400-unknown-field-badrequest",
        error={
            "http_status": 400,
            "upstream_status": "INVALID_ARGUMENT",
            "field_violations": ("generation_config.image_config",),
            "message_has": "outputMimeType",
        },
    ),
    never_retried(
        "invalid_argument",
        K.INVALID_ARGUMENT,
        id="400-invalid-argument",
        error={"http_status": 400, "field_violations": (), "upstream_reason": ""},
    ),
    never_retried(
        "failed_precondition",
        K.FAILED_PRECONDITION,
        id="400-failed-precondition",
        error={"http_status": 400, "upstream_status": "FAILED_PRECONDITION"},
    ),
    never_retried(
        "bad_key",
        K.AUTH,
        id="400-bad-key-step",
        error={"http_status": 400, "upstream_reason": "API_KEY_INVALID"},
    ),
    never_retried(
        "no_key",
        K.AUTH,
        id="403-missing-key-step",
        error={"http_status": 403, "upstream_status": "PERMISSION_DENIED"},
    ),
    Row(
        id="400-wrong-key-sent",
        steps=("ok",),
        attempts=1,
        failures=(K.AUTH,),
        stop=NOT_RETRYABLE,
        key="wrong",
        error={"http_status": 400, "upstream_reason": "API_KEY_INVALID", "message_lacks": WRONG_KEY},
    ),
    Row(
        id="403-no-key-sent",
        steps=("ok",),
        attempts=1,
        failures=(K.AUTH,),
        stop=NOT_RETRYABLE,
        key="none",
        error={"http_status": 403, "upstream_status": "PERMISSION_DENIED"},
    ),
    never_retried(
        "not_found",
        K.NOT_FOUND,
        id="404-not-found-step",
        error={"http_status": 404, "upstream_status": "NOT_FOUND", "message_has": MODEL},
    ),
    Row(
        id="404-unknown-model-sent",
        steps=("ok",),
        attempts=1,
        failures=(K.NOT_FOUND,),
        stop=NOT_RETRYABLE,
        model=UNKNOWN_MODEL,
        error={"http_status": 404, "message_has": UNKNOWN_MODEL},
    ),
    # --- thought signatures in the history ---------------------------------------------------
    Row(
        id="400-missing-thought-signature-gemini-3",
        steps=("ok",),
        attempts=1,
        failures=(K.MISSING_THOUGHT_SIGNATURE,),
        stop=NOT_RETRYABLE,
        history="unsigned",
        # Gemini says "content position 2, part position 2"; the client keeps 0-based indices.
        error={"http_status": 400, "signature_position": (1, 1)},
    ),
    Row(
        id="400-missing-thought-signature-gemini-3-sse",
        steps=("ok",),
        attempts=1,
        failures=(K.MISSING_THOUGHT_SIGNATURE,),
        stop=NOT_RETRYABLE,
        history="unsigned",
        stream=True,
        error={"http_status": 400, "signature_position": (1, 1)},
    ),
    Row(
        id="400-missing-text-thought-signature-gemini-3",
        steps=("ok",),
        attempts=1,
        failures=(K.MISSING_THOUGHT_SIGNATURE,),
        stop=NOT_RETRYABLE,
        history="unsigned-text",
        # "Text part is missing a thought_signature in content position 2, part position 1".
        error={"http_status": 400, "signature_position": (1, 0)},
    ),
    Row(id="signed-history-gemini-3", steps=("ok",), attempts=1, history="signed", result=SUCCESS_3),
    Row(id="skip-sentinel-history-gemini-3", steps=("ok",), attempts=1, history="sentinel", result=SUCCESS_3),
    Row(
        id="unsigned-history-gemini-2.5",
        steps=("ok",),
        attempts=1,
        history="unsigned",
        model=OLD_MODEL,
        result={"size": SIZE_25, "signed": False},
    ),
]


# --- helpers -------------------------------------------------------------------------------


class Recorder:
    """A RetryObserver that keeps every call it gets."""

    def __init__(self) -> None:
        self.started: list[tuple[int, int]] = []
        self.failed: list[tuple[int, UpstreamError, RetryDecision]] = []

    def attempt_started(self, attempt: int, max_attempts: int) -> None:
        self.started.append((attempt, max_attempts))

    def attempt_failed(self, attempt: int, error: UpstreamError, decision: RetryDecision) -> None:
        self.failed.append((attempt, error, decision))


class RecordingClock:
    """The real monotonic clock (it really sleeps), keeping every wait the loop asks for."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []

    def now(self) -> float:
        return MONOTONIC_CLOCK.now()

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await MONOTONIC_CLOCK.sleep(seconds)


def _png(size: tuple[int, int] = (16, 9)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 40, 40)).save(buf, "PNG")
    return buf.getvalue()


HISTORY_IMAGE = _png()


def build_request(row: Row, marker: str) -> UpstreamRequest:
    """A prompt carrying the scenario's marker, after the row's history (if any)."""
    prompt = Content("user", (Part(text=f"{marker} a lighthouse at dusk"),))
    if not row.history:
        return UpstreamRequest(
            model=row.model,
            contents=(prompt,),
            aspect_ratio=ASPECT,
            include_thoughts=row.stream or row.include_thoughts,
        )
    model_text = "Here is your lighthouse."
    # Gemini 3 signs the first text of a model turn as well as the image.
    signature, text_sig = {
        "unsigned": (None, text_signature(model_text)),
        "unsigned-text": (image_signature(HISTORY_IMAGE), None),
        "signed": (image_signature(HISTORY_IMAGE), text_signature(model_text)),
        "sentinel": (SKIP_SENTINEL.encode(), SKIP_SENTINEL.encode()),
    }[row.history]
    history = (
        Content("user", (Part(text="a lighthouse"),)),
        Content(
            "model",
            (
                Part(text=model_text, thought_signature=text_sig),
                Part(image=InlineImage(HISTORY_IMAGE, "image/png"), thought_signature=signature),
            ),
        ),
    )
    refine = Content("user", (Part(text=f"{marker} now at dusk"),))
    return UpstreamRequest(model=row.model, contents=(*history, refine), aspect_ratio=ASPECT)


def error_facts(error: UpstreamError) -> dict[str, Any]:
    """The fields of an UpstreamError a row can state, flattened."""
    return {
        "http_status": error.http_status,
        "upstream_status": error.upstream_status,
        "upstream_reason": error.upstream_reason,
        "retry_after": error.retry_after,
        "quota_ids": tuple(v.quota_id for v in error.quota_violations),
        "per_day": tuple(v.per_day for v in error.quota_violations),
        "field_violations": tuple(v.field for v in error.field_violations),
        "block_side": error.block_side,
        "block_reason": error.block_reason,
        "finish_reason": error.finish_reason,
        "model_text": error.model_text,
        "signature_position": (error.signature_content_index, error.signature_part_index),
    }


def result_facts(result: UpstreamResult) -> dict[str, Any]:
    """The fields of an UpstreamResult a row can state, flattened."""
    return {
        "size": (result.width, result.height),
        "mime_type": result.image.mime_type,
        "finish_reason": result.finish_reason,
        # The emulator signs a final image with a digest of its bytes.
        "signed": result.thought_signature == image_signature(result.image.data),
        "drafts": len(result.drafts),
    }


def assert_matches(actual: Any, expected: Any, what: str) -> None:
    if isinstance(expected, tuple) and len(expected) == 2 and all(isinstance(x, float) for x in expected):
        low, high = expected
        assert actual is not None, f"{what}: expected within [{low}, {high}], got None"
        assert low <= actual <= high, f"{what}: expected within [{low}, {high}], got {actual}"
    elif isinstance(expected, float):
        assert actual == pytest.approx(expected, abs=1e-6), f"{what}: expected {expected}, got {actual}"
    else:
        assert actual == expected, f"{what}: expected {expected!r}, got {actual!r}"


def assert_facts(facts: Mapping[str, Any], message: str, expected: Mapping[str, Any]) -> None:
    for name, want in expected.items():
        if name == "message_has":
            assert want in message, f"message should mention {want!r}: {message!r}"
        elif name == "message_lacks":
            assert want not in message, f"message must not contain {want!r}: {message!r}"
        else:
            assert_matches(facts[name], want, name)


# --- the table -----------------------------------------------------------------------------


def test_every_step_of_the_vocabulary_has_a_row() -> None:
    """The table keeps up with the emulator's step vocabulary: every outcome and modifier is used."""
    steps = [parse_step(text) for row in ROWS for text in row.steps]
    assert (HTTP_FAULTS | CONTENT_OUTCOMES) - {s.outcome for s in steps} == set()
    assert {"bad_json", "bad_base64", "not_image", "garbage"} - {s.corruption for s in steps} == set()
    assert any(s.latency for s in steps)
    assert any(s.slow_body for s in steps)
    assert any(s.cut_body for s in steps)
    assert any(s.reset_body for s in steps)
    assert any(s.thoughts for s in steps)
    assert len({row.id for row in ROWS}) == len(ROWS), "row ids must be unique"


@pytest.mark.parametrize("row", [pytest.param(row, id=row.id) for row in ROWS])
async def test_scenario(emulator: Emulator, row: Row) -> None:
    scenario = emulator.scenario(*row.steps)
    policy = replace(POLICY, **row.policy)
    budget = RetryBudget()
    observer = Recorder()
    request = build_request(row, scenario.marker)
    key = {"emulator": emulator.api_key, "wrong": WRONG_KEY, "none": None}[row.key]
    drafts: list[tuple[float, InlineImage]] = []

    def on_draft(image: InlineImage) -> None:
        # Whether the emulator had finished the response when this draft arrived.
        drafts.append((scenario.stats.in_flight == 0, image))

    async with GeminiClient(emulator.base_url, key, api_version=row.version) as client:

        async def attempt(timeout: float | None) -> UpstreamResult:
            return await client.generate(request, timeout=timeout, on_draft=on_draft if row.stream else None)

        clock = RecordingClock()
        started = time.monotonic()
        deadline = None if row.deadline is None else clock.now() + row.deadline
        outcome: UpstreamResult | RetryFailure
        try:
            done = await call_with_retries(
                attempt, policy=policy, budget=budget, deadline=deadline, observer=observer, clock=clock
            )
        except RetryFailure as failure:
            outcome = failure
            attempts = failure.attempts
        else:
            outcome = done.value
            attempts = done.attempts
        elapsed = time.monotonic() - started

    # How it ended.
    if row.stop is None:
        assert isinstance(outcome, UpstreamResult), f"expected success, got {outcome!r}"
    else:
        assert isinstance(outcome, RetryFailure), f"expected {row.stop}, got a result"
        assert outcome.stop_reason == row.stop
        assert outcome.error.kind is row.failures[-1]
        assert outcome.error is observer.failed[-1][1]
        assert_matches(outcome.retry_delay, row.retry_delay, "retry_delay")

    # Attempts: the loop, the observer and the emulator agree.
    assert attempts == row.attempts
    assert scenario.stats.received == row.attempts, scenario.stats.to_json(include_bodies=False)
    assert observer.started == [(n, policy.max_attempts) for n in range(1, attempts + 1)]
    failed_numbers = [n for n, _, _ in observer.failed]
    assert failed_numbers == list(range(1, len(row.failures) + 1))
    assert len(observer.failed) == attempts - (1 if row.stop is None else 0)
    assert tuple(error.kind for _, error, _ in observer.failed) == row.failures
    decisions = [decision for _, _, decision in observer.failed]
    if row.stop is None:
        assert all(d.will_retry for d in decisions)
    else:
        assert all(d.will_retry for d in decisions[:-1])
        assert not decisions[-1].will_retry
        assert decisions[-1].reason == row.stop
    for number, error, decision in observer.failed:
        if not decision.will_retry:
            continue
        if error.retry_after is not None:
            assert decision.delay == pytest.approx(error.retry_after), "upstream's delay is honoured exactly"
        else:
            assert 0.0 <= decision.delay <= policy.backoff_ceiling(number)

    # Classification of the first failure.
    if row.failures:
        first = observer.failed[0][1]
        assert_facts(error_facts(first), first.message, row.error)
        assert emulator.api_key not in first.message
    else:
        assert not row.error, "a row without failures cannot state error facts"

    # The result of a success.
    if isinstance(outcome, UpstreamResult):
        assert_facts(result_facts(outcome), "", row.result)
        assert outcome.model_version
        assert outcome.response_id
        assert outcome.image not in outcome.drafts, "a thought image is never the result"
        if row.stream:
            # on_draft saw this attempt's drafts last, in order (and a failed attempt's before them).
            streamed = [image for _, image in drafts]
            assert streamed[len(streamed) - len(outcome.drafts) :] == list(outcome.drafts)
            if attempts == 1:
                assert streamed == list(outcome.drafts)
        if row.drafts_first:
            assert drafts and not drafts[0][0], "drafts must arrive before the body ends"
    elif not row.stream:
        assert not drafts  # (a failed stream may have forwarded drafts before failing)

    # Time: the loop waited exactly the delays it decided, and nothing else; those waits (and the
    # row's latency) happened for real; and the call did not hang. Load only makes calls slower, so the
    # lower bounds are exact while the upper one is a generous hang guard (see QUICK).
    assert clock.sleeps == [d.delay for d in decisions if d.will_retry]
    assert elapsed >= sum(clock.sleeps) - 0.005
    assert row.min_s <= elapsed < row.max_s, f"took {elapsed:.3f}s, expected [{row.min_s}, {row.max_s})"

    # Budget: one request; each failed retry of a retryable kind counted, unless the request succeeded.
    failed_retries = sum(1 for kind in row.failures[1:] if kind in BUDGET_KINDS)
    assert (budget.requests, budget.failed_retries) == (1, 0 if row.stop is None else failed_retries)

    # The emulator saw every attempt as the same request, on the right route, and
    # every request ended (nothing left in flight: timeouts aborted the request).
    method = "streamGenerateContent?alt=sse" if row.stream else "generateContent"
    assert list(scenario.stats.paths) == [f"/{row.version}/models/{row.model}:{method}"] * row.attempts
    assert all(body == scenario.stats.bodies[0] for body in scenario.stats.bodies)
    await scenario.wait_for(lambda s: s.in_flight == 0, timeout=10.0)
    assert (scenario.stats.aborted, scenario.stats.cut) == (row.aborted, row.cut)
