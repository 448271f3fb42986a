"""The README stays true: its Python examples and its ``imagegen`` commands run as written against a real server.

Each ```python block is executed (in a worker thread, since the sync client
blocks) with the README's address swapped for the test server's, in a temporary
working directory. Each ``imagegen`` command of the CLI blocks runs through the
real CLI against the same server (long-running ``serve``, ``emulator`` and
``demo`` are parsed only; ``demo`` has its own test), and a ``# ...`` line right
after a command is the output it must print. The exit-code and configuration
tables are held to the code.
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import urllib.request
from pathlib import Path

import pytest

from imagegen_cli.exit_codes import EXIT_CODES
from imagegen_cli.main import build_parser as cli_parser
from imagegen_cli.main import main as cli_main
from imagegen_server.app import RunningServer
from imagegen_server.config import ServerConfig, env_name
from imagegen_server.config import build_parser as serve_parser
from imagegen_server.emulator.cli import build_parser as emulator_parser

README_PATH = Path(__file__).resolve().parents[2] / "README.md"
README = README_PATH.read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.DOTALL)
BASH_BLOCKS = re.findall(r"```bash\n(.*?)```", README, flags=re.DOTALL)
README_TARGET = "127.0.0.1:50051"


def test_readme_has_examples() -> None:
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(BLOCKS)))
async def test_readme_example_runs(
    index: int, server: RunningServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code = BLOCKS[index].replace(README_TARGET, server.target)
    await asyncio.to_thread(exec, compile(code, f"README.md[python block {index}]", "exec"), {"__name__": "__readme__"})
    if "save(" in code:
        assert any(tmp_path.glob("*.png")), "the example should have written its image"  # noqa: ASYNC240


# ------------------------------------------------------------------------------------------ commands


def _commands(block: str) -> list[tuple[list[str], str | None]]:
    """``imagegen`` commands of a bash block (env assignments dropped), each with the ``# output`` line after it."""
    lines = block.splitlines()
    found: list[tuple[list[str], str | None]] = []
    for n, line in enumerate(lines):
        words = shlex.split(line, comments=True)
        while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):
            words.pop(0)
        if words[:1] != ["imagegen"]:
            continue
        after = lines[n + 1] if n + 1 < len(lines) else ""
        found.append((words[1:], after[2:] if after.startswith("# ") else None))
    return found


CLI_BLOCK = next(b for b in BASH_BLOCKS if "imagegen serve" in b)
SCENARIO_BLOCK = next(b for b in BASH_BLOCKS if "/emulator/scenarios" in b)


def _with_target(argv: list[str], target: str) -> list[str]:
    argv = [target if word == README_TARGET else word for word in argv]
    return argv if "--target" in argv else [*argv, "--target", target]


def _parses(argv: list[str]) -> None:
    command, rest = argv[0], argv[1:]
    if command == "serve":
        ServerConfig.from_args(rest, env={})
    elif command == "emulator":
        emulator_parser().parse_args(rest)
    else:
        cli_parser().parse_args(argv)


def _same_output(printed: str, expected: str) -> bool:
    """Equal but for the timing, which differs run to run."""
    return re.sub(r"time=\S+", "time=T", printed.strip()) == re.sub(r"time=\S+", "time=T", expected.strip())


async def test_readme_cli_commands_run(
    server: RunningServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("IMAGEGEN_TARGET", raising=False)
    ran = 0
    for argv, expected in _commands(CLI_BLOCK):
        if argv[0] in {"serve", "emulator", "demo"}:
            _parses(argv)
            continue
        full = _with_target(argv, server.target)
        code = await asyncio.to_thread(cli_main, full)
        captured = capsys.readouterr()
        assert code == 0, (argv, captured.err)
        if expected is not None:
            assert _same_output(captured.out, expected), (argv, captured.out, expected)
        ran += 1
    assert ran >= 5
    assert (tmp_path / "fox.png").exists() and (tmp_path / "fox-night.png.imagegen.json").exists()


async def test_readme_emulator_scenario_runs(
    server: RunningServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    match = re.search(r"curl -s -X POST http://127\.0\.0\.1:PORT(\S+) -d '(.*?)'", SCENARIO_BLOCK)
    assert match, SCENARIO_BLOCK
    path, body = match.groups()
    request = urllib.request.Request(server.upstream_url + path, data=body.encode(), method="POST")
    reply = await asyncio.to_thread(urllib.request.urlopen, request, timeout=10)
    marker = json.loads(reply.read())["marker"]
    [(argv, _)] = [c for c in _commands(SCENARIO_BLOCK) if c[0][0] == "generate"]
    argv = [re.sub(r"\[emulator:\w+\]", marker, word) for word in argv]
    assert await asyncio.to_thread(cli_main, _with_target(argv, server.target)) == 0
    out = capsys.readouterr().out
    assert "attempt 1 failed: RESOURCE_EXHAUSTED" in out
    assert "attempt 2 failed: UNAVAILABLE" in out
    assert "3 attempts" in out


# -------------------------------------------------------------------------------------------- tables


def _table_after(heading: str) -> list[list[str]]:
    start = README.index(heading)
    rows = []
    for line in README[start:].splitlines()[1:]:
        if rows and not line.startswith("|"):
            break
        if line.startswith("|") and not line.startswith("|---"):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows[1:]  # without the header row


def test_readme_exit_codes_are_the_clis() -> None:
    rows = _table_after("Exit codes (also in `imagegen --help`)")
    assert [(int(code), meaning) for code, meaning in rows] == list(EXIT_CODES)


def test_readme_configuration_names_every_setting() -> None:
    section = README[README.index("## Configuration") : README.index("## Error mapping")]
    flags = re.findall(r"--[a-z][a-z-]+", serve_parser().format_help())
    missing = sorted({f for f in flags if f != "--help" and f not in section})
    assert not missing, f"flags missing from the README's configuration table: {missing}"
    dests = set(vars(serve_parser().parse_args([])))
    env_only = [env_name(f) for f in ServerConfig.__dataclass_fields__ if f not in dests and f != "api_key"]
    assert not [v for v in env_only if v not in section], "environment-only settings must be in the table"
