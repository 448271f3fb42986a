"""Pure tests of the request Gemini receives: body JSON, URL, and thought signatures echoed byte for byte."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imagegen_server.gemini.request import build_request_body, build_url, encode_request
from imagegen_server.gemini.response import parse_response
from imagegen_server.gemini.types import Content, InlineImage, Part, UpstreamRequest
from tests.unit.gemini_samples import JPEG, MODEL, PNG, SIG_A, SIG_B, b64, inline, ok_body


def _request(**kw: Any) -> UpstreamRequest:
    defaults: dict[str, Any] = {
        "model": MODEL,
        "contents": (Content("user", (Part(text="a cat"),)),),
    }
    return UpstreamRequest(**(defaults | kw))


def test_minimal_request_body() -> None:
    body = build_request_body(_request())
    assert body == {
        "contents": [{"role": "user", "parts": [{"text": "a cat"}]}],
        "generationConfig": {"responseModalities": ["TEXT", "IMAGE"]},
    }


def test_seed_zero_is_sent_and_none_is_not() -> None:
    assert build_request_body(_request(seed=0))["generationConfig"]["seed"] == 0
    assert "seed" not in build_request_body(_request(seed=None))["generationConfig"]


def test_candidate_count_is_never_sent() -> None:
    body = build_request_body(_request(seed=5, aspect_ratio="1:1", include_thoughts=True))
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
    config = build_request_body(_request(aspect_ratio=aspect, image_size=size))["generationConfig"]
    assert config.get("imageConfig") == expected


def test_system_instruction_thinking_and_modalities() -> None:
    body = build_request_body(
        _request(system_instruction="be strict", include_thoughts=True, response_modalities=("IMAGE",))
    )
    assert body["systemInstruction"] == {"role": "user", "parts": [{"text": "be strict"}]}
    assert body["generationConfig"]["thinkingConfig"] == {"includeThoughts": True}
    assert body["generationConfig"]["responseModalities"] == ["IMAGE"]
    plain = build_request_body(_request())
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
    body = build_request_body(_request(contents=history))
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
        build_request_body(_request(contents=(bad,)))


def test_signatures_round_trip_byte_for_byte() -> None:
    # Response -> parts -> next request: the exact base64 text and bytes survive.
    sig_text_b64, sig_image_b64 = b64(SIG_A), b64(SIG_B)
    result = parse_response(
        ok_body(
            [
                {"text": "Here you go", "thoughtSignature": sig_text_b64},
                {**inline(PNG), "thoughtSignature": sig_image_b64},
            ]
        )
    )
    assert result.thought_signature == SIG_B
    assert [p.thought_signature for p in result.parts] == [SIG_A, SIG_B]
    body = build_request_body(_request(contents=(Content("model", result.parts),)))
    sent = body["contents"][0]["parts"]
    assert [p["thoughtSignature"] for p in sent] == [sig_text_b64, sig_image_b64]
    assert base64.b64decode(sent[1]["thoughtSignature"]) == SIG_B
    assert sent[1]["inlineData"]["data"] == b64(PNG)


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=300))
def test_any_signature_round_trips(signature: bytes) -> None:
    result = parse_response(ok_body([{**inline(PNG), "thoughtSignature": b64(signature)}]))
    assert result.thought_signature == signature
    body = build_request_body(_request(contents=(Content("model", result.parts),)))
    assert body["contents"][0]["parts"][0]["thoughtSignature"] == b64(signature)


def test_encode_request_is_compact_utf8_json() -> None:
    raw = encode_request(_request(contents=(Content("user", (Part(text="chat noir ✓"),)),)))
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
    assert build_url(base, version, model, stream=stream) == url


@pytest.mark.parametrize(("version", "model"), [("beta", "m"), ("v1/../x", "m"), ("v1", "")])
def test_build_url_rejects_bad_input(version: str, model: str) -> None:
    with pytest.raises(ValueError):
        build_url("http://h", version, model, stream=False)
