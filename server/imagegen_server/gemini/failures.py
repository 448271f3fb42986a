"""Gemini's failures: decode ``google.rpc.Status`` error bodies and classify them into one :class:`UpstreamError`.

Covers non-2xx answers (envelope, proxy HTML or empty body, ``Retry-After``)
and error envelopes found inside a 200 body or a stream. Pure functions, no
I/O. Also home to the proto3-JSON field readers and the quoting of upstream
text in messages, which :mod:`imagegen_server.gemini.response` shares.

Gemini accepts and may return both camelCase and snake_case field names
(proto3 JSON); every reader here accepts both.
"""

from __future__ import annotations

import email.utils
import functools
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from imagegen_server.gemini.errors import ErrorKind, FieldViolation, QuotaViolation, UpstreamError

__all__ = [
    "ErrorEnvelope",
    "classify_error_envelope",
    "classify_http_error",
    "parse_duration",
    "parse_error_envelope",
    "parse_retry_after",
]

#: Upstream text quoted in our messages is cut to this many characters: a
#: 429's message alone runs to ~500 characters of links and metric names.
MAX_QUOTED_CHARS = 300

#: "Image part is missing a thought_signature in content position 2, part
#: position 1", the Text variant, and function-call wordings without positions.
_MISSING_SIGNATURE_RE = re.compile(r"is missing an? `?thought_signature", re.IGNORECASE)
_SIGNATURE_POSITION_RE = re.compile(r"content position (\d+), part position (\d+)", re.IGNORECASE)
_API_KEY_MESSAGE_RE = re.compile(r"API key (?:not valid|not found|expired|invalid)", re.IGNORECASE)
_RETRY_IN_MESSAGE_RE = re.compile(r"retry in (\d+(?:\.\d+)?)(ms|s)\b", re.IGNORECASE)
_DURATION_RE = re.compile(r"\s*(-?\d+(?:\.\d*)?)s\s*")
_TAG_RE = re.compile(r"<[^>]*>")
_SPACE_RE = re.compile(r"\s+")


# ---------------------------------------------------------------------------
# Field access tolerant of camelCase and snake_case, and quoting upstream text.
# response.py uses these too; they live here because it imports this module
# (for error envelopes inside answers), never the other way round.
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _snake(name: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


def _get(obj: Mapping[str, Any], name: str) -> Any:
    """``obj[name]`` under its camelCase or snake_case spelling, else None."""
    value = obj.get(name)
    if value is None:
        value = obj.get(_snake(name))
    return value


def _as_str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _as_int(value: Any) -> int:
    # int64 fields arrive as JSON strings in proto3 JSON; int32 as numbers.
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return 0
    return 0


def _quote(text: str, limit: int = MAX_QUOTED_CHARS) -> str:
    text = _SPACE_RE.sub(" ", text).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---------------------------------------------------------------------------
# Error envelopes and their classification
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ErrorEnvelope:
    """A decoded ``{"error": google.rpc.Status}`` body with its known details."""

    code: int | None
    message: str
    status: str
    reason: str = ""
    domain: str = ""
    metadata: tuple[tuple[str, str], ...] = ()
    retry_delay: float | None = None
    quota_violations: tuple[QuotaViolation, ...] = ()
    field_violations: tuple[FieldViolation, ...] = ()
    help_links: tuple[tuple[str, str], ...] = ()
    localized_message: str = ""


def parse_duration(value: Any) -> float | None:
    """Seconds in a protobuf ``Duration`` (``"22s"``, ``"45.837906927s"`` or ``{seconds, nanos}``)."""
    if isinstance(value, str):
        match = _DURATION_RE.fullmatch(value)
        return max(0.0, float(match.group(1))) if match else None
    if isinstance(value, Mapping):
        seconds = _as_int(_get(value, "seconds"))
        nanos = _as_int(_get(value, "nanos"))
        return max(0.0, seconds + nanos / 1e9)
    return None


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from an HTTP ``Retry-After`` header (delta-seconds or HTTP-date).

    ``now`` is the current Unix time (for tests). A date in the past gives 0;
    an unreadable value gives None.
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000" dates parse naive; HTTP-dates are GMT.
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def _details(raw: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    quota: list[QuotaViolation] = []
    fields: list[FieldViolation] = []
    links: list[tuple[str, str]] = []
    for item in raw if isinstance(raw, list) else []:
        if not isinstance(item, Mapping):
            continue
        kind = _as_str(item.get("@type")).rsplit("/", 1)[-1]
        if kind == "google.rpc.ErrorInfo":
            out.setdefault("reason", _as_str(item.get("reason")))
            out.setdefault("domain", _as_str(item.get("domain")))
            metadata = item.get("metadata")
            if isinstance(metadata, Mapping):
                out.setdefault("metadata", tuple((str(k), str(v)) for k, v in metadata.items()))
        elif kind == "google.rpc.RetryInfo":
            delay = parse_duration(_get(item, "retryDelay"))
            if delay is not None:
                out.setdefault("retry_delay", delay)
        elif kind == "google.rpc.QuotaFailure":
            for v in _get(item, "violations") or ():
                if isinstance(v, Mapping):
                    quota.append(
                        QuotaViolation(
                            quota_metric=_as_str(_get(v, "quotaMetric")),
                            quota_id=_as_str(_get(v, "quotaId")),
                            quota_value=str(_get(v, "quotaValue") or ""),
                            description=_as_str(_get(v, "description")),
                        )
                    )
        elif kind == "google.rpc.BadRequest":
            for v in _get(item, "fieldViolations") or ():
                if isinstance(v, Mapping):
                    fields.append(
                        FieldViolation(field=_as_str(_get(v, "field")), description=_as_str(_get(v, "description")))
                    )
        elif kind == "google.rpc.Help":
            for link in _get(item, "links") or ():
                if isinstance(link, Mapping):
                    links.append((_as_str(link.get("description")), _as_str(link.get("url"))))
        elif kind == "google.rpc.LocalizedMessage":
            out.setdefault("localized_message", _as_str(item.get("message")))
    out["quota_violations"] = tuple(quota)
    out["field_violations"] = tuple(fields)
    out["help_links"] = tuple(links)
    return out


def parse_error_envelope(body: Any) -> ErrorEnvelope | None:
    """Decode ``{"error": {code, message, status, details}}``; None if ``body`` is not one.

    ``body`` may be the JSON text or the decoded object. Some proxies send the
    Status bare (no ``error`` wrapper) or wrap it in a one-element list; both
    are accepted.
    """
    if isinstance(body, bytes | str):
        try:
            body = json.loads(body)
        except (ValueError, RecursionError):
            return None
    if isinstance(body, list) and len(body) == 1:
        body = body[0]
    if not isinstance(body, Mapping):
        return None
    error = body.get("error", body)
    if not isinstance(error, Mapping) or not ({"code", "status", "message"} & error.keys()):
        return None
    code = error.get("code")
    return ErrorEnvelope(
        code=code if isinstance(code, int) and not isinstance(code, bool) else None,
        message=_as_str(error.get("message")),
        status=_as_str(error.get("status")).upper(),
        **_details(error.get("details")),
    )


def _header(headers: Mapping[str, str] | None, name: str) -> str | None:
    if not headers:
        return None
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    for key, val in headers.items():
        if key.lower() == lowered:
            return val
    return None


def _body_snippet(body: bytes) -> str:
    text = body[:4096].decode("utf-8", "replace")
    return _quote(_TAG_RE.sub(" ", text), 200)


def classify_http_error(
    http_status: int,
    body: bytes,
    headers: Mapping[str, str] | None = None,
    *,
    model: str = "",
    reason_phrase: str = "",
    now: float | None = None,
) -> UpstreamError:
    """Classify a non-2xx answer into exactly one :class:`UpstreamError`.

    A JSON error envelope is decoded; any other body (a proxy's HTML page, an
    empty body) is classified by HTTP status alone. ``Retry-After`` is honoured
    when the body carries no ``RetryInfo``.
    """
    header_delay = parse_retry_after(_header(headers, "Retry-After"), now)
    envelope = parse_error_envelope(body)
    if envelope is None:
        snippet = _body_snippet(body)
        phrase = reason_phrase or "error"
        envelope = ErrorEnvelope(code=http_status, message=f"{phrase}: {snippet}" if snippet else phrase, status="")
    return classify_error_envelope(envelope, http_status=http_status, retry_after_header=header_delay, model=model)


def _error_kind(code: int | None, envelope: ErrorEnvelope) -> ErrorKind:
    status, reason, message = envelope.status, envelope.reason, envelope.message
    if (
        reason.startswith("API_KEY_")
        or code in (401, 403)
        or status in ("UNAUTHENTICATED", "PERMISSION_DENIED")
        or (code == 400 and _API_KEY_MESSAGE_RE.search(message))
    ):
        return ErrorKind.AUTH
    if _MISSING_SIGNATURE_RE.search(message):
        return ErrorKind.MISSING_THOUGHT_SIGNATURE
    if code == 404 or (code is None and status == "NOT_FOUND"):
        return ErrorKind.NOT_FOUND
    if code == 429 or (code is None and status == "RESOURCE_EXHAUSTED"):
        if any(v.per_day for v in envelope.quota_violations):
            return ErrorKind.QUOTA_EXHAUSTED
        return ErrorKind.RATE_LIMITED
    if code in (408, 504) or (code is None and status == "DEADLINE_EXCEEDED"):
        return ErrorKind.DEADLINE_EXCEEDED
    if code is not None and code >= 500:
        return ErrorKind.UNAVAILABLE
    if status == "FAILED_PRECONDITION":
        return ErrorKind.FAILED_PRECONDITION
    if code is None:
        if status in ("UNAVAILABLE", "INTERNAL", "UNKNOWN", "ABORTED", "CANCELLED"):
            return ErrorKind.UNAVAILABLE
        if status in ("INVALID_ARGUMENT", "OUT_OF_RANGE"):
            return ErrorKind.INVALID_ARGUMENT
        return ErrorKind.MALFORMED
    if code in (409, 499):  # ABORTED / CANCELLED on Google's side: transient
        return ErrorKind.UNAVAILABLE
    if 300 <= code < 400:
        # Gemini never redirects; a redirect means a wrong base URL or a
        # captive proxy, which retrying will not fix.
        return ErrorKind.FAILED_PRECONDITION
    if 400 <= code < 500:
        return ErrorKind.INVALID_ARGUMENT
    return ErrorKind.MALFORMED


def classify_error_envelope(
    envelope: ErrorEnvelope,
    *,
    http_status: int | None,
    retry_after_header: float | None = None,
    model: str = "",
) -> UpstreamError:
    """Turn a decoded error envelope into one :class:`UpstreamError`.

    ``http_status`` decides first (it is what Gemini's front end chose);
    ``envelope.status`` decides when there is none (an error inside a stream
    or a proxy's 200). ``retry_after`` comes from ``RetryInfo``, then the
    ``Retry-After`` header, then the "Please retry in Xs" text of the message.
    """
    code = http_status if http_status is not None else envelope.code
    kind = _error_kind(code, envelope)
    retry_after = envelope.retry_delay
    if retry_after is None:
        retry_after = retry_after_header
    if retry_after is None and kind in (ErrorKind.RATE_LIMITED, ErrorKind.QUOTA_EXHAUSTED):
        match = _RETRY_IN_MESSAGE_RE.search(envelope.message)
        if match:
            retry_after = float(match.group(1)) / (1000.0 if match.group(2).lower() == "ms" else 1.0)
    content_index = part_index = None
    position = _SIGNATURE_POSITION_RE.search(envelope.message)
    if kind is ErrorKind.MISSING_THOUGHT_SIGNATURE and position:
        # Gemini counts from 1 ("content position 2" is the model turn of
        # [user, model, user]); we report 0-based indices.
        content_index = max(0, int(position.group(1)) - 1)
        part_index = max(0, int(position.group(2)) - 1)
    label = " ".join(x for x in (str(code) if code is not None else "", envelope.status) if x)
    upstream = _quote(envelope.message) if envelope.message else "(no message)"
    prefix = {
        ErrorKind.AUTH: "Gemini rejected our API key or its permissions",
        ErrorKind.NOT_FOUND: f"Gemini does not know model {model!r}" if model else "Gemini: not found",
        ErrorKind.QUOTA_EXHAUSTED: "Gemini daily quota exhausted",
        ErrorKind.RATE_LIMITED: "Gemini rate limit",
        ErrorKind.MISSING_THOUGHT_SIGNATURE: "Gemini rejected the history (missing thought signature)",
    }.get(kind, "Gemini error")
    message = f"{prefix} [{label}]: {upstream}" if label else f"{prefix}: {upstream}"
    return UpstreamError(
        kind,
        message,
        http_status=code,
        upstream_status=envelope.status,
        upstream_reason=envelope.reason,
        retry_after=retry_after,
        quota_violations=envelope.quota_violations,
        field_violations=envelope.field_violations,
        signature_content_index=content_index,
        signature_part_index=part_index,
        model=model,
    )
