"""``imagegen demo``: start the server with the embedded emulator and exercise the SDK against it.

This module imports the server package; :mod:`imagegen_cli.main` imports it only for ``imagegen demo``.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from pathlib import Path
from typing import Any, TextIO

from imagegen import AsyncClient, Completed
from imagegen_cli.images import result_line
from imagegen_cli.progress import describe_event
from imagegen_server.app import run_server
from imagegen_server.config import ServerConfig

DEMO_PROMPT = "a red fox in fresh snow, watercolour"


async def _demo(out_dir: Path, out: TextIO) -> int:
    async with run_server(ServerConfig(port=0)) as running:
        upstream = "embedded Gemini emulator" if running.emulator is not None else "upstream Gemini"
        print(f"server listening on {running.target} ({upstream})", file=out, flush=True)
        async with AsyncClient(running.target) as client:
            # 1. Generate (the first turn of a conversation is a plain Generate call).
            print(f"\n1. Generate: {DEMO_PROMPT!r}", file=out, flush=True)
            started = time.monotonic()
            chat = await client.conversation(DEMO_PROMPT, width=1024, height=1024, seed=7)
            assert chat.last is not None
            path = out_dir / "imagegen-demo.png"
            chat.last.save(path)
            print(result_line(path, chat.last, time.monotonic() - started, asked="1024x1024"), file=out, flush=True)

            # 2. Two refinements; the conversation keeps history and thought signatures.
            print("\n2. Refine twice with a Conversation", file=out, flush=True)
            for step, edit in enumerate(("make it night", "add a full moon"), start=1):
                started = time.monotonic()
                result = await chat.refine(edit)
                path = out_dir / f"imagegen-demo-refine-{step}.png"
                result.save(path)
                print(f"{edit!r}: " + result_line(path, result, time.monotonic() - started), file=out, flush=True)
            print(f"history: {len(chat.history)} turns", file=out, flush=True)

            # 3. A stream that survives injected upstream failures.
            prompt = "a lighthouse at dusk"
            if running.emulator is not None:
                scenario: Any = running.emulator.scenario("rate_limit:0.5", "overloaded", "ok")
                if inspect.isawaitable(scenario):
                    scenario = await scenario
                prompt = f"{prompt} {scenario.marker}"
                print("\n3. Stream with injected failures: 429, then 503, then success", file=out, flush=True)
            else:
                print("\n3. Stream", file=out, flush=True)
            started = time.monotonic()
            async with client.generate_stream(prompt, seed=11) as stream:
                async for event in stream:
                    line = describe_event(event)
                    if line:
                        print(f"  {line}", file=out, flush=True)
                    if isinstance(event, Completed):
                        path = out_dir / "imagegen-demo-stream.png"
                        event.result.save(path)
                        print(result_line(path, event.result, time.monotonic() - started), file=out, flush=True)
    print("\ndemo done", file=out, flush=True)
    return 0


def run_demo(out_dir: Path, out: TextIO) -> int:
    """Run the demo to completion and return the exit code."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return asyncio.run(_demo(out_dir, out))
