"""Pure tests of classifying Gemini's 2xx answers: images, blocks, refusals, malformed bodies, streams.

Response shapes follow the shared gemini-api.md sections 3-5.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from imagegen_server.gemini.errors import ErrorKind, UpstreamError
from imagegen_server.gemini.response import BLOCK_FINISH_REASONS, ResponseAccumulator, decode_base64, parse_response
from imagegen_server.gemini.types import InlineImage
from tests.unit.gemini_samples import (
    BMP,
    DRAFT_PNG,
    GIF,
    JPEG,
    JPEG_PROGRESSIVE,
    MODEL,
    PNG,
    SIG_A,
    SIG_B,
    WEBP_ALPHA,
    WEBP_LOSSLESS,
    WEBP_LOSSY,
    b64,
    inline,
    make_image,
    ok_body,
)


def expect_error(body: Any) -> UpstreamError:
    with pytest.raises(UpstreamError) as info:
        parse_response(body if isinstance(body, bytes | str) else json.dumps(body), model=MODEL)
    return info.value


def envelope(code: int, status: str, message: str, *details: dict[str, Any]) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = list(details)
    return {"error": error}


# ---------------------------------------------------------------------------
# Successful answers
# ---------------------------------------------------------------------------


def test_success_skips_thought_drafts_and_keeps_signed_parts() -> None:
    body = ok_body(
        [
            {"text": "Planning the hat", "thought": True},
            {**inline(DRAFT_PNG), "thought": True},
            {**inline(make_image("PNG", (17, 13))), "thought": True},
            {"text": "Here is your cat with a wizard hat.", "thoughtSignature": b64(SIG_A)},
            {**inline(PNG), "thoughtSignature": b64(SIG_B)},
        ]
    )
    result = parse_response(json.dumps(body).encode(), model=MODEL)
    assert result.image == InlineImage(PNG, "image/png")
    assert (result.width, result.height) == (64, 48)
    assert result.thought_signature == SIG_B
    assert result.text == "Here is your cat with a wizard hat."
    assert result.finish_reason == "STOP"
    assert result.usage.prompt_tokens == 266
    assert result.usage.output_tokens == 1120
    assert result.usage.thoughts_tokens == 264
    assert result.usage.total_tokens == 1650
    assert result.model_version == MODEL
    assert result.response_id == "Il0taoSYJ5Cez7"
    assert [(p.text, p.image is not None, p.thought_signature) for p in result.parts] == [
        ("Here is your cat with a wizard hat.", False, SIG_A),
        (None, True, SIG_B),
    ]
    assert [d.data for d in result.drafts] == [DRAFT_PNG, make_image("PNG", (17, 13))]
    assert all(not p.thought for p in result.parts)


@pytest.mark.parametrize(
    ("data", "mime", "canonical", "size"),
    [
        (JPEG, "image/jpeg", "image/jpeg", (40, 30)),
        (JPEG, "image/jpg", "image/jpeg", (40, 30)),
        (JPEG_PROGRESSIVE, "image/jpeg", "image/jpeg", (33, 17)),
        (WEBP_LOSSY, "image/webp", "image/webp", (20, 10)),
        (WEBP_LOSSLESS, "image/webp", "image/webp", (21, 11)),
        (WEBP_ALPHA, "image/webp", "image/webp", (22, 12)),
        (GIF, "image/gif", "image/gif", (9, 7)),
        (BMP, "image/bmp", "image/bmp", (5, 3)),
        (PNG, "IMAGE/PNG; foo=bar", "image/png", (64, 48)),
    ],
)
def test_final_image_mime_type_is_read_not_assumed(
    data: bytes, mime: str, canonical: str, size: tuple[int, int]
) -> None:
    result = parse_response(ok_body([{**inline(data, mime), "thoughtSignature": b64(SIG_B)}]))
    assert result.image.mime_type == canonical
    assert result.image.data == data
    assert (result.width, result.height) == size


def test_missing_mime_type_is_sniffed() -> None:
    body = ok_body([{"inlineData": {"data": b64(WEBP_LOSSY)}}])
    assert parse_response(body).image.mime_type == "image/webp"


def test_text_first_with_signature_thenmake_image() -> None:
    result = parse_response(
        ok_body([{"text": "A cat.", "thoughtSignature": b64(SIG_A)}, {**inline(PNG), "thoughtSignature": "c2ln"}])
    )
    assert result.parts[0] == type(result.parts[0])(text="A cat.", thought_signature=SIG_A)
    assert result.thought_signature == b"sig"


def test_last_non_thought_image_is_the_result() -> None:
    result = parse_response(ok_body([inline(JPEG, "image/jpeg"), inline(PNG)]))
    assert result.image.mime_type == "image/png"
    assert len(result.parts) == 2


def test_text_parts_are_joined_with_newlines() -> None:
    result = parse_response(ok_body([{"text": "one"}, inline(PNG), {"text": "two"}]))
    assert result.text == "one\ntwo"


def test_mixed_camel_and_snake_case_response() -> None:
    body = {
        "candidates": [
            {
                "content": {
                    "role": "model",
                    "parts": [
                        {"inline_data": {"mime_type": "image/png", "data": b64(DRAFT_PNG)}, "thought": True},
                        {"text": "hi", "thought_signature": b64(SIG_A)},
                        {"inlineData": {"mime_type": "image/jpeg", "data": b64(JPEG)}, "thought_signature": "AQI="},
                    ],
                },
                "finish_reason": "STOP",
            }
        ],
        "usage_metadata": {"prompt_token_count": "12", "candidatesTokenCount": 1120, "total_token_count": 1132},
        "model_version": "gemini-3.1-flash-image",
        "response_id": "r-1",
    }
    result = parse_response(body)
    assert result.image.mime_type == "image/jpeg"
    assert result.thought_signature == b"\x01\x02"
    assert result.parts[0].thought_signature == SIG_A
    assert result.finish_reason == "STOP"
    assert result.usage.prompt_tokens == 12
    assert result.usage.output_tokens == 1120
    assert result.usage.total_tokens == 1132
    assert result.model_version == "gemini-3.1-flash-image"
    assert result.response_id == "r-1"
    assert len(result.drafts) == 1


def test_url_safe_unpadded_base64_is_accepted() -> None:
    sig = b"\xfb\xff\xfe"  # standard base64 "+//+", URL-safe "-__-"
    body = ok_body([{**inline(PNG), "thoughtSignature": base64.urlsafe_b64encode(sig).decode().rstrip("=")}])
    assert parse_response(body).thought_signature == sig


def test_unusable_parts_are_skipped_and_broken_drafts_dropped() -> None:
    body = ok_body(
        [
            {"functionCall": {"name": "x", "args": {}}},
            {"inlineData": {"mimeType": "image/png", "data": b64(b"not a png")}, "thought": True},
            inline(PNG),
        ]
    )
    result = parse_response(body)
    assert len(result.parts) == 1
    assert result.drafts == ()


def test_image_with_max_tokens_is_still_a_success() -> None:
    assert parse_response(ok_body([inline(PNG)], finish="MAX_TOKENS")).finish_reason == "MAX_TOKENS"


# ---------------------------------------------------------------------------
# 200 answers without an image
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("candidates", [[], None])
def test_prompt_blocked(candidates: list[Any] | None) -> None:
    body: dict[str, Any] = {
        "promptFeedback": {"blockReason": "PROHIBITED_CONTENT", "blockReasonMessage": "nope"},
        "usageMetadata": {"promptTokenCount": 12, "totalTokenCount": 12},
        "modelVersion": "gemini-2.5-flash-image",
        "responseId": "x",
    }
    if candidates is not None:
        body["candidates"] = candidates
    err = expect_error(body)
    assert err.kind is ErrorKind.CONTENT_BLOCKED
    assert (err.block_side, err.block_reason) == ("prompt", "PROHIBITED_CONTENT")
    assert "PROHIBITED_CONTENT" in err.message
    assert "nope" in err.message


@pytest.mark.parametrize("reason", sorted(BLOCK_FINISH_REASONS))
def test_output_block_finish_reasons(reason: str) -> None:
    err = expect_error(
        {"candidates": [{"finishReason": reason, "finishMessage": "filtered", "index": 0}], "usageMetadata": {}}
    )
    assert err.kind is ErrorKind.CONTENT_BLOCKED
    assert (err.block_side, err.block_reason, err.finish_reason) == ("output", reason, reason)
    assert "filtered" in err.message


def test_output_block_wins_even_if_an_image_slipped_through() -> None:
    err = expect_error(ok_body([inline(PNG)], finish="IMAGE_SAFETY"))
    assert err.kind is ErrorKind.CONTENT_BLOCKED


def test_text_only_refusal_is_no_image_with_the_text() -> None:
    err = expect_error(ok_body([{"text": "Which cat do you mean?", "thoughtSignature": b64(SIG_A)}]))
    assert err.kind is ErrorKind.NO_IMAGE
    assert err.model_text == "Which cat do you mean?"
    assert err.finish_reason == "STOP"
    assert "Which cat" in err.message


@pytest.mark.parametrize("reason", ["NO_IMAGE", "IMAGE_OTHER", "OTHER", "LANGUAGE"])
def test_no_image_finish_reasons(reason: str) -> None:
    err = expect_error({"candidates": [{"finishReason": reason, "index": 0}]})
    assert err.kind is ErrorKind.NO_IMAGE
    assert err.finish_reason == reason
    assert err.model_text == ""


def test_missing_thought_signature_finish_reason() -> None:
    err = expect_error({"candidates": [{"finishReason": "MISSING_THOUGHT_SIGNATURE"}]})
    assert err.kind is ErrorKind.MISSING_THOUGHT_SIGNATURE


def test_error_envelope_inside_a_200_body_is_classified() -> None:
    err = expect_error(envelope(503, "UNAVAILABLE", "The model is overloaded."))
    assert err.kind is ErrorKind.UNAVAILABLE
    assert err.http_status == 503


# ---------------------------------------------------------------------------
# Malformed 200 answers
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"",
        b"[1, 2]",
        json.dumps({"candidates": "nope"}).encode(),
        json.dumps({"candidates": [{"content": {"parts": [{"text": 5}]}}]}).encode(),
        json.dumps({"usageMetadata": {}}).encode(),
        json.dumps(ok_body([{"inlineData": {"mimeType": "image/png", "data": "%%%not base64%%%"}}])).encode(),
        json.dumps(ok_body([{**inline(PNG), "thoughtSignature": "a"}])).encode(),
        json.dumps(ok_body([inline(b"plain text, not pixels")])).encode(),
        json.dumps(ok_body([inline(PNG[:-20])])).encode(),  # truncated PNG
        json.dumps(ok_body([inline(JPEG[:40], "image/jpeg")])).encode(),
        json.dumps(ok_body([inline(PNG, "image/jpeg")])).encode(),  # stated type is wrong
        json.dumps(ok_body([inline(PNG, "application/octet-stream")])).encode(),
        json.dumps(ok_body([inline(b"\x00" * 50, "image/heic")])).encode(),
        json.dumps(ok_body([inline(b"")])).encode(),
    ],
    ids=[
        "bad-json",
        "empty",
        "not-object",
        "candidates-not-list",
        "text-not-string",
        "no-candidates-no-block",
        "bad-base64",
        "bad-signature-base64",
        "not-an-image",
        "truncated-png",
        "truncated-jpeg",
        "mime-mismatch",
        "not-image-mime",
        "unreadable-other-type",
        "empty-image",
    ],
)
def test_malformed_answers(body: bytes) -> None:
    err = expect_error(body)
    assert err.kind is ErrorKind.MALFORMED, err.message
    assert err.model == MODEL


# ---------------------------------------------------------------------------
# Streaming accumulation
# ---------------------------------------------------------------------------


def test_accumulator_merges_chunks_and_reports_drafts_as_they_come() -> None:
    acc = ResponseAccumulator(model=MODEL, streaming=True)
    chunk = {"candidates": [{"content": {"role": "model", "parts": [{**inline(DRAFT_PNG), "thought": True}]}}]}
    assert [d.data for d in acc.add(chunk)] == [DRAFT_PNG]
    assert acc.add({"candidates": [{"content": {"parts": [{"text": "Here", "thoughtSignature": "c2lnMQ=="}]}}]}) == []
    last = ok_body([{**inline(PNG), "thoughtSignature": "c2lnMg=="}])
    assert acc.add_json(json.dumps(last)) == []
    result = acc.result()
    assert acc.chunks == 3
    assert result.text == "Here"
    assert [p.thought_signature for p in result.parts] == [b"sig1", b"sig2"]
    assert result.drafts == (InlineImage(DRAFT_PNG, "image/png"),)
    assert result.usage.total_tokens == 1650


def test_stream_that_stops_before_finish_reason_is_unavailable() -> None:
    acc = ResponseAccumulator(model=MODEL, streaming=True)
    acc.add({"candidates": [{"content": {"parts": [{"text": "Here is"}]}}]})
    with pytest.raises(UpstreamError) as info:
        acc.result()
    assert info.value.kind is ErrorKind.UNAVAILABLE


def test_empty_stream_is_malformed() -> None:
    with pytest.raises(UpstreamError) as info:
        ResponseAccumulator(streaming=True).result()
    assert info.value.kind is ErrorKind.MALFORMED


def test_error_event_in_stream_is_classified_by_its_code() -> None:
    acc = ResponseAccumulator(model=MODEL, streaming=True)
    with pytest.raises(UpstreamError) as info:
        acc.add(envelope(429, "RESOURCE_EXHAUSTED", "slow down"))
    assert info.value.kind is ErrorKind.RATE_LIMITED


# ---------------------------------------------------------------------------
# Base64
# ---------------------------------------------------------------------------


def test_decode_base64_forms() -> None:
    assert decode_base64("c2ln") == b"sig"
    assert decode_base64("c2lnMQ") == b"sig1"
    for bad in ("c2lnM", "c2 ln", 5, None, "****"):
        with pytest.raises(UpstreamError):
            decode_base64(bad)
