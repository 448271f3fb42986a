"""Gemini's error answers, byte-compatible with what the real API sends.

Every error is a ``google.rpc.Status`` in a ``{"error": {...}}`` envelope
(shared brief ``gemini-api.md`` section 4). The texts below are Gemini's own,
because clients (ours and the SDK) match on them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

_TYPE_PREFIX = "type.googleapis.com/google.rpc."

#: Gemini's texts, verbatim from the shared brief.
NO_KEY_MESSAGE = (
    "Method doesn't allow unregistered callers (callers without established identity). "
    "Please use API Key or other form of API consumer identity to call this API."
)
BAD_KEY_MESSAGE = "API key not valid. Please pass a valid API key."
INTERNAL_MESSAGE = (
    "An internal error has occurred. Please retry or report in "
    "https://developers.generativeai.google/guide/troubleshooting"
)
OVERLOADED_MESSAGE = "The model is overloaded. Please try again later."
HIGH_DEMAND_MESSAGE = (
    "This model is currently experiencing high demand. Spikes in demand are usually temporary. Please try again later."
)
DEADLINE_MESSAGE = "Deadline expired before operation could complete."
INVALID_ARGUMENT_MESSAGE = "Request contains an invalid argument."
FAILED_PRECONDITION_MESSAGE = (
    "Gemini API free tier is not available in your country. Please enable billing on your project in Google AI Studio."
)
BARE_429_MESSAGE = "Resource has been exhausted (e.g. check quota)."
RATE_LIMIT_DOCS_URL = "https://ai.google.dev/gemini-api/docs/rate-limits"
QUOTA_MESSAGE = (
    "You exceeded your current quota, please check your plan and billing details. "
    f"For more information on this error, head to: {RATE_LIMIT_DOCS_URL}. "
    "To monitor your current usage, head to: https://ai.dev/rate-limit. "
)
SIGNATURE_DOCS = (
    "Please refer to https://ai.google.dev/gemini-api/docs/thought-signatures#model-behavior for more details."
)
FREE_TIER_METRIC = "generativelanguage.googleapis.com/generate_content_free_tier_requests"

#: What a Google front end answers for 502 (HTML, not JSON), for ``bad_gateway:html``.
GFE_502_HTML = (
    "<!DOCTYPE html>\n<html lang=en>\n  <meta charset=utf-8>\n"
    "  <title>Error 502 (Server Error)!!1</title>\n"
    "  <p><b>502.</b> <ins>That\u2019s an error.</ins>\n"
    "  <p>The server encountered a temporary error and could not complete your request."
    "<p>Please try again in 30 seconds.  <ins>That\u2019s all we know.</ins>\n"
)


class ApiError(Exception):
    """An error answer: raise it anywhere in request handling to send it."""

    def __init__(
        self,
        http_status: int,
        status: str,
        message: str,
        details: list[dict[str, Any]] | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        html: str | None = None,
    ) -> None:
        super().__init__(f"{http_status} {status}: {message}")
        self.http_status = http_status
        self.status = status
        self.message = message
        self.details = details
        self.headers: dict[str, str] = dict(headers or {})
        #: A non-JSON body, as a Google front end sends for some 5xx.
        self.html = html

    @property
    def content_type(self) -> str:
        """The body's media type."""
        return "text/html; charset=UTF-8" if self.html is not None else "application/json; charset=UTF-8"

    def envelope(self) -> dict[str, Any]:
        """The ``{"error": {...}}`` JSON object."""
        error: dict[str, Any] = {"code": self.http_status, "message": self.message, "status": self.status}
        if self.details:
            error["details"] = self.details
        return {"error": error}

    def body(self) -> bytes:
        """The envelope serialized the way Google does (pretty-printed, two spaces)."""
        if self.html is not None:
            return self.html.encode()
        return (json.dumps(self.envelope(), indent=2, ensure_ascii=False) + "\n").encode()


def _detail(kind: str, **fields: Any) -> dict[str, Any]:
    return {"@type": _TYPE_PREFIX + kind, **fields}


def format_duration(seconds: float) -> str:
    """A protobuf Duration JSON string: ``"22s"``, ``"0.2s"``, ``"45.837906927s"``."""
    if float(seconds).is_integer():
        return f"{int(seconds)}s"
    return f"{seconds:.9f}".rstrip("0") + "s"


def invalid_argument(message: str, violations: list[dict[str, str]] | None = None) -> ApiError:
    """A 400 INVALID_ARGUMENT, with a ``BadRequest`` detail when violations are given."""
    details = [_detail("BadRequest", fieldViolations=violations)] if violations else None
    return ApiError(400, "INVALID_ARGUMENT", message, details)


def unknown_fields(path: str, names: list[str]) -> ApiError:
    """Gemini's answer to JSON keys the proto does not have (``path`` in snake_case)."""
    at = f" at '{path}'" if path else ""
    texts = [f'Invalid JSON payload received. Unknown name "{name}"{at}: Cannot find field.' for name in names]
    violations = [{"field": path, "description": text} if path else {"description": text} for text in texts]
    return invalid_argument("\n".join(texts), violations)


def invalid_value(path: str, type_name: str, value: Any, suffix: str = "") -> ApiError:
    """Gemini's answer to a JSON value of the wrong type or enum (``Invalid value at ...``)."""
    text = f"Invalid value at '{path}' ({type_name}), {json.dumps(value)}"
    return invalid_argument(text + suffix, [{"field": path, "description": text + suffix}])


def invalid_json(reason: str) -> ApiError:
    """A body that is not JSON (or not a JSON object)."""
    text = f"Invalid JSON payload received. {reason}"
    return invalid_argument(text, [{"description": text}])


def missing_signature(kind: str, content: int, part: int) -> ApiError:
    """Section 5's 400; ``content`` and ``part`` are 1-based, as Gemini reports them."""
    return invalid_argument(
        f"{kind} part is missing a thought_signature in content position {content}, "
        f"part position {part}. {SIGNATURE_DOCS}"
    )


def corrupted_signature(kind: str, content: int, part: int) -> ApiError:
    """The emulator's answer to a signature it never issued (a corrupted round-trip).

    Gemini's own wording for this case is not documented; this one names the
    position like the missing-signature error does.
    """
    return invalid_argument(
        f"Corrupted thought signature. {kind} part has a thought_signature that was not issued for it "
        f"in content position {content}, part position {part}. {SIGNATURE_DOCS}"
    )


def payload_too_large(limit: int) -> ApiError:
    """Gemini's 400 (not 413) for a request body over ``limit`` bytes."""
    return ApiError(400, "INVALID_ARGUMENT", f"Request payload size exceeds the limit: {limit} bytes.")


#: How to get a marker that works, for the unknown-scenario errors.
_SCENARIO_HINT = (
    "Register a scenario with POST /emulator/scenarios (or Emulator.scenario()) on this emulator "
    "and use the marker it returns; step names are checked when the scenario is registered."
)


def unknown_scenario_marker(marker: str, field_path: str) -> ApiError:
    """The emulator's own 400 for an ``[emulator:ID]`` marker no scenario here has issued."""
    text = f"Unknown emulator scenario marker {marker}: no scenario with that id is registered on this emulator."
    return invalid_argument(f"{text} {_SCENARIO_HINT}", [{"field": field_path, "description": text}])


def unknown_scenario_header(header: str, scenario_id: str) -> ApiError:
    """The emulator's own 400 for a scenario header naming no registered scenario."""
    return invalid_argument(
        f"Unknown emulator scenario {scenario_id!r} in the {header} header: no scenario with that id is "
        f"registered on this emulator. {_SCENARIO_HINT}"
    )


def no_key() -> ApiError:
    """403 for a request without any API key."""
    return ApiError(403, "PERMISSION_DENIED", NO_KEY_MESSAGE)


def bad_key() -> ApiError:
    """400 (not 401) for a wrong API key, with ErrorInfo and LocalizedMessage."""
    return ApiError(
        400,
        "INVALID_ARGUMENT",
        BAD_KEY_MESSAGE,
        [
            _detail(
                "ErrorInfo",
                reason="API_KEY_INVALID",
                domain="googleapis.com",
                metadata={"service": "generativelanguage.googleapis.com"},
            ),
            _detail("LocalizedMessage", locale="en-US", message=BAD_KEY_MESSAGE),
        ],
    )


def model_not_found(resource: str, version: str, method: str) -> ApiError:
    """404 for an unknown model or an unsupported method on it."""
    return ApiError(
        404,
        "NOT_FOUND",
        f"{resource} is not found for API version {version}, or is not supported for {method}. "
        "Call ListModels to see the list of available models and their supported methods.",
    )


def _help() -> dict[str, Any]:
    return _detail("Help", links=[{"description": "Learn more about Gemini API quotas", "url": RATE_LIMIT_DOCS_URL}])


def _quota_failure(model: str, quota_id: str, value: str) -> dict[str, Any]:
    return _detail(
        "QuotaFailure",
        violations=[
            {
                "quotaMetric": FREE_TIER_METRIC,
                "quotaId": quota_id,
                "quotaDimensions": {"location": "global", "model": model},
                "quotaValue": value,
            }
        ],
    )


def _quota_message(model: str, limit: str, delay: float | None) -> str:
    text = f"{QUOTA_MESSAGE}\n* Quota exceeded for metric: {FREE_TIER_METRIC}, limit: {limit}, model: {model}"
    if delay is not None:
        text += f"\nPlease retry in {format_duration(delay)}."
    return text


def rate_limited(model: str, delay: float) -> ApiError:
    """A realistic per-minute 429: Help, QuotaFailure, RetryInfo, in Gemini's order."""
    return ApiError(
        429,
        "RESOURCE_EXHAUSTED",
        _quota_message(model, "20", delay),
        [
            _help(),
            _quota_failure(model, "GenerateRequestsPerMinutePerProjectPerModel-FreeTier", "20"),
            _detail("RetryInfo", retryDelay=format_duration(delay)),
        ],
    )


def quota_daily(model: str, delay: float) -> ApiError:
    """A per-day 429. Gemini still sends RetryInfo; clients must not retry on it."""
    return ApiError(
        429,
        "RESOURCE_EXHAUSTED",
        _quota_message(model, "100", delay),
        [
            _help(),
            _quota_failure(model, "GenerateRequestsPerDayPerProjectPerModel-FreeTier", "100"),
            _detail("RetryInfo", retryDelay=format_duration(delay)),
        ],
    )


def rate_limited_help_only(model: str) -> ApiError:
    """A 429 with only a Help detail and no retry hint (gemini-cli#12586)."""
    return ApiError(429, "RESOURCE_EXHAUSTED", _quota_message(model, "20", None), [_help()])


def rate_limited_bare(headers: Mapping[str, str] | None = None) -> ApiError:
    """A 429 without details; ``headers`` lets a step add a proxy's ``Retry-After``."""
    return ApiError(429, "RESOURCE_EXHAUSTED", BARE_429_MESSAGE, headers=headers)
