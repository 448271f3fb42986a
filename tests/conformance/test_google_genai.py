"""Google's own SDK (google-genai) against the emulator: an independent client's view.

Our gateway and tests were written together with the emulator, so they can
share its mistakes. The official SDK was not: if it can generate, stream,
chat (echoing thought signatures), count tokens, read usage and parse errors
against ``imagegen emulator``, the emulator speaks Gemini's wire format. It
runs offline against a loopback emulator with small images, in about a second.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from typing import Any

import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types
from PIL import Image

from imagegen_server.emulator import Emulator, image_signature, text_signature

# The SDK subclasses aiohttp.ClientSession, which aiohttp discourages; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:Inheritance class AiohttpClientSession:DeprecationWarning")

PRO = "gemini-3-pro-image-preview"
FLASH = "gemini-3.1-flash-image"
NB25 = "gemini-2.5-flash-image"


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    async with Emulator() as emulator:
        yield emulator


def make_client(emu: Emulator, *, api_version: str = "v1beta", api_key: str | None = None) -> genai.Client:
    return genai.Client(
        api_key=api_key or emu.api_key,
        http_options=types.HttpOptions(base_url=emu.base_url, api_version=api_version),
    )


@pytest.fixture
async def client(emu: Emulator) -> AsyncIterator[Any]:
    """The SDK's async client (``genai.Client(...).aio``), closed after the test."""
    async with make_client(emu).aio as aio:
        yield aio


def image_config(ratio: str | None = None, size: str | None = None, **extra: Any) -> types.GenerateContentConfig:
    return types.GenerateContentConfig(image_config=types.ImageConfig(aspect_ratio=ratio, image_size=size), **extra)


def final_image(response: types.GenerateContentResponse) -> types.Part:
    return [p for p in response.parts or [] if p.inline_data and not p.thought][-1]


async def test_generate_content_shape_and_signatures(client: Any) -> None:
    response = await client.models.generate_content(model=PRO, contents="a cat", config=image_config("16:9", "2K"))
    assert response.candidates[0].finish_reason == types.FinishReason.STOP
    text, image = response.parts
    # Section 3: the first text after the thoughts and every final image carry signatures.
    assert text.text and text.thought_signature == text_signature(text.text)
    assert image.inline_data.mime_type == "image/png"
    assert image.thought_signature == image_signature(image.inline_data.data)
    assert Image.open(io.BytesIO(image.inline_data.data)).size == (2752, 1536)
    assert response.model_version == PRO and response.response_id


@pytest.mark.parametrize(
    ("model", "size", "tokens"),
    [
        (PRO, "1K", 1120),
        (PRO, "2K", 1120),
        (PRO, "4K", 2000),
        (FLASH, "2K", 1680),
        (FLASH, "4K", 2520),
        (NB25, None, 1290),
    ],
)
async def test_usage_metadata_output_tokens_per_model(client: Any, model: str, size: str | None, tokens: int) -> None:
    config = image_config(size=size, response_modalities=["IMAGE"])
    usage = (await client.models.generate_content(model=model, contents="a cat", config=config)).usage_metadata
    assert usage.candidates_token_count == tokens
    assert [(d.modality, d.token_count) for d in usage.candidates_tokens_details] == [
        (types.MediaModality.IMAGE, tokens)
    ]
    assert usage.total_token_count == usage.prompt_token_count + tokens + (usage.thoughts_token_count or 0)


async def test_count_tokens_matches_the_prompt_count(client: Any) -> None:
    png = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(png, "PNG")
    contents = ["a cat wearing this hat", types.Part.from_bytes(data=png.getvalue(), mime_type="image/png")]
    counted = await client.models.count_tokens(model=PRO, contents=contents)
    generated = await client.models.generate_content(model=PRO, contents=contents)
    assert counted.total_tokens == generated.usage_metadata.prompt_token_count > 258
    model = await client.models.get(model=PRO)
    assert "countTokens" in model.supported_actions


async def test_chat_echoes_signatures_and_a_dropped_text_signature_is_rejected(client: Any) -> None:
    chat = client.chats.create(model=FLASH)
    first = await chat.send_message("a cat")
    second = await chat.send_message("make it blue")
    assert second.candidates[0].finish_reason == types.FinishReason.STOP
    # The SDK sent our signatures back on the text and the image of the first answer.
    model_turn = chat.get_history()[1]
    assert [bool(p.thought_signature) for p in model_turn.parts] == [True, True]
    # A framework that drops the text part's signature gets Gemini's 400 (gemini-api.md section 5).
    text, image = first.parts
    history = [
        types.Content(role="user", parts=[types.Part(text="a cat")]),
        types.Content(role="model", parts=[types.Part(text=text.text), image]),
        types.Content(role="user", parts=[types.Part(text="make it blue")]),
    ]
    with pytest.raises(genai_errors.ClientError) as info:
        await client.models.generate_content(model=FLASH, contents=history)
    assert (info.value.code, info.value.status) == (400, "INVALID_ARGUMENT")
    assert info.value.message.startswith(
        "Text part is missing a thought_signature in content position 2, part position 1."
    )


async def test_thought_parts_only_with_include_thoughts(client: Any, emu: Emulator) -> None:
    scenario = emu.scenario("thoughts:2")
    plain = await client.models.generate_content(model=FLASH, contents=scenario.mark("a fox"))
    assert not any(p.thought for p in plain.parts)
    assert plain.usage_metadata.thoughts_token_count
    config = types.GenerateContentConfig(thinking_config=types.ThinkingConfig(include_thoughts=True))
    shown = await client.models.generate_content(model=FLASH, contents=scenario.mark("a fox"), config=config)
    thoughts = [p for p in shown.parts if p.thought]
    assert [p.inline_data is not None for p in thoughts] == [False, True, True]
    assert all(p.thought_signature is None for p in thoughts)
    # The SDK's own text accessor skips thought text.
    assert shown.text and "Planning" not in shown.text


async def test_stream_ends_with_the_image_finish_reason_and_usage(client: Any, emu: Emulator) -> None:
    scenario = emu.scenario("thoughts:1")
    config = types.GenerateContentConfig(thinking_config=types.ThinkingConfig(include_thoughts=True))
    chunks = [
        chunk
        async for chunk in await client.models.generate_content_stream(
            model=FLASH, contents=scenario.mark("a dog"), config=config
        )
    ]
    assert len(chunks) >= 3 and len({c.response_id for c in chunks}) == 1
    last = chunks[-1]
    assert last.candidates[0].finish_reason == types.FinishReason.STOP and last.usage_metadata
    assert final_image(last).thought_signature


async def test_errors_parse_as_the_sdks_api_errors(client: Any, emu: Emulator) -> None:
    with pytest.raises(genai_errors.ClientError) as not_found:
        await client.models.generate_content(model="gemini-9-ultra", contents="x")
    assert (not_found.value.code, not_found.value.status) == (404, "NOT_FOUND")
    scenario = emu.scenario("rate_limit:2", "overloaded")
    with pytest.raises(genai_errors.ClientError) as limited:
        await client.models.generate_content(model=FLASH, contents=scenario.mark("x"))
    assert limited.value.code == 429
    details = limited.value.details["error"]["details"]
    assert details[-1] == {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "2s"}
    with pytest.raises(genai_errors.ServerError) as overloaded:
        await client.models.generate_content(model=FLASH, contents=scenario.mark("x"))
    assert (overloaded.value.code, overloaded.value.status) == (503, "UNAVAILABLE")
    async with make_client(emu, api_key="wrong").aio as wrong:
        with pytest.raises(genai_errors.ClientError) as bad_key:
            await wrong.models.generate_content(model=FLASH, contents="x")
    assert bad_key.value.details["error"]["details"][0]["reason"] == "API_KEY_INVALID"


async def test_v1_default_version_and_list_models(emu: Emulator) -> None:
    async with make_client(emu, api_version="v1").aio as v1:
        response = await v1.models.generate_content(model=NB25, contents="a cat", config=image_config("21:9"))
        assert Image.open(io.BytesIO(final_image(response).inline_data.data)).size == (1536, 672)
        names = [m.name async for m in await v1.models.list()]
    assert f"models/{PRO}" in names and f"models/{FLASH}" in names
