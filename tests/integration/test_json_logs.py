"""Structured logs: `imagegen serve` writes one JSON object per line with the RPC's fields, never its prompt or key."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import pytest

from imagegen.v1 import image_generation_service_pb2 as pb
from imagegen.v1 import image_generation_service_pb2_grpc as pb_grpc
from imagegen_server.emulator import Emulator
from imagegen_server.logs import log_handler
from tests.conftest import ServerFactory

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
PROMPT = "a very private prompt about a lighthouse"
GENERATE = "imagegen.v1.ImageGenerationService/Generate"


def _env(emulator: Emulator) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IMAGEGEN_", "GEMINI_", "GOOGLE_"))}
    env["GEMINI_API_KEY"] = emulator.api_key
    env["IMAGEGEN_UPSTREAM_URL"] = emulator.base_url
    return env


async def _calls(target: str) -> None:
    """One good call with a request id and a traceparent, one refused with INVALID_ARGUMENT."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.ImageGenerationServiceStub(channel)
        await stub.Generate(
            pb.GenerateRequest(prompt=PROMPT, options=pb.GenerationOptions(request_id="log-1")),
            metadata=(("traceparent", TRACEPARENT),),
            timeout=30,
        )
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Generate(pb.GenerateRequest(prompt=""), timeout=30)


async def test_serve_logs_json_lines_with_the_rpc_fields_and_no_prompt_or_key(emulator: Emulator) -> None:
    # stderr is a pipe, not a terminal: JSON by default, no flag needed.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "imagegen_cli", "serve", "--port", "0", stderr=asyncio.subprocess.PIPE, env=_env(emulator)
    )
    assert proc.stderr is not None
    try:
        lines: list[str] = []
        target = ""
        while not target:
            raw = (await asyncio.wait_for(proc.stderr.readline(), 20)).decode()
            assert raw, f"server exited before listening: {lines}"
            lines.append(raw)
            message = json.loads(raw)["message"]
            if message.startswith("imagegen listening on "):
                target = message.split()[3]
        await _calls(target)
        proc.send_signal(signal.SIGTERM)
        rest = await asyncio.wait_for(proc.stderr.read(), 20)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    lines += rest.decode().splitlines(keepends=True)
    records = [json.loads(line) for line in lines]  # every line parses
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    access = [r for r in records if r["logger"] == "imagegen_server.access"]
    ok = next(r for r in access if r.get("code") == "OK" and r.get("method") == GENERATE)
    assert ok["request_id"] == "log-1" and ok["trace_id"] == TRACE_ID and ok["attempts"] == 1
    assert len(ok["generation_id"]) == 32 and isinstance(ok["duration"], float)
    # The pipeline's own line about the same request carries the same ids.
    done = next(r for r in records if r["message"].startswith(f"generation {ok['generation_id']} done"))
    assert done["request_id"] == "log-1" and done["trace_id"] == TRACE_ID and done["method"] == GENERATE
    assert done["caller"] == ok["caller"] == "anonymous"
    bad = next(r for r in access if r.get("code") == "INVALID_ARGUMENT")
    assert bad["method"] == GENERATE and "attempts" not in bad
    text = "".join(lines)
    assert "lighthouse" not in text
    assert emulator.api_key not in text


@contextmanager
def _json_log(**kwargs: Any) -> Iterator[io.StringIO]:
    out = io.StringIO()
    handler = log_handler("json", out, **kwargs)
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.INFO)
    try:
        yield out
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


async def test_log_prompts_puts_the_prompt_on_the_access_line(make_server: ServerFactory) -> None:
    with _json_log() as out:
        async with make_server(log_prompts=True) as server:
            await _calls(server.target)
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    ok = next(r for r in records if r.get("code") == "OK" and r.get("method") == GENERATE)
    assert ok["prompt"] == PROMPT
    # Only the access line: the prompt is not spread over every line of the request.
    assert sum("lighthouse" in json.dumps(r) for r in records) == 1


def test_a_message_containing_the_key_is_redacted() -> None:
    with _json_log(secrets=["AIza-not-a-real-key"]) as out:
        logging.getLogger("test.redact").warning("upstream said: bad key %s", "AIza-not-a-real-key")
    record = json.loads(out.getvalue())
    assert record["message"] == "upstream said: bad key [REDACTED]" and record["level"] == "WARNING"


def test_text_on_a_terminal_json_elsewhere() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal, pipe = Terminal(), io.StringIO()
    for stream in (terminal, pipe):
        handler = log_handler(None, stream)
        handler.handle(logging.LogRecord("x", logging.INFO, __file__, 1, "hello %s", ("world",), None))
    assert terminal.getvalue().endswith("INFO x [-] hello world\n")
    assert json.loads(pipe.getvalue())["message"] == "hello world"
