"""One typed error for every way a Gemini call can fail.

The Gemini client classifies each failure into an :class:`UpstreamError` with
an :class:`ErrorKind`; the retry loop decides on the kind, and the gRPC layer
maps the kind to a status code. Messages never contain the API key.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ErrorKind(enum.Enum):
    """What went wrong upstream, at the granularity callers act on."""

    #: HTTP 400 INVALID_ARGUMENT about the request (not the key, not safety).
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    #: HTTP 400 FAILED_PRECONDITION (billing, region).
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    #: A model image/text part in the history lacks its thought signature.
    MISSING_THOUGHT_SIGNATURE = "MISSING_THOUGHT_SIGNATURE"
    #: Prompt or output blocked (``promptFeedback.blockReason`` / block finishReason).
    CONTENT_BLOCKED = "CONTENT_BLOCKED"
    #: An OK answer with no final image (text-only refusal, NO_IMAGE, IMAGE_OTHER).
    NO_IMAGE = "NO_IMAGE"
    #: HTTP 429 that may be retried after a delay.
    RATE_LIMITED = "RATE_LIMITED"
    #: HTTP 429 for a per-day quota: retrying soon is pointless.
    QUOTA_EXHAUSTED = "QUOTA_EXHAUSTED"
    #: HTTP 500/502/503, connection refused/reset, body cut short.
    UNAVAILABLE = "UNAVAILABLE"
    #: HTTP 504 or a client-side timeout waiting for upstream.
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    #: HTTP 404: unknown model or method.
    NOT_FOUND = "NOT_FOUND"
    #: Our API key is missing, invalid or lacks permission (400 API_KEY_INVALID, 403).
    AUTH = "AUTH"
    #: A 200 we cannot use: bad JSON, bad base64, bytes that are not an image.
    MALFORMED = "MALFORMED"
    #: Never raised by the client: the retry loop's stand-in for an attempt it did
    #: not make because the model's circuit breaker is open (``model`` is set).
    CIRCUIT_OPEN = "CIRCUIT_OPEN"


BlockSide = str  # "prompt" or "output"


@dataclass(frozen=True, slots=True)
class QuotaViolation:
    """One ``google.rpc.QuotaFailure`` violation as Gemini sent it."""

    quota_metric: str = ""
    quota_id: str = ""
    quota_value: str = ""
    description: str = ""

    @property
    def per_day(self) -> bool:
        """True for daily quotas, which a short wait will not fix."""
        return "PerDay" in self.quota_id


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One ``google.rpc.BadRequest`` field violation."""

    field: str
    description: str


class UpstreamError(Exception):
    """A classified failure of one upstream call.

    Only ``kind`` and ``message`` are always set; the rest is filled where the
    upstream answer carried it.
    """

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        http_status: int | None = None,
        upstream_status: str = "",
        upstream_reason: str = "",
        retry_after: float | None = None,
        quota_violations: tuple[QuotaViolation, ...] = (),
        field_violations: tuple[FieldViolation, ...] = (),
        block_reason: str = "",
        block_side: BlockSide = "",
        finish_reason: str = "",
        model_text: str = "",
        signature_content_index: int | None = None,
        signature_part_index: int | None = None,
        model: str = "",
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.http_status = http_status
        #: Gemini's ``error.status`` string, e.g. ``"RESOURCE_EXHAUSTED"``.
        self.upstream_status = upstream_status
        #: Gemini's ``ErrorInfo.reason``, e.g. ``"API_KEY_INVALID"``.
        self.upstream_reason = upstream_reason
        #: Seconds to wait before retrying (RetryInfo, else Retry-After).
        self.retry_after = retry_after
        self.quota_violations = quota_violations
        self.field_violations = field_violations
        #: ``promptFeedback.blockReason`` or the blocking ``finishReason``.
        self.block_reason = block_reason
        #: ``"prompt"`` or ``"output"`` for CONTENT_BLOCKED.
        self.block_side = block_side
        self.finish_reason = finish_reason
        #: The model's text when it answered without an image.
        self.model_text = model_text
        #: 0-based content/part position Gemini named in a missing-signature 400
        #: (Gemini's message is 1-based).
        self.signature_content_index = signature_content_index
        self.signature_part_index = signature_part_index
        self.model = model

    def __repr__(self) -> str:
        return f"UpstreamError({self.kind.name}, {self.message!r}, http_status={self.http_status})"
