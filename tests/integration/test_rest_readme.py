"""The README's curl examples, run through the real REST port (aiohttp plays curl; the pipe runs as written)."""

from __future__ import annotations

import asyncio
import re
import shlex
import subprocess
import sys
from pathlib import Path

import aiohttp

from imagegen_server.app import RunningServer
from tests.conftest import ServerFactory

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
SECTION = README[README.index("## REST and Server-Sent Events") :]
BLOCK = re.search(r"```bash\n(.*?)```", SECTION, flags=re.DOTALL)
assert BLOCK is not None, "the README's REST section has a bash block"
#: Each curl command with its continuation lines joined, split into pipeline stages.
COMMANDS = [c for c in BLOCK.group(1).replace("\\\n", " ").splitlines() if c.startswith("curl ")]


def _curl(stage: list[str]) -> tuple[str, str, bytes | None, dict[str, str]]:
    """(method, path, body, headers) of a curl command line."""
    words = iter(stage[1:])
    url, body, headers = "", None, {}
    for word in words:
        if word == "-d":
            body = next(words).encode()
        elif word == "-H":
            name, _, value = next(words).partition(":")
            headers[name.strip()] = value.strip()
        elif not word.startswith("-"):
            url = word
    assert url.startswith("localhost:8080/"), url
    return ("POST" if body is not None else "GET"), url.removeprefix("localhost:8080"), body, headers


async def test_readme_has_the_curl_examples() -> None:
    assert [c.split()[2] if c.split()[1].startswith("-") else c.split()[1] for c in COMMANDS] == [
        "localhost:8080/v1/models",
        "localhost:8080/v1/images:generate",
        "localhost:8080/v1/images:generateStream",
    ]


async def test_readme_curl_examples_run_against_the_rest_port(make_server: ServerFactory, tmp_path: Path) -> None:
    async with make_server(http_port=0) as server, aiohttp.ClientSession() as http:
        for command in COMMANDS:
            curl, *pipe = command.split(" | ")
            await _run(server, http, shlex.split(curl), [shlex.split(stage) for stage in pipe], tmp_path)
    assert (tmp_path / "out.png").read_bytes().startswith(b"\x89PNG")


async def _run(
    server: RunningServer, http: aiohttp.ClientSession, curl: list[str], pipe: list[list[str]], cwd: Path
) -> None:
    method, path, body, headers = _curl(curl)
    async with http.request(method, f"http://127.0.0.1:{server.http_port}{path}", data=body, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        output = await resp.read()
    if path.endswith("Stream"):
        assert resp.content_type == "text/event-stream"
        assert output.decode().split("\n\n")[-2].startswith("event: completed\n")
    for stage in pipe:
        assert stage[0] == "python3", stage
        done = await asyncio.to_thread(
            subprocess.run, [sys.executable, *stage[1:]], input=output, cwd=cwd, check=True, capture_output=True
        )
        output = done.stdout
