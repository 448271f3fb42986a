"""The ``echo_key`` modifier: an upstream that writes the API key it received into everything it answers.

For tests that a client never passes its key on, whatever upstream sends back: the
key is appended to every string of the answer (error message, ErrorInfo metadata,
QuotaFailure and BadRequest details, Help links, text parts, ``modelVersion``,
``responseId``, ``finishMessage``, a proxy's HTML page), except the fields a client
must read to understand the answer at all (status, reasons, types, roles, base64
data, durations), so the answer is still classified as the step's outcome.
"""

from __future__ import annotations

from typing import Any

from .errors import ApiError
from .responses import Answer

#: Keys whose string values stay as they are: the answer must still parse and classify.
_KEEP = frozenset(
    {
        "@type",
        "status",
        "role",
        "mimeType",
        "mime_type",
        "data",
        "thoughtSignature",
        "thought_signature",
        "finishReason",
        "finish_reason",
        "blockReason",
        "block_reason",
        "reason",
        "retryDelay",
        "retry_delay",
    }
)


def _echo(value: Any, key: str) -> Any:
    if isinstance(value, dict):
        return {k: v if k in _KEEP and isinstance(v, str) else _echo(v, key) for k, v in value.items()}
    if isinstance(value, list):
        return [_echo(v, key) for v in value]
    if isinstance(value, str):
        return f"{value} [key {key}]"
    return value


def echo_error(error: ApiError, key: str) -> ApiError:
    """``error`` with ``key`` in its message, every detail, and an ErrorInfo metadata entry of its own."""
    details = _echo(error.details or [], key)
    for detail in details:
        if detail.get("@type", "").endswith("google.rpc.ErrorInfo"):
            detail.setdefault("metadata", {})["apiKey"] = key
    details.append({"@type": "type.googleapis.com/google.rpc.DebugInfo", "detail": f"request key {key}"})
    return ApiError(
        error.http_status,
        error.status,
        _echo(error.message, key),
        details,
        headers={**error.headers, "X-Echoed-Key": key},
        html=None if error.html is None else error.html + f"<p>key {key}</p>",
    )


def echo_answer(answer: Answer, key: str) -> None:
    """Put ``key`` into every text field of ``answer`` (in place), with a ``finishMessage`` where there is none."""
    answer.model_version = _echo(answer.model_version, key)
    answer.response_id = _echo(answer.response_id, key)
    chunks = [_echo(chunk, key) for chunk in answer.chunks]
    for chunk in chunks:
        for candidate in chunk.get("candidates", []):
            candidate.setdefault("finishMessage", f"finished for key {key}")
        feedback = chunk.get("promptFeedback")
        if isinstance(feedback, dict):
            feedback.setdefault("blockReasonMessage", f"blocked for key {key}")
    answer.chunks[:] = chunks
