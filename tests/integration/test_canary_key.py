"""A canary API key through the whole fault matrix, with an upstream that echoes it everywhere.

The emulator's ``echo_key`` modifier writes the key it received into every text of its
answer: error messages and details (429 quota details, ErrorInfo metadata, BadRequest),
text parts, ``modelVersion``, ``responseId``, ``finishMessage``. The canary must appear in
no log record, no status message, no detail and no response field, on any RPC.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import replace

import aiohttp
import grpc
import pytest

from imagegen.v1 import image_generation_service_pb2 as pb
from imagegen.v1 import image_generation_service_pb2_grpc as pb_grpc
from imagegen.v1 import image_pb2
from imagegen_server.app import RunningServer, run_server
from imagegen_server.emulator import Emulator
from tests.conftest import FAST
from tests.integration.status_helpers import history_turn

CANARY = "AIzaSyCANARY-4f1d2c3b-never-show-me"

#: Every outcome and body fault the emulator can answer with (issue 11's fault matrix).
MATRIX = [
    "ok",
    "ok+thoughts:2",
    "rate_limit:0.01",
    "rate_limit_bare",
    "rate_limit_help_only",
    "quota_daily",
    "retry_after_header:0.01",
    "internal",
    "bad_gateway",
    "bad_gateway:html",
    "overloaded",
    "timeout",
    "not_found",
    "unknown_field",
    "invalid_argument",
    "failed_precondition",
    "bad_key",
    "no_key",
    "prompt_blocked",
    "output_blocked",
    "text_only",
    "no_image",
    "image_other",
    "ok+bad_json",
    "ok+bad_base64",
    "ok+not_image",
    "ok+cut_body",
]


@pytest.fixture
async def canary_emulator() -> AsyncIterator[Emulator]:
    async with Emulator(port=0, api_key=CANARY) as emu:
        yield emu


@pytest.fixture
async def canary_server(canary_emulator: Emulator) -> AsyncIterator[RunningServer]:
    config = replace(FAST, upstream_url=canary_emulator.base_url, api_key=CANARY, max_attempts=2)
    async with run_server(config) as running:
        yield running


def _assert_clean(what: str, data: bytes | str) -> None:
    raw = data.encode() if isinstance(data, str) else data
    assert CANARY.encode() not in raw, f"the API key leaked into {what}"


def _check_error(err: grpc.aio.AioRpcError) -> str:
    _assert_clean("a status message", err.details() or "")
    for key, value in err.trailing_metadata() or ():
        _assert_clean(f"trailer {key}", value)
    for key, value in err.initial_metadata() or ():
        _assert_clean(f"header {key}", value)
    return err.code().name


async def test_the_emulator_really_echoes_the_key(canary_emulator: Emulator) -> None:
    """Positive control: without the gateway, the canary is in the answer."""
    scenario = canary_emulator.scenario("rate_limit:0.01+echo_key", "ok+echo_key")
    url = f"{canary_emulator.base_url}/v1beta/models/gemini-2.5-flash-image:generateContent"
    body = {"contents": [{"role": "user", "parts": [{"text": f"a cat {scenario.marker}"}]}]}
    async with aiohttp.ClientSession() as session:
        for _ in range(2):
            async with session.post(url, json=body, headers={"x-goog-api-key": CANARY}) as resp:
                assert CANARY in await resp.text()


@pytest.mark.parametrize("step", MATRIX)
async def test_canary_never_leaves_the_gateway(
    canary_server: RunningServer, canary_emulator: Emulator, step: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    echo = "+".join([step, "echo_key"])
    scenario = canary_emulator.scenario(echo)
    prompt = f"a lighthouse {scenario.marker}"
    outcomes = []
    async with grpc.aio.insecure_channel(canary_server.target) as channel:
        stub = pb_grpc.ImageGenerationServiceStub(channel)
        try:
            response = await stub.Generate(pb.GenerateRequest(prompt=prompt), timeout=20)
            _assert_clean("a Generate response", response.SerializeToString())
            outcomes.append("OK")
        except grpc.aio.AioRpcError as err:
            outcomes.append(_check_error(err))
        call = stub.GenerateStream(pb.GenerateStreamRequest(prompt=prompt), timeout=20)
        try:
            async for event in call:
                _assert_clean("a GenerateStream event", event.SerializeToString())
            outcomes.append("OK")
        except grpc.aio.AioRpcError as err:
            outcomes.append(_check_error(err))
        for key, value in await call.trailing_metadata() or ():
            _assert_clean(f"stream trailer {key}", value)
    assert scenario.stats.received >= 2, "the calls reached the echoing upstream"
    for record in caplog.records:
        _assert_clean(f"log record {record.name}", record.getMessage())
        if record.exc_info:
            _assert_clean(f"traceback in {record.name}", logging.Formatter().formatException(record.exc_info))
    assert outcomes


async def test_canary_never_leaves_on_refine(
    canary_server: RunningServer, canary_emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    first = canary_emulator.scenario("ok")
    async with grpc.aio.insecure_channel(canary_server.target) as channel:
        stub = pb_grpc.ImageGenerationServiceStub(channel)
        generation = (await stub.Generate(pb.GenerateRequest(prompt=f"a cat {first.marker}"), timeout=20)).generation
        history = [
            image_pb2.Turn(role=image_pb2.ROLE_USER, parts=[image_pb2.Part(text="a cat")]),
            history_turn(generation),
        ]
        for step in ("ok+thoughts:1", "rate_limit:0.01", "no_image", "invalid_argument"):
            scenario = canary_emulator.scenario(f"{step}+echo_key")
            request = pb.RefineStreamRequest(prompt=f"at night {scenario.marker}", history=history)
            call = stub.RefineStream(request, timeout=20)
            try:
                async for event in call:
                    _assert_clean("a RefineStream event", event.SerializeToString())
            except grpc.aio.AioRpcError as err:
                _check_error(err)
            assert scenario.stats.received >= 1
    for record in caplog.records:
        _assert_clean(f"log record {record.name}", record.getMessage())
