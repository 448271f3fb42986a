"""`imagegen serve --help` shows every flag's default and variable; bad IMAGEGEN_* values are usage errors."""

from __future__ import annotations

import re

import pytest

from imagegen_cli.main import main
from imagegen_server.config import ServerConfig, build_parser, default_text


def test_every_flag_shows_its_default_and_variable(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--help"]) == 0
    text = capsys.readouterr().out
    parser = build_parser()
    for dest in vars(parser.parse_args([])):
        flat = " ".join(text.split())
        assert f"env IMAGEGEN_{dest.upper()})" in flat, dest
    # One "(default: ...)" per flag: every option but --help.
    flags = {m for m in re.findall(r"^  (--[a-z-]+)", text, flags=re.MULTILINE) if m != "--help"}
    assert len(flags) == len(vars(parser.parse_args([])))
    assert " ".join(text.split()).count("(default: ") == len(flags)
    assert "IMAGEGEN_MAX_PROMPT_CHARS" in text  # environment-only settings are listed too
    assert "7 the port is already in use" in text


def test_default_texts() -> None:
    assert default_text("port") == str(ServerConfig().port)
    assert default_text("strict_constraints") == "on"
    assert default_text("metrics_port") == "off"
    assert default_text("max_message_bytes") == "67108864 (64 MiB)"
    assert default_text("allowed_models").startswith("gemini-")


def test_a_bad_environment_value_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        ServerConfig.from_args([], env={"IMAGEGEN_PORT": "fifty"})
    assert exc.value.code == 2
    assert "IMAGEGEN_PORT='fifty' is not a valid int" in capsys.readouterr().err
