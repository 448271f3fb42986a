"""Pure tests of classifying Gemini's failures: error envelopes, HTTP statuses, Retry-After, durations.

Error shapes follow the shared gemini-api.md sections 3-5.
"""

from __future__ import annotations

import email.utils
import json
from typing import Any

import pytest

from imagegen_server.gemini.errors import ErrorKind, FieldViolation, UpstreamError
from imagegen_server.gemini.failures import classify_http_error, parse_duration, parse_error_envelope

MODEL = "gemini-3-pro-image-preview"


def http_error(status: int, body: Any, headers: dict[str, str] | None = None, **kw: Any) -> UpstreamError:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return classify_http_error(status, raw, headers, model=MODEL, **kw)


def envelope(code: int, status: str, message: str, *details: dict[str, Any]) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = list(details)
    return {"error": error}


# ---------------------------------------------------------------------------
# Error envelopes
# ---------------------------------------------------------------------------

API_KEY_INVALID = envelope(
    400,
    "INVALID_ARGUMENT",
    "API key not valid. Please pass a valid API key.",
    {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": "API_KEY_INVALID",
        "domain": "googleapis.com",
        "metadata": {"service": "generativelanguage.googleapis.com"},
    },
    {
        "@type": "type.googleapis.com/google.rpc.LocalizedMessage",
        "locale": "en-US",
        "message": "API key not valid. Please pass a valid API key.",
    },
)

QUOTA_429 = envelope(
    429,
    "RESOURCE_EXHAUSTED",
    "You exceeded your current quota, please check your plan and billing details. For more information on "
    "this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits. To monitor your current usage, "
    "head to: https://ai.dev/rate-limit. \n* Quota exceeded for metric: "
    "generativelanguage.googleapis.com/generate_content_free_tier_requests, limit: 20, model: "
    "gemini-2.5-flash-image\nPlease retry in 22.991448336s.",
    {
        "@type": "type.googleapis.com/google.rpc.Help",
        "links": [
            {
                "description": "Learn more about Gemini API quotas",
                "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
            }
        ],
    },
    {
        "@type": "type.googleapis.com/google.rpc.QuotaFailure",
        "violations": [
            {
                "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                "quotaDimensions": {"location": "global", "model": "gemini-2.5-flash-image"},
                "quotaValue": "20",
            }
        ],
    },
    {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "22s"},
)


def test_api_key_invalid_is_auth() -> None:
    err = http_error(400, API_KEY_INVALID)
    assert err.kind is ErrorKind.AUTH
    assert (err.http_status, err.upstream_status, err.upstream_reason) == (400, "INVALID_ARGUMENT", "API_KEY_INVALID")
    assert "API key not valid" in err.message


def test_api_key_not_found_without_details_is_auth() -> None:
    err = http_error(400, envelope(400, "INVALID_ARGUMENT", "API Key not found. Please pass a valid API key."))
    assert err.kind is ErrorKind.AUTH


@pytest.mark.parametrize(
    ("code", "status", "message"),
    [
        (
            403,
            "PERMISSION_DENIED",
            "Method doesn't allow unregistered callers (callers without established identity). "
            "Please use API Key or other form of API consumer identity to call this API.",
        ),
        (403, "PERMISSION_DENIED", "The caller does not have permission"),
        (401, "UNAUTHENTICATED", "Request had invalid authentication credentials."),
    ],
)
def test_403_and_401_are_auth(code: int, status: str, message: str) -> None:
    err = http_error(code, envelope(code, status, message))
    assert err.kind is ErrorKind.AUTH
    assert err.upstream_status == status


@pytest.mark.parametrize(
    ("message", "content", "part"),
    [
        (
            "Image part is missing a thought_signature in content position 2, part position 1. Please refer to "
            "https://ai.google.dev/gemini-api/docs/thought-signatures#model-behavior for more details.",
            1,
            0,
        ),
        ("Text part is missing a thought_signature in content position 4, part position 3.", 3, 2),
        ("Function call `default_api:edit` in the 2. content block is missing a `thought_signature`.", None, None),
    ],
)
def test_missing_thought_signature_positions_are_zero_based(
    message: str, content: int | None, part: int | None
) -> None:
    err = http_error(400, envelope(400, "INVALID_ARGUMENT", message))
    assert err.kind is ErrorKind.MISSING_THOUGHT_SIGNATURE
    assert (err.signature_content_index, err.signature_part_index) == (content, part)


def test_unknown_field_bad_request_keeps_field_violations() -> None:
    err = http_error(
        400,
        envelope(
            400,
            "INVALID_ARGUMENT",
            "Invalid JSON payload received. Unknown name \"outputMimeType\" at 'generation_config.image_config': "
            "Cannot find field.",
            {
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [
                    {
                        "field": "generation_config.image_config",
                        "description": 'Invalid JSON payload received. Unknown name "outputMimeType"',
                    }
                ],
            },
        ),
    )
    assert err.kind is ErrorKind.INVALID_ARGUMENT
    assert err.field_violations == (
        FieldViolation(
            "generation_config.image_config", 'Invalid JSON payload received. Unknown name "outputMimeType"'
        ),
    )


def test_plain_invalid_argument_and_failed_precondition() -> None:
    err = http_error(400, envelope(400, "INVALID_ARGUMENT", "Request contains an invalid argument."))
    assert err.kind is ErrorKind.INVALID_ARGUMENT
    assert "Request contains an invalid argument." in err.message
    err = http_error(400, envelope(400, "FAILED_PRECONDITION", "User location is not supported for the API use."))
    assert err.kind is ErrorKind.FAILED_PRECONDITION
    assert err.upstream_status == "FAILED_PRECONDITION"


def test_404_names_the_model() -> None:
    err = http_error(
        404,
        envelope(
            404,
            "NOT_FOUND",
            f"models/{MODEL} is not found for API version v1beta, or is not supported for generateContent.",
        ),
    )
    assert err.kind is ErrorKind.NOT_FOUND
    assert err.model == MODEL
    assert MODEL in err.message


def test_realistic_429_is_rate_limited_with_retry_info_and_quota() -> None:
    err = http_error(429, QUOTA_429)
    assert err.kind is ErrorKind.RATE_LIMITED
    assert err.retry_after == 22.0
    assert err.upstream_status == "RESOURCE_EXHAUSTED"
    (violation,) = err.quota_violations
    assert violation.quota_id == "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"
    assert violation.quota_value == "20"
    assert violation.quota_metric.endswith("generate_content_free_tier_requests")
    assert len(err.message) < 450


def test_fractional_retry_delay() -> None:
    err = http_error(
        429,
        envelope(
            429,
            "RESOURCE_EXHAUSTED",
            "Resource has been exhausted",
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "45.837906927s"},
        ),
    )
    assert err.retry_after == pytest.approx(45.837906927)


def test_bare_429_has_no_delay() -> None:
    err = http_error(429, envelope(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota)."))
    assert err.kind is ErrorKind.RATE_LIMITED
    assert err.retry_after is None
    assert err.quota_violations == ()


def test_429_with_only_help_uses_the_retry_text() -> None:
    body = envelope(
        429,
        "RESOURCE_EXHAUSTED",
        "Quota exceeded. Please retry in 58.934310785s.",
        {"@type": "type.googleapis.com/google.rpc.Help", "links": []},
    )
    assert http_error(429, body).retry_after == pytest.approx(58.934310785)


def test_per_day_quota_is_exhausted_not_rate_limited() -> None:
    body = json.loads(json.dumps(QUOTA_429))
    body["error"]["details"][1]["violations"][0]["quotaId"] = "GenerateRequestsPerDayPerProjectPerModel-FreeTier"
    err = http_error(429, body)
    assert err.kind is ErrorKind.QUOTA_EXHAUSTED
    assert err.quota_violations[0].per_day
    assert err.retry_after == 22.0


NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "7"}, 7.0),
        ({"retry-after": "0"}, 0.0),
        ({"Retry-After": email.utils.formatdate(NOW + 30, usegmt=True)}, 30.0),
        ({"Retry-After": email.utils.formatdate(NOW - 30, usegmt=True)}, 0.0),
        ({"Retry-After": "soon"}, None),
        ({}, None),
    ],
)
def test_retry_after_header_forms_on_a_bare_429(headers: dict[str, str], expected: float | None) -> None:
    body = envelope(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted")
    assert http_error(429, body, headers, now=NOW).retry_after == expected


def test_retry_info_beats_retry_after_header() -> None:
    assert http_error(429, QUOTA_429, {"Retry-After": "99"}).retry_after == 22.0


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (500, envelope(500, "INTERNAL", "An internal error has occurred."), ErrorKind.UNAVAILABLE),
        (503, envelope(503, "UNAVAILABLE", "The model is overloaded. Please try again later."), ErrorKind.UNAVAILABLE),
        (
            502,
            b"<html><head><title>502 Bad Gateway</title></head><body><h1>Bad Gateway</h1></body></html>",
            ErrorKind.UNAVAILABLE,
        ),
        (503, b"", ErrorKind.UNAVAILABLE),
        (504, envelope(504, "DEADLINE_EXCEEDED", "Deadline expired before operation could complete."), None),
        (504, b"upstream request timeout", ErrorKind.DEADLINE_EXCEEDED),
        (408, b"", ErrorKind.DEADLINE_EXCEEDED),
        (409, envelope(409, "ABORTED", "aborted"), ErrorKind.UNAVAILABLE),
        (413, b"Request Entity Too Large", ErrorKind.INVALID_ARGUMENT),
        (400, b"<html>Bad Request</html>", ErrorKind.INVALID_ARGUMENT),
        (404, b"Not Found", ErrorKind.NOT_FOUND),
        (403, b"Forbidden", ErrorKind.AUTH),
        (429, b"Too Many Requests", ErrorKind.RATE_LIMITED),
        (302, b"", ErrorKind.FAILED_PRECONDITION),
    ],
)
def test_http_status_classification(status: int, body: Any, kind: ErrorKind | None) -> None:
    err = http_error(status, body)
    assert err.kind is (kind or ErrorKind.DEADLINE_EXCEEDED)
    assert err.http_status == status
    assert len(err.message) < 450


def test_non_json_body_message_is_short_and_readable() -> None:
    html = b"<html><head><title>502 Bad Gateway</title></head><body>" + b"x" * 5000 + b"</body></html>"
    err = http_error(502, html, reason_phrase="Bad Gateway")
    assert "Bad Gateway" in err.message
    assert "<" not in err.message
    assert len(err.message) < 300


def test_parse_error_envelope_decodes_all_details() -> None:
    env = parse_error_envelope(json.dumps(API_KEY_INVALID))
    assert env is not None
    assert env.code == 400
    assert env.reason == "API_KEY_INVALID"
    assert env.domain == "googleapis.com"
    assert env.metadata == (("service", "generativelanguage.googleapis.com"),)
    assert env.localized_message == "API key not valid. Please pass a valid API key."
    quota = parse_error_envelope(QUOTA_429)
    assert quota is not None
    assert quota.help_links == (
        ("Learn more about Gemini API quotas", "https://ai.google.dev/gemini-api/docs/rate-limits"),
    )
    assert quota.retry_delay == 22.0


def test_parse_error_envelope_accepts_snake_case_and_rejects_non_envelopes() -> None:
    env = parse_error_envelope(
        {
            "error": {
                "code": 400,
                "status": "INVALID_ARGUMENT",
                "message": "m",
                "details": [
                    {
                        "@type": "type.googleapis.com/google.rpc.RetryInfo",
                        "retry_delay": {"seconds": "3", "nanos": 5e8},
                    },
                    {
                        "@type": "type.googleapis.com/google.rpc.BadRequest",
                        "field_violations": [{"field": "f", "description": "d"}],
                    },
                    "junk",
                ],
            }
        }
    )
    assert env is not None
    assert env.retry_delay == 3.5
    assert env.field_violations == (FieldViolation("f", "d"),)
    not_envelopes: tuple[Any, ...] = (b"<html>", b"[]", {"candidates": []}, "null")
    for not_envelope in not_envelopes:
        assert parse_error_envelope(not_envelope) is None


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("58s", 58.0), ("0.5s", 0.5), ("45.837906927s", 45.837906927), ("-1s", 0.0), ("58", None), (3, None)],
)
def test_parse_duration(value: Any, seconds: float | None) -> None:
    assert parse_duration(value) == (pytest.approx(seconds) if seconds is not None else None)
