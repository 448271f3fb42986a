"""Caller strings of any length or content, through the real server: short INVALID_ARGUMENT, one log line each."""

from __future__ import annotations

import logging

import grpc
import pytest

from imagegen.v1 import image_generation_service_pb2 as pb
from imagegen.v1 import image_generation_service_pb2_grpc as pb_grpc
from imagegen.v1 import image_pb2
from imagegen_server.app import RunningServer
from tests.integration.status_helpers import Details, access_lines, details_of

Stub = pb_grpc.ImageGenerationServiceStub
HUGE = "\u00e9\n" * 20_000  # 40,000 characters, two UTF-8 bytes each, with newlines


async def _fail(stub, request: pb.GenerateRequest) -> Details:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Generate(request, timeout=10)
    return details_of(info.value)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"model": HUGE}, "options.model"),
        ({"aspect_ratio": HUGE}, "options.aspect_ratio"),
        ({"image_size": HUGE}, "options.image_size"),
        ({"request_id": HUGE}, "options.request_id"),
    ],
)
async def test_huge_option_strings_are_cut(stub: Stub, options: dict[str, str], field: str) -> None:
    d = await _fail(stub, pb.GenerateRequest(prompt="a cat", options=pb.GenerationOptions(**options)))
    assert d.code is grpc.StatusCode.INVALID_ARGUMENT, (d.code, d.message[:200])
    assert field in d.fields
    assert len(d.message) <= 400
    assert all(len(text) <= 300 for text in [*d.fields.values(), *d.metadata.values()])
    assert "\n" not in d.message


async def test_huge_mime_type_is_cut(stub: Stub) -> None:
    png = bytes.fromhex("89504e470d0a1a0a") + b"\x00" * 40
    image = image_pb2.Image(data=png, mime_type=HUGE)
    d = await _fail(stub, pb.GenerateRequest(prompt="a cat", input_images=[image]))
    assert d.code is grpc.StatusCode.INVALID_ARGUMENT
    assert len(d.message) <= 400


async def test_thousands_of_bad_parts_still_fit_the_trailer(stub: Stub) -> None:
    turns = [image_pb2.Turn(role=image_pb2.ROLE_USER if i % 2 == 0 else image_pb2.ROLE_MODEL) for i in range(200)]
    request = pb.RefineRequest(prompt="night", history=turns)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Refine(request, timeout=10)
    d = details_of(info.value)
    assert d.code is grpc.StatusCode.INVALID_ARGUMENT, (d.code, d.message)
    assert d.reason == "INVALID_REQUEST"
    assert d.fields


@pytest.mark.parametrize("prompt", ["   \t\n", "\u200b\u200b", "\u200b \u2060\ufeff\u3164", "\u0301\u0301", "\u2800"])
async def test_prompt_without_visible_characters_is_rejected(stub: Stub, prompt: str) -> None:
    d = await _fail(stub, pb.GenerateRequest(prompt=prompt))
    assert d.code is grpc.StatusCode.INVALID_ARGUMENT
    assert set(d.fields) == {"prompt"}


@pytest.mark.parametrize("prompt", ["a", " 猫 ", "\u200bx", "🐱"])
async def test_prompts_with_a_visible_character_pass_validation(stub: Stub, prompt: str) -> None:
    response = await stub.Generate(pb.GenerateRequest(prompt=prompt), timeout=30)
    assert response.generation.image.data


async def test_request_id_with_newline_cannot_forge_an_access_log_line(
    server: RunningServer,
    stub: Stub,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="imagegen_server.access")
    forged = "x\nGenerate OK 0.001s caller=admin requestId=forged\x1b[2K"
    await _fail(stub, pb.GenerateRequest(prompt="a cat", options=pb.GenerationOptions(request_id=forged)))
    lines = await access_lines(lambda: caplog.records, lambda found: len(found) >= 1)
    assert len(lines) == 1
    assert "\n" not in lines[0] and "\x1b" not in lines[0]
    assert lines[0].startswith("Generate INVALID_ARGUMENT ")
    assert "requestId=x\\nGenerate OK" in lines[0]
