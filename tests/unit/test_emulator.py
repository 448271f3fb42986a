"""The Gemini emulator, over real HTTP on a loopback port, with plain aiohttp.

Each test starts its own :class:`Emulator` (a few milliseconds) and speaks
Gemini's wire format to it, checking statuses, exact texts and shapes from the
shared ``gemini-api.md``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from PIL import Image

import imagegen
from imagegen_server.app import run_server
from imagegen_server.config import ServerConfig
from imagegen_server.emulator import SKIP_SENTINEL, Emulator, image_signature, parse_step
from imagegen_server.emulator.responses import output_tokens
from imagegen_server.emulator.steps import parse_steps
from imagegen_server.models import MODELS, find_model

PRO = "gemini-3-pro-image-preview"
FLASH = "gemini-3.1-flash-image"
NB25 = "gemini-2.5-flash-image"

Json = dict[str, Any]


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    async with Emulator() as emulator:
        yield emulator


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


class Call:
    """The result of one HTTP call."""

    def __init__(self, status: int, headers: Any, raw: bytes) -> None:
        self.status = status
        self.headers = headers
        self.raw = raw

    @property
    def json(self) -> Any:
        return json.loads(self.raw)

    @property
    def error(self) -> Json:
        return dict(self.json["error"])

    @property
    def parts(self) -> list[Json]:
        return list(self.json["candidates"][0]["content"]["parts"])

    def final_image(self) -> Image.Image:
        part = next(p for p in self.parts if "inlineData" in p and not p.get("thought"))
        return Image.open(io.BytesIO(base64.b64decode(part["inlineData"]["data"])))


def url(emu: Emulator, model: str = PRO, *, method: str = "generateContent", version: str = "v1beta") -> str:
    return f"{emu.base_url}/{version}/models/{model}:{method}"


async def post(
    http: aiohttp.ClientSession,
    emu: Emulator,
    body: Any,
    *,
    model: str = PRO,
    stream: bool = False,
    key: str | None = "default",
    headers: dict[str, str] | None = None,
    version: str = "v1beta",
    target: str | None = None,
) -> Call:
    method = "streamGenerateContent?alt=sse" if stream else "generateContent"
    all_headers = dict(headers or {})
    if key is not None:
        all_headers["x-goog-api-key"] = emu.api_key if key == "default" else key
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    all_headers["Content-Type"] = "application/json"
    async with http.post(
        target or url(emu, model, method=method, version=version), data=data, headers=all_headers
    ) as resp:
        return Call(resp.status, resp.headers, await resp.read())


def prompt(text: str, **config: Any) -> Json:
    body: Json = {"contents": [{"role": "user", "parts": [{"text": text}]}]}
    if config:
        body["generationConfig"] = config
    return body


def png_bytes(color: tuple[int, int, int] = (200, 10, 10), size: tuple[int, int] = (8, 8)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, "PNG")
    return out.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def sse_events(raw: bytes) -> list[Json]:
    text = raw.decode()
    assert text.endswith("\r\n\r\n")
    events = text.split("\r\n\r\n")[:-1]
    out = []
    for event in events:
        assert event.startswith("data: ") and "\n" not in event, event[:80]
        out.append(json.loads(event.removeprefix("data: ")))
    return out


# --- success -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "ratio", "size", "expected"),
    [
        (FLASH, "16:9", "2K", (2752, 1536)),
        (FLASH, "1:1", "512", (512, 512)),
        (FLASH, "8:1", None, (3072, 384)),
        (PRO, "4:5", "1K", (928, 1152)),
        (PRO, None, None, (1024, 1024)),
        (NB25, "21:9", None, (1536, 672)),
        (NB25, "9:16", None, (768, 1344)),
    ],
)
async def test_png_at_the_models_pixel_size(
    emu: Emulator,
    http: aiohttp.ClientSession,
    model: str,
    ratio: str | None,
    size: str | None,
    expected: tuple[int, int],
) -> None:
    image_config = {k: v for k, v in {"aspectRatio": ratio, "imageSize": size}.items() if v}
    call = await post(http, emu, prompt("a lighthouse", seed=3, imageConfig=image_config), model=model)
    assert call.status == 200, call.raw[:300]
    image = call.final_image()
    assert image.format == "PNG"
    assert image.size == expected
    spec = find_model(model)
    assert spec is not None
    assert image.size == spec.pixel_size(ratio or "1:1", size or "")


async def test_response_shape_gemini3(emu: Emulator, http: aiohttp.ClientSession) -> None:
    call = await post(http, emu, prompt("a fox", seed=1))
    body = call.json
    assert call.headers["Content-Type"].startswith("application/json")
    cand = body["candidates"][0]
    assert cand["finishReason"] == "STOP" and cand["index"] == 0 and cand["content"]["role"] == "model"
    text, image = cand["content"]["parts"]
    # Section 3: the first text after the (hidden) thoughts and the final image are signed.
    assert text["text"] and text["thoughtSignature"]
    assert image["inlineData"]["mimeType"] == "image/png"
    png = base64.b64decode(image["inlineData"]["data"])
    assert base64.b64decode(image["thoughtSignature"]) == image_signature(png)
    usage = body["usageMetadata"]
    assert {"modality": "IMAGE", "tokenCount": 1120} in usage["candidatesTokensDetails"]
    assert usage["totalTokenCount"] == (
        usage["promptTokenCount"] + usage["candidatesTokenCount"] + usage["thoughtsTokenCount"]
    )
    assert body["modelVersion"] == PRO and body["responseId"]


@pytest.mark.parametrize(
    ("model", "size", "tokens"),
    [(PRO, "2K", 1120), (PRO, "4K", 2000), (FLASH, "512", 747), (FLASH, "2K", 1680), (FLASH, "4K", 2520)],
)
async def test_output_tokens_per_model_and_tier(
    emu: Emulator, http: aiohttp.ClientSession, model: str, size: str, tokens: int
) -> None:
    """gemini-api.md's table differs per model: 3 Pro bills 1120 at 2K and 2000 at 4K."""
    call = await post(
        http, emu, prompt("a fox", responseModalities=["IMAGE"], imageConfig={"imageSize": size}), model=model
    )
    usage = call.json["usageMetadata"]
    assert usage["candidatesTokensDetails"] == [{"modality": "IMAGE", "tokenCount": tokens}]
    assert usage["candidatesTokenCount"] == tokens


def test_every_model_and_tier_has_an_output_token_count() -> None:
    for spec in MODELS:
        for tier in spec.image_sizes or ("",):
            assert output_tokens(spec, tier) > 0, (spec.name, tier)


async def test_image_only_and_gemini25_has_no_signatures(emu: Emulator, http: aiohttp.ClientSession) -> None:
    only_image = await post(http, emu, prompt("a fox", responseModalities=["image"]))
    assert [list(p) for p in only_image.parts] == [["inlineData", "thoughtSignature"]]
    nb25 = await post(http, emu, prompt("a fox"), model=NB25)
    assert all("thoughtSignature" not in p for p in nb25.parts)
    assert nb25.json["usageMetadata"]["candidatesTokensDetails"][-1]["tokenCount"] == 1290


async def test_deterministic_per_seed_and_marker_is_invisible(emu: Emulator, http: aiohttp.ClientSession) -> None:
    scenario = emu.scenario("ok")

    async def image(text: str, **config: Any) -> bytes:
        call = await post(http, emu, prompt(text, **config), model=FLASH)
        return base64.b64decode(call.parts[-1]["inlineData"]["data"])

    first = await image("a red boat", seed=7)
    assert await image("a red boat", seed=7) == first
    assert await image(f"a red boat {scenario.marker}", seed=7) == first
    assert scenario.stats.received == 1
    assert await image("a red boat", seed=8) != first
    assert await image("a blue boat", seed=7) != first
    # No seed: the emulator picks one, so two calls differ.
    assert await image("a red boat") != await image("a red boat")


async def test_snake_case_and_sdk_mixed_case(emu: Emulator, http: aiohttp.ClientSession) -> None:
    snake = {
        "contents": [
            {
                "role": "user",
                "parts": [{"text": "add a hat"}, {"inline_data": {"mime_type": "image/png", "data": b64(png_bytes())}}],
            }
        ],
        "system_instruction": {"role": "user", "parts": [{"text": "be nice"}]},
        "generation_config": {
            "response_modalities": ["TEXT", "IMAGE"],
            "seed": 5,
            "image_config": {"aspect_ratio": "3:2", "image_size": "2K"},
            "thinking_config": {"include_thoughts": False},
        },
        "safety_settings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_ONLY_HIGH"}],
    }
    snake_call = await post(http, emu, snake)
    assert snake_call.status == 200, snake_call.raw[:300]
    assert snake_call.final_image().size == (2528, 1696)
    # The SDK's own mix: camel inlineData with snake mime_type.
    mixed: Json = {
        "contents": [
            {
                "role": "user",
                "parts": [{"text": "add a hat"}, {"inlineData": {"data": b64(png_bytes()), "mime_type": "image/png"}}],
            }
        ],
        "generationConfig": {"seed": 5, "imageConfig": {"aspectRatio": "3:2", "imageSize": "2K"}},
    }
    mixed_call = await post(http, emu, mixed)
    assert mixed_call.status == 200
    assert mixed_call.parts[-1]["inlineData"]["data"] == snake_call.parts[-1]["inlineData"]["data"]
    # The input image is part of the rendering key.
    mixed["contents"][0]["parts"][1]["inlineData"]["data"] = b64(png_bytes((0, 0, 255)))
    other = await post(http, emu, mixed)
    assert other.parts[-1]["inlineData"]["data"] != snake_call.parts[-1]["inlineData"]["data"]


async def test_v1_tuned_models_query_key_and_list_models(emu: Emulator, http: aiohttp.ClientSession) -> None:
    assert (await post(http, emu, prompt("x"), version="v1")).status == 200
    tuned = f"{emu.base_url}/v1beta/tunedModels/{FLASH}:generateContent"
    assert (await post(http, emu, prompt("x"), target=tuned)).status == 200
    with_query = f"{url(emu)}?key={emu.api_key}"
    assert (await post(http, emu, prompt("x"), key=None, target=with_query)).status == 200
    async with http.get(f"{emu.base_url}/v1beta/models", headers={"x-goog-api-key": emu.api_key}) as resp:
        names = [m["name"] for m in (await resp.json())["models"]]
    assert f"models/{FLASH}" in names and f"models/{PRO}" in names


async def test_count_tokens(emu: Emulator, http: aiohttp.ClientSession) -> None:
    """models/{model}:countTokens, which ListModels advertises, answers CountTokensResponse."""
    body: Json = {
        "contents": [
            {
                "role": "user",
                "parts": [
                    {"text": "a cat on a sofa"},
                    {"inlineData": {"mimeType": "image/png", "data": b64(png_bytes())}},
                ],
            }
        ]
    }
    async with http.get(f"{emu.base_url}/v1beta/models/{PRO}", headers={"x-goog-api-key": emu.api_key}) as resp:
        assert "countTokens" in (await resp.json())["supportedGenerationMethods"]
    counted = await post(http, emu, body, target=url(emu, method="countTokens"))
    assert counted.status == 200 and counted.headers["Content-Type"].startswith("application/json")
    text_tokens = len("a cat on a sofa") // 4
    assert counted.json == {
        "totalTokens": text_tokens + 258,
        "promptTokensDetails": [
            {"modality": "TEXT", "tokenCount": text_tokens},
            {"modality": "IMAGE", "tokenCount": 258},
        ],
    }
    # The same count generateContent bills as promptTokenCount.
    generated = await post(http, emu, body)
    assert generated.json["usageMetadata"]["promptTokenCount"] == counted.json["totalTokens"]
    # A whole generateContentRequest (contents is then ignored), on v1, with the SDK's snake_case.
    whole = {
        "contents": [{"parts": [{"text": "ignored " * 50}]}],
        "generate_content_request": {"model": f"models/{PRO}", **body, "generationConfig": {"seed": 1}},
    }
    assert (await post(http, emu, whole, target=url(emu, method="countTokens", version="v1"))).json == counted.json
    # History is tokenized, not checked: countTokens does not enforce thought signatures.
    history = {
        "contents": [
            *body["contents"],
            {
                "role": "model",
                "parts": [{"text": "done"}, {"inlineData": {"mimeType": "image/png", "data": b64(png_bytes())}}],
            },
            {"role": "user", "parts": [{"text": "bluer"}]},
        ]
    }
    assert (await post(http, emu, history, target=url(emu, method="countTokens"))).json["totalTokens"] > counted.json[
        "totalTokens"
    ]
    # Not a generation: no scenario step is used and the request counters do not move.
    scenario = emu.scenario("internal")
    marked = await post(http, emu, prompt(scenario.mark("x")), target=url(emu, method="countTokens"))
    assert marked.status == 200 and scenario.stats.received == 0 and emu.total_requests == 1
    # Gemini's errors: auth, unknown model, unknown field, bad JSON.
    assert (await post(http, emu, body, key=None, target=url(emu, method="countTokens"))).status == 403
    missing = await post(http, emu, body, target=url(emu, "gemini-9-ultra", method="countTokens"))
    assert missing.status == 404 and "is not supported for countTokens" in missing.error["message"]
    unknown = await post(http, emu, {**body, "generationConfig": {}}, target=url(emu, method="countTokens"))
    assert unknown.status == 400 and 'Unknown name "generationConfig"' in unknown.error["message"]
    assert (await post(http, emu, b"{", target=url(emu, method="countTokens"))).status == 400
    empty = await post(http, emu, {}, target=url(emu, method="countTokens"))
    assert empty.status == 400 and "contents is not specified" in empty.error["message"]


# --- auth, routing, validation -------------------------------------------------


async def test_auth_errors(emu: Emulator, http: aiohttp.ClientSession) -> None:
    missing = await post(http, emu, prompt("x"), key=None)
    assert missing.status == 403
    assert missing.error == {
        "code": 403,
        "status": "PERMISSION_DENIED",
        "message": "Method doesn't allow unregistered callers (callers without established identity). "
        "Please use API Key or other form of API consumer identity to call this API.",
    }
    wrong = await post(http, emu, prompt("x"), key="nope")
    assert wrong.status == 400
    assert wrong.json == {
        "error": {
            "code": 400,
            "message": "API key not valid. Please pass a valid API key.",
            "status": "INVALID_ARGUMENT",
            "details": [
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
            ],
        }
    }


async def test_unknown_model_and_method_404(emu: Emulator, http: aiohttp.ClientSession) -> None:
    call = await post(http, emu, prompt("x"), model="gemini-9-ultra")
    assert call.status == 404
    assert call.error == {
        "code": 404,
        "status": "NOT_FOUND",
        "message": "models/gemini-9-ultra is not found for API version v1beta, or is not supported for "
        "generateContent. Call ListModels to see the list of available models and their supported methods.",
    }
    predict = await post(http, emu, prompt("x"), target=f"{emu.base_url}/v1beta/models/{PRO}:predict")
    assert predict.status == 404 and "is not supported for predict" in predict.error["message"]


async def test_unknown_image_config_field_is_a_bad_request(emu: Emulator, http: aiohttp.ClientSession) -> None:
    call = await post(http, emu, prompt("x", imageConfig={"aspectRatio": "1:1", "outputMimeType": "image/jpeg"}))
    text = (
        'Invalid JSON payload received. Unknown name "outputMimeType" at '
        "'generation_config.image_config': Cannot find field."
    )
    assert call.status == 400
    assert call.error == {
        "code": 400,
        "message": text,
        "status": "INVALID_ARGUMENT",
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [{"field": "generation_config.image_config", "description": text}],
            }
        ],
    }
    # aspectRatio one level too high (CLIProxyAPI#1089).
    misplaced = await post(http, emu, prompt("x", aspectRatio="1:1"))
    assert misplaced.status == 400
    assert "Unknown name \"aspectRatio\" at 'generation_config'" in misplaced.error["message"]


@pytest.mark.parametrize(
    ("model", "config", "needle"),
    [
        (PRO, {"imageConfig": {"aspectRatio": "8:1"}}, "Aspect ratio is not enabled for this model"),
        (PRO, {"imageConfig": {"imageSize": "512"}}, "Unsupported image size '512'"),
        (PRO, {"imageConfig": {"imageSize": "2k"}}, "uppercase 'K'"),
        (NB25, {"imageConfig": {"imageSize": "1K"}}, "Image size is not enabled for this model"),
        (PRO, {"seed": "abc"}, "Invalid value at 'generation_config.seed' (TYPE_INT32)"),
        (PRO, {"responseModalities": ["PICTURE"]}, "generation_config.response_modalities[0]"),
        (PRO, {"responseModalities": ["TEXT"]}, "response modalities: text"),
        (PRO, {"candidateCount": 2}, "Multiple candidates"),
    ],
)
async def test_config_validation(
    emu: Emulator, http: aiohttp.ClientSession, model: str, config: Json, needle: str
) -> None:
    call = await post(http, emu, prompt("x", **config), model=model)
    assert call.status == 400
    assert call.error["status"] == "INVALID_ARGUMENT"
    assert needle in call.error["message"]


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"{not json", "Invalid JSON payload received"),
        ({"contents": []}, "contents is not specified"),
        ({"contents": [{"role": "robot", "parts": [{"text": "x"}]}]}, "Please use a valid role: user, model."),
        ({"contents": [{"parts": [{}]}]}, "required oneof field 'data'"),
        (
            {"contents": [{"parts": [{"inlineData": {"mimeType": "image/png", "data": "@@@"}}]}]},
            "Invalid value at 'contents[0].parts[0].inline_data.data' (TYPE_BYTES), Base64 decoding failed",
        ),
        (
            {"contents": [{"parts": [{"inlineData": {"mimeType": "image/png", "data": b64(b"not a png")}}]}]},
            "Unable to process input image",
        ),
        (
            {"contents": [{"parts": [{"inlineData": {"mimeType": "image/gif", "data": b64(b"GIF89a")}}]}]},
            "Unsupported MIME type: image/gif",
        ),
    ],
)
async def test_body_validation(emu: Emulator, http: aiohttp.ClientSession, body: Any, needle: str) -> None:
    call = await post(http, emu, body)
    assert call.status == 400
    assert needle in call.error["message"]


async def test_request_over_100_mb_is_geminis_json_400(emu: Emulator, http: aiohttp.ClientSession) -> None:
    """Not aiohttp's plain-text 413: the emulator's own size check answers, in Gemini's envelope."""
    chunk = b"A" * (1024 * 1024)

    async def body() -> AsyncIterator[bytes]:
        # Streamed (chunked), so the test never holds 100 MB itself.
        yield b'{"contents": [{"parts": [{"inlineData": {"mimeType": "image/png", "data": "'
        for _ in range(101):
            yield chunk
        yield b'"}}]}]}'

    async with http.post(url(emu), data=body(), headers={"x-goog-api-key": emu.api_key}) as resp:
        raw = await resp.read()
    assert resp.status == 400 and resp.headers["Content-Type"].startswith("application/json")
    assert json.loads(raw) == {
        "error": {
            "code": 400,
            "message": "Request payload size exceeds the limit: 104857600 bytes.",
            "status": "INVALID_ARGUMENT",
        }
    }
    # The emulator still serves normal requests afterwards.
    assert (await post(http, emu, prompt("x"))).status == 200


# --- thought signatures ----------------------------------------------------------


async def test_thought_signature_round_trip_and_errors(emu: Emulator, http: aiohttp.ClientSession) -> None:
    first = await post(http, emu, prompt("a cat", seed=1))
    model_turn = {"role": "model", "parts": first.parts}

    def history(turn: Json) -> Json:
        return {
            "contents": [
                {"role": "user", "parts": [{"text": "a cat"}]},
                turn,
                {"role": "user", "parts": [{"text": "make it blue"}]},
            ]
        }

    assert (await post(http, emu, history(model_turn))).status == 200
    unsigned = {"role": "model", "parts": [first.parts[0], {"inlineData": first.parts[1]["inlineData"]}]}
    missing = await post(http, emu, history(unsigned))
    assert missing.status == 400
    assert missing.error == {
        "code": 400,
        "status": "INVALID_ARGUMENT",
        "message": "Image part is missing a thought_signature in content position 2, part position 2. "
        "Please refer to https://ai.google.dev/gemini-api/docs/thought-signatures#model-behavior for more details.",
    }
    # A signature that does not belong to the image (a corrupted round trip).
    swapped = {"role": "model", "parts": [first.parts[0], {**first.parts[1], "thoughtSignature": b64(b"forged")}]}
    corrupted = await post(http, emu, history(swapped))
    assert corrupted.status == 400
    assert "content position 2, part position 2" in corrupted.error["message"]
    # The bypass sentinel, raw or base64, and snake_case spelling.
    for sentinel in (SKIP_SENTINEL, b64(SKIP_SENTINEL.encode())):
        bypass = {
            "role": "model",
            "parts": [
                {"inline_data": {"mime_type": "image/png", "data": b64(png_bytes())}, "thought_signature": sentinel}
            ],
        }
        assert (await post(http, emu, history(bypass))).status == 200
    # Gemini 2.5 does not enforce signatures.
    assert (await post(http, emu, history(unsigned), model=NB25)).status == 200


async def test_first_text_part_of_a_model_turn_needs_its_signature(emu: Emulator, http: aiohttp.ClientSession) -> None:
    """Gemini 3 signs, and then requires, the first non-thought text of a model turn as well as images."""
    first = await post(http, emu, prompt("a cat", seed=1))
    text, image = first.parts
    thought = {"text": "planning", "thought": True}

    async def refine(*parts: Json, model: str = PRO) -> Call:
        body = {
            "contents": [
                {"role": "user", "parts": [{"text": "a cat"}]},
                {"role": "model", "parts": list(parts)},
                {"role": "user", "parts": [{"text": "make it blue"}]},
            ]
        }
        return await post(http, emu, body, model=model)

    unsigned_text = {"text": text["text"]}
    missing = await refine(unsigned_text, image)
    assert missing.status == 400
    assert missing.error == {
        "code": 400,
        "status": "INVALID_ARGUMENT",
        "message": "Text part is missing a thought_signature in content position 2, part position 1. "
        "Please refer to https://ai.google.dev/gemini-api/docs/thought-signatures#model-behavior for more details.",
    }
    # Thought parts are skipped: the first text after them is the one that must be signed.
    after_thought = await refine(thought, unsigned_text, image)
    assert after_thought.status == 400
    assert (
        "Text part is missing a thought_signature in content position 2, part position 2."
        in (after_thought.error["message"])
    )
    assert (await refine(thought, text, image)).status == 200
    # Text after an image, or a second text, carries none and needs none.
    assert (await refine(image, {"text": "and a note"})).status == 200
    assert (await refine(text, {"text": "more"}, image)).status == 200
    # A text signature that does not belong to the text is a corrupted round trip.
    moved = await refine({"text": "other words", "thoughtSignature": text["thoughtSignature"]}, image)
    assert moved.status == 400 and "Text part" in moved.error["message"]
    # Gemini 2.5 does not check.
    assert (await refine(unsigned_text, {"inlineData": image["inlineData"]}, model=NB25)).status == 200


# --- fault steps ----------------------------------------------------------------------


def detail_types(error: Json) -> list[str]:
    return [d["@type"].rsplit(".", 1)[-1] for d in error.get("details", [])]


@pytest.mark.parametrize(
    ("step", "http_status", "status", "types", "needle"),
    [
        ("rate_limit:0.2", 429, "RESOURCE_EXHAUSTED", ["Help", "QuotaFailure", "RetryInfo"], "Please retry in 0.2s."),
        ("rate_limit_bare", 429, "RESOURCE_EXHAUSTED", [], "Resource has been exhausted (e.g. check quota)."),
        ("rate_limit_help_only", 429, "RESOURCE_EXHAUSTED", ["Help"], "You exceeded your current quota"),
        ("quota_daily", 429, "RESOURCE_EXHAUSTED", ["Help", "QuotaFailure", "RetryInfo"], "limit: 100"),
        ("internal", 500, "INTERNAL", [], "An internal error has occurred"),
        ("bad_gateway", 502, "UNAVAILABLE", [], "Bad Gateway"),
        ("overloaded", 503, "UNAVAILABLE", [], "The model is overloaded. Please try again later."),
        ("overloaded:demand", 503, "UNAVAILABLE", [], "experiencing high demand"),
        ("timeout", 504, "DEADLINE_EXCEEDED", [], "Deadline expired before operation could complete."),
        ("not_found", 404, "NOT_FOUND", [], f"models/{PRO} is not found for API version v1beta"),
        ("unknown_field", 400, "INVALID_ARGUMENT", ["BadRequest"], 'Unknown name "outputMimeType"'),
        ("invalid_argument", 400, "INVALID_ARGUMENT", [], "Request contains an invalid argument."),
        ("failed_precondition", 400, "FAILED_PRECONDITION", [], "enable billing"),
        ("bad_key", 400, "INVALID_ARGUMENT", ["ErrorInfo", "LocalizedMessage"], "API key not valid"),
        ("no_key", 403, "PERMISSION_DENIED", [], "unregistered callers"),
    ],
)
async def test_http_fault_steps(
    emu: Emulator,
    http: aiohttp.ClientSession,
    step: str,
    http_status: int,
    status: str,
    types: list[str],
    needle: str,
) -> None:
    scenario = emu.scenario(step)
    call = await post(http, emu, prompt(scenario.mark("a fox")))
    assert call.status == http_status
    error = call.error
    assert (error["code"], error["status"]) == (http_status, status)
    assert detail_types(error) == types
    assert needle in error["message"]
    assert "Retry-After" not in call.headers  # Gemini never sends one
    assert scenario.stats.received == scenario.stats.completed == 1


async def test_rate_limit_details(emu: Emulator, http: aiohttp.ClientSession) -> None:
    scenario = emu.scenario("rate_limit:0.25", "quota_daily:2", "retry_after_header:3")
    per_minute = (await post(http, emu, prompt(scenario.mark("x")))).error["details"]
    assert per_minute[1]["violations"][0]["quotaId"] == "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"
    assert per_minute[1]["violations"][0]["quotaDimensions"] == {"location": "global", "model": PRO}
    assert per_minute[2]["retryDelay"] == "0.25s"
    daily = (await post(http, emu, prompt(scenario.mark("x")))).error["details"]
    assert daily[1]["violations"][0]["quotaId"] == "GenerateRequestsPerDayPerProjectPerModel-FreeTier"
    assert daily[2]["retryDelay"] == "2s"
    proxied = await post(http, emu, prompt(scenario.mark("x")))
    assert proxied.status == 429 and proxied.headers["Retry-After"] == "3" and "details" not in proxied.error


async def test_bad_gateway_html(emu: Emulator, http: aiohttp.ClientSession) -> None:
    scenario = emu.scenario("bad_gateway:html")
    call = await post(http, emu, prompt(scenario.mark("x")))
    assert call.status == 502 and call.headers["Content-Type"].startswith("text/html")
    assert b"Error 502 (Server Error)" in call.raw


@pytest.mark.parametrize(
    ("step", "check"),
    [
        ("prompt_blocked", lambda b: b["promptFeedback"] == {"blockReason": "PROHIBITED_CONTENT"}),
        ("prompt_blocked:SAFETY", lambda b: b["promptFeedback"]["blockReason"] == "SAFETY"),
        ("output_blocked", lambda b: b["candidates"][0]["finishReason"] == "IMAGE_SAFETY"),
        (
            "output_blocked:IMAGE_PROHIBITED_CONTENT",
            lambda b: b["candidates"][0]["finishReason"] == "IMAGE_PROHIBITED_CONTENT",
        ),
        ("no_image", lambda b: b["candidates"][0]["finishReason"] == "NO_IMAGE"),
        ("image_other", lambda b: b["candidates"][0]["finishReason"] == "IMAGE_OTHER"),
    ],
)
async def test_blocks_are_200_without_image(emu: Emulator, http: aiohttp.ClientSession, step: str, check: Any) -> None:
    scenario = emu.scenario(step)
    call = await post(http, emu, prompt(scenario.mark("x")))
    assert call.status == 200
    body = call.json
    assert check(body)
    if step.startswith("prompt_blocked"):
        assert "candidates" not in body
    else:
        assert "content" not in body["candidates"][0]
    assert body["usageMetadata"]["promptTokenCount"] >= 1


async def test_text_only_refusal(emu: Emulator, http: aiohttp.ClientSession) -> None:
    scenario = emu.scenario("text_only")
    call = await post(http, emu, prompt(scenario.mark("x")))
    assert call.json["candidates"][0]["finishReason"] == "STOP"
    assert [list(p) for p in call.parts] == [["text", "thoughtSignature"]]


async def test_malformed_bodies(emu: Emulator, http: aiohttp.ClientSession) -> None:
    scenario = emu.scenario("bad_json", "bad_base64", "not_image")
    bad_json = await post(http, emu, prompt(scenario.mark("x")))
    assert bad_json.status == 200
    with pytest.raises(ValueError):
        json.loads(bad_json.raw)
    bad_b64 = await post(http, emu, prompt(scenario.mark("x")))
    with pytest.raises(ValueError):
        base64.b64decode(bad_b64.parts[-1]["inlineData"]["data"], validate=True)
    not_image = await post(http, emu, prompt(scenario.mark("x")))
    part = not_image.parts[-1]["inlineData"]
    assert part["mimeType"] == "image/png"
    assert not base64.b64decode(part["data"]).startswith(b"\x89PNG")


# --- streaming ---------------------------------------------------------------------


async def test_sse_framing_and_drafts(emu: Emulator, http: aiohttp.ClientSession) -> None:
    scenario = emu.scenario("thoughts:2")
    body = prompt(scenario.mark("a fox"), seed=2, thinkingConfig={"includeThoughts": True})
    call = await post(http, emu, body, stream=True)
    assert call.status == 200 and call.headers["Content-Type"].startswith("text/event-stream")
    events = sse_events(call.raw)
    parts = [p for e in events for p in e["candidates"][0]["content"]["parts"]]
    drafts = [p for p in parts if p.get("thought") and "inlineData" in p]
    assert len(drafts) == 2
    assert all("thoughtSignature" not in p for p in parts if p.get("thought"))
    # Drafts come in earlier chunks; the final image, finishReason and usage last.
    assert all("finishReason" not in e["candidates"][0] and "usageMetadata" not in e for e in events[:-1])
    last = events[-1]
    assert last["candidates"][0]["finishReason"] == "STOP" and "usageMetadata" in last
    final = last["candidates"][0]["content"]["parts"]
    assert [list(p) for p in final] == [["inlineData", "thoughtSignature"]]
    assert len({e["responseId"] for e in events}) == 1
    # The unary twin carries the same final image.
    unary = await post(http, emu, body)
    assert unary.parts[-1] == final[0]
    assert [bool(p.get("thought")) for p in unary.parts] == [True, True, True, False, False]


async def test_include_thoughts_shows_thought_text_and_json_array_stream(
    emu: Emulator, http: aiohttp.ClientSession
) -> None:
    body = prompt("a fox", thinkingConfig={"includeThoughts": True})
    events = sse_events((await post(http, emu, body, stream=True)).raw)
    thoughts = [p for e in events for p in e["candidates"][0]["content"]["parts"] if p.get("thought")]
    # A thought summary (never signed), but no draft images unless a step asks.
    assert [list(p) for p in thoughts] == [["text", "thought"]]
    assert events[0]["candidates"][0]["content"]["parts"] == thoughts
    # Without alt=sse, streamGenerateContent answers a JSON array of chunks.
    array = await post(http, emu, body, target=url(emu, method="streamGenerateContent"))
    chunks = array.json
    assert isinstance(chunks, list) and chunks[-1]["candidates"][0]["finishReason"] == "STOP"


@pytest.mark.parametrize("stream", [False, True])
async def test_thought_parts_only_with_include_thoughts(
    emu: Emulator, http: aiohttp.ClientSession, stream: bool
) -> None:
    """Thought parts (summary and drafts) only with thinkingConfig.includeThoughts; thinking is billed anyway."""
    scenario = emu.scenario("thoughts:2")

    async def thought_parts(**config: Any) -> tuple[list[Json], Json]:
        call = await post(http, emu, prompt(scenario.mark("a fox"), seed=4, **config), stream=stream)
        assert call.status == 200, call.raw[:300]
        chunks = sse_events(call.raw) if stream else [call.json]
        parts = [p for c in chunks for p in c["candidates"][0].get("content", {}).get("parts", [])]
        return [p for p in parts if p.get("thought")], chunks[-1]["usageMetadata"]

    hidden, usage = await thought_parts()
    assert hidden == [] and usage["thoughtsTokenCount"] > 0
    assert (await thought_parts(thinkingConfig={"includeThoughts": False}))[0] == []
    assert (await thought_parts(thinkingConfig={"thinkingLevel": "HIGH"}))[0] == []
    shown, shown_usage = await thought_parts(thinking_config={"include_thoughts": True})
    assert [sorted(p) for p in shown] == [["text", "thought"], ["inlineData", "thought"], ["inlineData", "thought"]]
    assert shown_usage["thoughtsTokenCount"] == usage["thoughtsTokenCount"]


async def test_stream_errors_are_plain_json(emu: Emulator, http: aiohttp.ClientSession) -> None:
    scenario = emu.scenario("overloaded")
    call = await post(http, emu, prompt(scenario.mark("x")), stream=True)
    assert call.status == 503 and call.error["status"] == "UNAVAILABLE"


# --- scenarios, delivery, stats --------------------------------------------------------


async def test_steps_advance_and_last_repeats(emu: Emulator, http: aiohttp.ClientSession) -> None:
    scenario = emu.scenario("internal", "rate_limit:0.1", "ok")
    statuses = [(await post(http, emu, prompt(scenario.mark(f"try {n}")))).status for n in range(4)]
    assert statuses == [500, 429, 200, 200]
    stats = scenario.stats
    assert (stats.received, stats.completed, stats.aborted) == (4, 4, 0)
    assert stats.bodies[1]["contents"][0]["parts"][0]["text"] == f"{scenario.marker} try 1"
    assert emu.total_requests == 4 and emu.unmarked.received == 0


async def test_header_selection_and_newest_marker_wins(emu: Emulator, http: aiohttp.ClientSession) -> None:
    old, new = emu.scenario("internal"), emu.scenario("timeout")
    by_header = await post(http, emu, prompt("x"), headers=dict([old.header]))
    assert by_header.status == 500
    body = {
        "contents": [
            {"role": "user", "parts": [{"text": old.mark("a cat")}]},
            {"role": "user", "parts": [{"text": new.mark("now blue")}]},
        ]
    }
    assert (await post(http, emu, body)).status == 504
    assert (old.stats.received, new.stats.received) == (1, 1)
    await post(http, emu, prompt("plain"))
    assert emu.unmarked.received == 1 and emu.unmarked.completed == 1


async def test_unknown_marker_or_header_is_a_400_naming_it(emu: Emulator, http: aiohttp.ClientSession) -> None:
    """A typo in a marker must fail the test that wrote it, not silently answer ok."""
    hint = (
        "Register a scenario with POST /emulator/scenarios (or Emulator.scenario()) on this emulator "
        "and use the marker it returns; step names are checked when the scenario is registered."
    )
    typo = await post(http, emu, prompt("a fox [emulator:nosuch1]"))
    assert typo.status == 400
    assert typo.error == {
        "code": 400,
        "status": "INVALID_ARGUMENT",
        "message": "Unknown emulator scenario marker [emulator:nosuch1]: no scenario with that id is registered "
        f"on this emulator. {hint}",
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [
                    {
                        "field": "contents[0].parts[0].text",
                        "description": "Unknown emulator scenario marker [emulator:nosuch1]: no scenario with "
                        "that id is registered on this emulator.",
                    }
                ],
            }
        ],
    }
    assert emu.unmarked.received == 1 and emu.unmarked.completed == 1
    # Streams get it too, before any event; so does a marker in the system instruction.
    in_system = {**prompt("a fox"), "systemInstruction": {"parts": [{"text": "[emulator:gone]"}]}}
    streamed = await post(http, emu, in_system, stream=True)
    assert streamed.status == 400
    assert streamed.error["details"][0]["fieldViolations"][0]["field"] == "system_instruction.parts[0].text"
    # A removed scenario's marker is unknown from then on.
    scenario = emu.scenario("ok")
    assert emu.get_scenario(scenario.id) is not None
    async with http.delete(f"{emu.base_url}/emulator/scenarios/{scenario.id}") as resp:
        assert resp.status == 204
    assert (await post(http, emu, prompt(scenario.mark("x")))).status == 400
    # The header names the scenario directly.
    header = await post(http, emu, prompt("x"), headers={"x-emulator-scenario": "nosuch2"})
    assert header.status == 400
    assert header.error["message"] == (
        "Unknown emulator scenario 'nosuch2' in the x-emulator-scenario header: no scenario with that id is "
        f"registered on this emulator. {hint}"
    )
    # A registered marker in the newest turn wins over a stale one in the history.
    live = emu.scenario("timeout")
    body = {
        "contents": [
            {"role": "user", "parts": [{"text": "[emulator:stale] a cat"}]},
            {"role": "user", "parts": [{"text": live.mark("now blue")}]},
        ]
    }
    assert (await post(http, emu, body)).status == 504 and live.stats.received == 1


async def test_latency_and_slow_body(emu: Emulator, http: aiohttp.ClientSession) -> None:
    scenario = emu.scenario("latency:0.2+ok", "slow_body:0.2")
    start = time.monotonic()
    assert (await post(http, emu, prompt(scenario.mark("x")))).status == 200
    assert time.monotonic() - start >= 0.2
    start = time.monotonic()
    async with http.post(url(emu), json=prompt(scenario.mark("x")), headers={"x-goog-api-key": emu.api_key}) as resp:
        # A slow body sends its headers first: the emulator is still writing when they arrive.
        assert (scenario.stats.completed, scenario.stats.in_flight) == (1, 1)
        await resp.read()
    assert time.monotonic() - start >= 0.2
    assert scenario.stats.completed == 2


async def test_cut_body(emu: Emulator, http: aiohttp.ClientSession) -> None:
    scenario = emu.scenario("cut_body")
    with pytest.raises(aiohttp.ClientPayloadError):
        await post(http, emu, prompt(scenario.mark("x")))
    stats = scenario.stats
    assert (stats.received, stats.completed, stats.cut, stats.aborted) == (1, 0, 1, 0)


async def test_abort_during_latency_is_counted(emu: Emulator, http: aiohttp.ClientSession) -> None:
    scenario = emu.scenario("latency:10")
    task = asyncio.create_task(post(http, emu, prompt(scenario.mark("x"))))
    await scenario.wait_for(lambda s: s.received == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await scenario.wait_for(lambda s: s.aborted == 1, timeout=5)  # well before the 10 s step ends
    assert scenario.stats.completed == 0


async def test_abort_during_slow_sse_body_is_counted(emu: Emulator, http: aiohttp.ClientSession) -> None:
    scenario = emu.scenario("thoughts:1+slow_body:10")
    async with http.post(
        url(emu, method="streamGenerateContent?alt=sse"),
        json=prompt(scenario.mark("x"), thinkingConfig={"includeThoughts": True}),
        headers={"x-goog-api-key": emu.api_key},
    ) as resp:
        first = json.loads((await resp.content.readline()).removeprefix(b"data: "))
        assert first["candidates"][0]["content"]["parts"][-1]["thought"] is True
        resp.close()
    await scenario.wait_for(lambda s: s.aborted == 1, timeout=5)  # well before the 10 s step ends


def test_step_grammar() -> None:
    step = parse_step("latency:0.5+thoughts:2+bad_base64")
    assert (step.outcome, step.latency, step.thoughts, step.corruption) == ("ok", 0.5, 2, "bad_base64")
    assert parse_step("rate_limit:0.2").arg == "0.2"
    assert parse_steps([]) == (parse_step("ok"),)
    for bad in [
        "",
        "nope",
        "ok+internal",
        "latency",
        "latency:-1",
        "thoughts:x",
        "internal+thoughts:1",
        "ok:1",
        "rate_limit:soon",
        "timeout+bad_base64",
        "cut_body+slow_body:1",
    ]:
        with pytest.raises(ValueError):
            parse_step(bad)


# --- admin API and CLI ------------------------------------------------------------------


async def test_admin_api(emu: Emulator, http: aiohttp.ClientSession) -> None:
    admin = f"{emu.base_url}/emulator/scenarios"
    async with http.post(admin, json={"steps": ["overloaded", "ok"]}) as resp:
        created = await resp.json()
    assert resp.status == 200 and created["marker"] == f"[emulator:{created['id']}]"
    assert (await post(http, emu, prompt(f"{created['marker']} x"))).status == 503
    assert (await post(http, emu, prompt(f"{created['marker']} x"))).status == 200
    async with http.get(f"{admin}/{created['id']}") as resp:
        stats = await resp.json()
    assert (stats["received"], stats["completed"], stats["aborted"]) == (2, 2, 0)
    assert stats["steps"] == ["overloaded", "ok"] and len(stats["bodies"]) == 2
    async with http.post(admin, json={"steps": ["bogus"]}) as resp:
        assert resp.status == 400 and "bogus" in (await resp.json())["error"]
    async with http.delete(f"{admin}/{created['id']}") as resp:
        assert resp.status == 204
    async with http.get(f"{admin}/{created['id']}") as resp:
        assert resp.status == 404


@contextlib.asynccontextmanager
async def emulator_process(*args: str) -> AsyncIterator[tuple[str, str]]:
    """``imagegen emulator --port 0 ARGS`` as a process: yields (base URL, its first line); SIGTERM at the end."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "imagegen_server.emulator",
        "--port",
        "0",
        *args,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        yield line.split(" listening on ")[1].split()[0], line
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_cli_with_api_key_requires_it(http: aiohttp.ClientSession) -> None:
    async with emulator_process("--api-key", "k1") as (base, line):
        assert "k1" not in line  # keys are never printed
        target = f"{base}/v1beta/models/{FLASH}:generateContent"
        for headers, status in [({"x-goog-api-key": "k1"}, 200), ({}, 403), ({"x-goog-api-key": "k2"}, 400)]:
            async with http.post(target, json=prompt("x"), headers=headers) as resp:
                assert resp.status == status


async def test_cli_without_api_key_pairs_with_serve_without_a_key(http: aiohttp.ClientSession) -> None:
    """``imagegen emulator`` then ``imagegen serve --upstream-url`` with GEMINI_API_KEY unset just works."""
    async with emulator_process() as (base, line):
        assert f"pair with: imagegen serve --upstream-url {base}" in line
        target = f"{base}/v1beta/models/{FLASH}:generateContent"
        for headers in ({}, {"x-goog-api-key": "anything"}):
            async with http.post(target, json=prompt("x"), headers=headers) as resp:
                assert resp.status == 200
        # The gateway as serve configures it with no key in the environment: no key is sent at all.
        config = ServerConfig.from_args(["--port", "0", "--upstream-url", base], env={})
        assert config.api_key is None and not config.uses_embedded_emulator
        async with run_server(config) as running, imagegen.AsyncClient(running.target) as client:
            result = await client.generate("a red fox", seed=3)
            assert result.image.data.startswith(b"\x89PNG")
            # The auth fault steps still answer Gemini's auth errors on demand.
            async with http.post(f"{base}/emulator/scenarios", json={"steps": ["bad_key"]}) as resp:
                marker = (await resp.json())["marker"]
            with pytest.raises(imagegen.UpstreamAuthError):
                await client.generate(f"a red fox {marker}")


async def test_open_emulator_still_serves_auth_fault_steps(http: aiohttp.ClientSession) -> None:
    async with Emulator(api_key=None) as emu:
        assert (await post(http, emu, prompt("x"), key=None)).status == 200
        assert (await post(http, emu, prompt("x"), key="whatever")).status == 200
        scenario = emu.scenario("no_key", "bad_key")
        assert (await post(http, emu, prompt(scenario.mark("x")), key=None)).status == 403
        bad = await post(http, emu, prompt(scenario.mark("x")), key=None)
        assert bad.status == 400 and bad.error["details"][0]["reason"] == "API_KEY_INVALID"
