"""Pure tests of Gemini's wire format: request JSON, response/error classification, SSE framing.

Response shapes follow the shared gemini-api.md sections 3-5.
"""

from __future__ import annotations

import base64
import email.utils
import io
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from imagegen_server.gemini import wire
from imagegen_server.gemini.errors import ErrorKind, FieldViolation, UpstreamError
from imagegen_server.gemini.sse import SSEError, SSEParser
from imagegen_server.gemini.types import Content, InlineImage, Part, UpstreamRequest

MODEL = "gemini-3-pro-image-preview"


def _image(fmt: str, size: tuple[int, int] = (8, 6), mode: str = "RGB", **save: Any) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, (200, 30, 60) if mode == "RGB" else (200, 30, 60, 128)).save(buf, fmt, **save)
    return buf.getvalue()


PNG = _image("PNG", (64, 48))
DRAFT_PNG = _image("PNG", (16, 12))
JPEG = _image("JPEG", (40, 30))
JPEG_PROGRESSIVE = _image("JPEG", (33, 17), progressive=True)
WEBP_LOSSY = _image("WEBP", (20, 10), quality=50)
WEBP_LOSSLESS = _image("WEBP", (21, 11), lossless=True)
WEBP_ALPHA = _image("WEBP", (22, 12), mode="RGBA", quality=50)
GIF = _image("GIF", (9, 7))
BMP = _image("BMP", (5, 3))
SIG_A = bytes(range(256))
SIG_B = b"\x00\xff sig B \xfe\x01"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def inline(data: bytes, mime: str = "image/png", **extra: Any) -> dict[str, Any]:
    return {"inlineData": {"mimeType": mime, "data": b64(data)}, **extra}


def ok_body(parts: list[dict[str, Any]], finish: str = "STOP", **extra: Any) -> dict[str, Any]:
    return {
        "candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": finish, "index": 0}],
        "usageMetadata": {
            "promptTokenCount": 266,
            "candidatesTokenCount": 1120,
            "totalTokenCount": 1650,
            "thoughtsTokenCount": 264,
        },
        "modelVersion": MODEL,
        "responseId": "Il0taoSYJ5Cez7",
        **extra,
    }


def expect_error(body: Any) -> UpstreamError:
    with pytest.raises(UpstreamError) as info:
        wire.parse_response(body if isinstance(body, bytes | str) else json.dumps(body), model=MODEL)
    return info.value


def http_error(status: int, body: Any, headers: dict[str, str] | None = None, **kw: Any) -> UpstreamError:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return wire.classify_http_error(status, raw, headers, model=MODEL, **kw)


def envelope(code: int, status: str, message: str, *details: dict[str, Any]) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = list(details)
    return {"error": error}


# ---------------------------------------------------------------------------
# Request building
# ---------------------------------------------------------------------------


def _request(**kw: Any) -> UpstreamRequest:
    defaults: dict[str, Any] = {
        "model": MODEL,
        "contents": (Content("user", (Part(text="a cat"),)),),
    }
    return UpstreamRequest(**(defaults | kw))


def test_minimal_request_body() -> None:
    body = wire.build_request_body(_request())
    assert body == {
        "contents": [{"role": "user", "parts": [{"text": "a cat"}]}],
        "generationConfig": {"responseModalities": ["TEXT", "IMAGE"]},
    }


def test_seed_zero_is_sent_and_none_is_not() -> None:
    assert wire.build_request_body(_request(seed=0))["generationConfig"]["seed"] == 0
    assert "seed" not in wire.build_request_body(_request(seed=None))["generationConfig"]


def test_candidate_count_is_never_sent() -> None:
    body = wire.build_request_body(_request(seed=5, aspect_ratio="1:1", include_thoughts=True))
    assert "candidateCount" not in body["generationConfig"]


@pytest.mark.parametrize(
    ("aspect", "size", "expected"),
    [
        ("16:9", "2K", {"aspectRatio": "16:9", "imageSize": "2K"}),
        ("4:3", None, {"aspectRatio": "4:3"}),
        (None, "512", {"imageSize": "512"}),
        (None, None, None),
    ],
)
def test_image_config_carries_only_present_values(
    aspect: str | None, size: str | None, expected: dict[str, str] | None
) -> None:
    config = wire.build_request_body(_request(aspect_ratio=aspect, image_size=size))["generationConfig"]
    assert config.get("imageConfig") == expected


def test_system_instruction_thinking_and_modalities() -> None:
    body = wire.build_request_body(
        _request(system_instruction="be strict", include_thoughts=True, response_modalities=("IMAGE",))
    )
    assert body["systemInstruction"] == {"role": "user", "parts": [{"text": "be strict"}]}
    assert body["generationConfig"]["thinkingConfig"] == {"includeThoughts": True}
    assert body["generationConfig"]["responseModalities"] == ["IMAGE"]
    plain = wire.build_request_body(_request())
    assert "systemInstruction" not in plain
    assert "thinkingConfig" not in plain["generationConfig"]


def test_history_parts_are_echoed_in_order_with_flags() -> None:
    history = (
        Content("user", (Part(text="make a cat"), Part(image=InlineImage(JPEG, "image/jpeg")))),
        Content(
            "model",
            (
                Part(text="thinking...", thought=True),
                Part(text="ok", thought_signature=SIG_A),
                Part(image=InlineImage(PNG, "image/png"), thought_signature=SIG_B),
                Part(thought_signature=b"only-sig"),
            ),
        ),
        Content("user", (Part(text="make it blue"),)),
    )
    body = wire.build_request_body(_request(contents=history))
    assert [c["role"] for c in body["contents"]] == ["user", "model", "user"]
    assert body["contents"][0]["parts"][1] == {"inlineData": {"mimeType": "image/jpeg", "data": b64(JPEG)}}
    assert body["contents"][1]["parts"] == [
        {"text": "thinking...", "thought": True},
        {"text": "ok", "thoughtSignature": b64(SIG_A)},
        {"inlineData": {"mimeType": "image/png", "data": b64(PNG)}, "thoughtSignature": b64(SIG_B)},
        {"text": "", "thoughtSignature": b64(b"only-sig")},
    ]


def test_part_with_text_and_image_is_a_caller_bug() -> None:
    bad = Content("user", (Part(text="x", image=InlineImage(PNG, "image/png")),))
    with pytest.raises(ValueError, match="not both"):
        wire.build_request_body(_request(contents=(bad,)))


def test_signatures_round_trip_byte_for_byte() -> None:
    # Response -> parts -> next request: the exact base64 text and bytes survive.
    sig_text_b64, sig_image_b64 = b64(SIG_A), b64(SIG_B)
    result = wire.parse_response(
        ok_body(
            [
                {"text": "Here you go", "thoughtSignature": sig_text_b64},
                {**inline(PNG), "thoughtSignature": sig_image_b64},
            ]
        )
    )
    assert result.thought_signature == SIG_B
    assert [p.thought_signature for p in result.parts] == [SIG_A, SIG_B]
    body = wire.build_request_body(_request(contents=(Content("model", result.parts),)))
    sent = body["contents"][0]["parts"]
    assert [p["thoughtSignature"] for p in sent] == [sig_text_b64, sig_image_b64]
    assert base64.b64decode(sent[1]["thoughtSignature"]) == SIG_B
    assert sent[1]["inlineData"]["data"] == b64(PNG)


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=300))
def test_any_signature_round_trips(signature: bytes) -> None:
    result = wire.parse_response(ok_body([{**inline(PNG), "thoughtSignature": b64(signature)}]))
    assert result.thought_signature == signature
    body = wire.build_request_body(_request(contents=(Content("model", result.parts),)))
    assert body["contents"][0]["parts"][0]["thoughtSignature"] == b64(signature)


def test_encode_request_is_compact_utf8_json() -> None:
    raw = wire.encode_request(_request(contents=(Content("user", (Part(text="chat noir ✓"),)),)))
    assert b'":' in raw
    assert b'": ' not in raw
    assert b", " not in raw
    assert json.loads(raw)["contents"][0]["parts"][0]["text"] == "chat noir ✓"


@pytest.mark.parametrize(
    ("base", "version", "model", "stream", "url"),
    [
        (
            "https://generativelanguage.googleapis.com/",
            "v1beta",
            "gemini-3.1-flash-image",
            False,
            "https://generativelanguage.googleapis.com/v1beta/models/gemini-3.1-flash-image:generateContent",
        ),
        (
            "http://127.0.0.1:8765",
            "v1",
            "models/gemini-3-pro-image",
            True,
            "http://127.0.0.1:8765/v1/models/gemini-3-pro-image:streamGenerateContent?alt=sse",
        ),
        ("http://h", "v1beta", "tunedModels/x", False, "http://h/v1beta/tunedModels/x:generateContent"),
    ],
)
def test_build_url(base: str, version: str, model: str, stream: bool, url: str) -> None:
    assert wire.build_url(base, version, model, stream=stream) == url


@pytest.mark.parametrize(("version", "model"), [("beta", "m"), ("v1/../x", "m"), ("v1", "")])
def test_build_url_rejects_bad_input(version: str, model: str) -> None:
    with pytest.raises(ValueError):
        wire.build_url("http://h", version, model, stream=False)


# ---------------------------------------------------------------------------
# Successful answers
# ---------------------------------------------------------------------------


def test_success_skips_thought_drafts_and_keeps_signed_parts() -> None:
    body = ok_body(
        [
            {"text": "Planning the hat", "thought": True},
            {**inline(DRAFT_PNG), "thought": True},
            {**inline(_image("PNG", (17, 13))), "thought": True},
            {"text": "Here is your cat with a wizard hat.", "thoughtSignature": b64(SIG_A)},
            {**inline(PNG), "thoughtSignature": b64(SIG_B)},
        ]
    )
    result = wire.parse_response(json.dumps(body).encode(), model=MODEL)
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
    assert [d.data for d in result.drafts] == [DRAFT_PNG, _image("PNG", (17, 13))]
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
    result = wire.parse_response(ok_body([{**inline(data, mime), "thoughtSignature": b64(SIG_B)}]))
    assert result.image.mime_type == canonical
    assert result.image.data == data
    assert (result.width, result.height) == size


def test_missing_mime_type_is_sniffed() -> None:
    body = ok_body([{"inlineData": {"data": b64(WEBP_LOSSY)}}])
    assert wire.parse_response(body).image.mime_type == "image/webp"


def test_text_first_with_signature_then_image() -> None:
    result = wire.parse_response(
        ok_body([{"text": "A cat.", "thoughtSignature": b64(SIG_A)}, {**inline(PNG), "thoughtSignature": "c2ln"}])
    )
    assert result.parts[0] == type(result.parts[0])(text="A cat.", thought_signature=SIG_A)
    assert result.thought_signature == b"sig"


def test_last_non_thought_image_is_the_result() -> None:
    result = wire.parse_response(ok_body([inline(JPEG, "image/jpeg"), inline(PNG)]))
    assert result.image.mime_type == "image/png"
    assert len(result.parts) == 2


def test_text_parts_are_joined_with_newlines() -> None:
    result = wire.parse_response(ok_body([{"text": "one"}, inline(PNG), {"text": "two"}]))
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
    result = wire.parse_response(body)
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
    assert wire.parse_response(body).thought_signature == sig


def test_unusable_parts_are_skipped_and_broken_drafts_dropped() -> None:
    body = ok_body(
        [
            {"functionCall": {"name": "x", "args": {}}},
            {"inlineData": {"mimeType": "image/png", "data": b64(b"not a png")}, "thought": True},
            inline(PNG),
        ]
    )
    result = wire.parse_response(body)
    assert len(result.parts) == 1
    assert result.drafts == ()


def test_image_with_max_tokens_is_still_a_success() -> None:
    assert wire.parse_response(ok_body([inline(PNG)], finish="MAX_TOKENS")).finish_reason == "MAX_TOKENS"


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


@pytest.mark.parametrize("reason", sorted(wire.BLOCK_FINISH_REASONS))
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
    acc = wire.ResponseAccumulator(model=MODEL, streaming=True)
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
    acc = wire.ResponseAccumulator(model=MODEL, streaming=True)
    acc.add({"candidates": [{"content": {"parts": [{"text": "Here is"}]}}]})
    with pytest.raises(UpstreamError) as info:
        acc.result()
    assert info.value.kind is ErrorKind.UNAVAILABLE


def test_empty_stream_is_malformed() -> None:
    with pytest.raises(UpstreamError) as info:
        wire.ResponseAccumulator(streaming=True).result()
    assert info.value.kind is ErrorKind.MALFORMED


def test_error_event_in_stream_is_classified_by_its_code() -> None:
    acc = wire.ResponseAccumulator(model=MODEL, streaming=True)
    with pytest.raises(UpstreamError) as info:
        acc.add(envelope(429, "RESOURCE_EXHAUSTED", "slow down"))
    assert info.value.kind is ErrorKind.RATE_LIMITED


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
    env = wire.parse_error_envelope(json.dumps(API_KEY_INVALID))
    assert env is not None
    assert env.code == 400
    assert env.reason == "API_KEY_INVALID"
    assert env.domain == "googleapis.com"
    assert env.metadata == (("service", "generativelanguage.googleapis.com"),)
    assert env.localized_message == "API key not valid. Please pass a valid API key."
    quota = wire.parse_error_envelope(QUOTA_429)
    assert quota is not None
    assert quota.help_links == (
        ("Learn more about Gemini API quotas", "https://ai.google.dev/gemini-api/docs/rate-limits"),
    )
    assert quota.retry_delay == 22.0


def test_parse_error_envelope_accepts_snake_case_and_rejects_non_envelopes() -> None:
    env = wire.parse_error_envelope(
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
        assert wire.parse_error_envelope(not_envelope) is None


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("58s", 58.0), ("0.5s", 0.5), ("45.837906927s", 45.837906927), ("-1s", 0.0), ("58", None), (3, None)],
)
def test_parse_duration(value: Any, seconds: float | None) -> None:
    assert wire.parse_duration(value) == (pytest.approx(seconds) if seconds is not None else None)


# ---------------------------------------------------------------------------
# Image probing and base64
# ---------------------------------------------------------------------------


def test_probe_image_rejects_non_images() -> None:
    with pytest.raises(ValueError):
        wire.probe_image(b"hello", "")
    with pytest.raises(ValueError):
        wire.probe_image(PNG, "text/plain")
    with pytest.raises(ValueError, match="image/png"):
        wire.probe_image(PNG, "image/webp")


def test_decode_base64_forms() -> None:
    assert wire.decode_base64("c2ln") == b"sig"
    assert wire.decode_base64("c2lnMQ") == b"sig1"
    for bad in ("c2lnM", "c2 ln", 5, None, "****"):
        with pytest.raises(UpstreamError):
            wire.decode_base64(bad)


# ---------------------------------------------------------------------------
# SSE framing
# ---------------------------------------------------------------------------


def _events(*chunks: bytes) -> list[str]:
    parser = SSEParser()
    out: list[str] = []
    for chunk in chunks:
        out += parser.feed(chunk)
    return out + parser.close()


def test_sse_lf_and_crlf() -> None:
    assert _events(b'data: {"a":1}\n\ndata: {"b":2}\r\n\r\n') == ['{"a":1}', '{"b":2}']


def test_sse_multiline_data_is_joined_and_prefix_space_optional() -> None:
    assert _events(b'data: {"a":\ndata:1}\n\n') == ['{"a":\n1}']


def test_sse_last_event_needs_no_blank_line() -> None:
    assert _events(b'data: {"a":1}') == ['{"a":1}']
    assert _events(b'data: {"a":1}\r\n') == ['{"a":1}']


def test_sse_ignores_comments_and_other_fields() -> None:
    assert _events(b": keep-alive\nevent: message\nid: 3\nretry: 10\ndata: {}\n\n\n\n") == ["{}"]


def test_sse_raw_json_error_body_line_by_line() -> None:
    body = json.dumps(envelope(503, "UNAVAILABLE", "overloaded {really}"), indent=2).replace("\n", "\r\n")
    (event,) = _events(body.encode())
    assert json.loads(event)["error"]["message"] == "overloaded {really}"


def test_sse_raw_json_with_escaped_quotes_and_braces_in_strings() -> None:
    body = {"error": {"code": 500, "message": 'a "{[" b \\', "status": "INTERNAL"}}
    text = json.dumps(body, indent=1)
    (event,) = _events(text.encode() + b"\n")
    assert json.loads(event) == body


def test_sse_raw_json_after_data_events() -> None:
    events = _events(b'data: {"a":1}\n\n{"error": {"code": 500,\n "message": "data: x"}}\n')
    assert events[0] == '{"a":1}'
    assert json.loads(events[1])["error"]["message"] == "data: x"


def test_sse_stray_text_is_passed_on_for_the_caller_to_reject() -> None:
    assert _events(b"<html>Bad Gateway</html>\n") == ["<html>Bad Gateway</html>"]


def test_sse_errors() -> None:
    with pytest.raises(SSEError, match="unbalanced"):
        _events(b'{"error": {"code": 500,\n')
    with pytest.raises(SSEError, match="UTF-8"):
        _events(b"data: \xff\xfe\n\n")
    with pytest.raises(SSEError, match="longer"):
        SSEParser(max_event_bytes=10).feed(b"data: 0123456789abcdef")
    with pytest.raises(SSEError, match="larger"):
        SSEParser(max_event_bytes=10).feed(b"data: 012345\ndata: 6789abc\n")


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.text(alphabet=st.characters(exclude_characters="\r\n"), max_size=40), min_size=1, max_size=5),
    st.sampled_from([b"\n", b"\r\n"]),
    st.lists(st.integers(min_value=0, max_value=400), max_size=8),
)
def test_sse_chunk_boundaries_do_not_matter(payloads: list[str], eol: bytes, cuts: list[int]) -> None:
    stream = b"".join(b"data: " + json.dumps(p).encode() + eol + eol for p in payloads)
    points = sorted({min(c, len(stream)) for c in cuts})
    pieces = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    assert [json.loads(e) for e in _events(*pieces)] == payloads
