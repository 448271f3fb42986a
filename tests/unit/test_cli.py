"""The imagegen CLI against a fake server: parsing, outputs, sidecars, progress, exit codes."""

from __future__ import annotations

import importlib.metadata
import io
import json
import shlex
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

import imagegen
from imagegen._convert import event_from_response
from imagegen.testing import FakeError, FakeServer, FakeStream, make_generation, make_png, stream_events
from imagegen.v1 import image_generation_service_pb2 as pb
from imagegen.v1 import image_pb2
from imagegen_cli import files, main
from imagegen_cli.exit_codes import EXIT_CODES, describe_error, exit_code_for
from imagegen_cli.progress import JsonReporter, LiveReporter, PlainReporter, make_reporter

S = grpc.StatusCode


@pytest.fixture
def server() -> Iterator[FakeServer]:
    with FakeServer(health=True) as running:
        yield running


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("IMAGEGEN_TARGET", raising=False)


def run(*argv: str) -> int:
    return main.main(list(argv))


# ------------------------------------------------------------------------------------------ parsing


def test_help_and_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("--help") == 0
    out = capsys.readouterr().out
    for command in ("generate", "refine", "health", "models", "demo", "serve", "emulator"):
        assert command in out
    assert "examples:" in out and 'imagegen generate "a red fox"' in out
    assert "1920x1080 gives 16:9 at 2K, 2752x1536" in " ".join(out.split())
    for code, meaning in EXIT_CODES:
        assert f"  {code:<4} {meaning}" in out
    assert run() == 2
    assert run("generate") == 2
    assert run("bogus") == 2
    assert run("generate", "x", "--width", "wide") == 2


def test_parser_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    args = main.build_parser().parse_args(["generate", "a fox", "--input", "a.png", "--input", "b.png"])
    assert args.target == imagegen.DEFAULT_TARGET and args.timeout == imagegen.DEFAULT_TIMEOUT
    assert args.input == ["a.png", "b.png"] and not args.stream and args.seed is None
    monkeypatch.setenv("IMAGEGEN_TARGET", "example:1234")
    assert main.build_parser().parse_args(["models"]).target == "example:1234"


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (imagegen.InvalidRequestError("x"), 2),
        (imagegen.ContentPolicyError("x"), 3),
        (imagegen.RateLimitError("x"), 4),
        (imagegen.QuotaExhaustedError("x"), 4),
        (imagegen.UnavailableError("x"), 5),
        (imagegen.DeadlineExceededError("x"), 5),
        (imagegen.NotFoundError("x"), 6),
        (imagegen.NoImageError("x"), 1),
        (imagegen.InternalError("x"), 1),
        (imagegen.UpstreamAuthError("x"), 1),
        (imagegen.ImagegenError("x"), 1),
    ],
)
def test_exit_code_for(error: imagegen.ImagegenError, code: int) -> None:
    assert exit_code_for(error) == code


def test_output_names(tmp_path: Path) -> None:
    assert files.refine_output("fox.png") == Path("fox-2.png")
    assert files.refine_output("fox-2.png") == Path("fox-3.png")
    (tmp_path / "fox-2.png").write_bytes(b"x")
    assert files.refine_output("fox.png") == Path("fox-3.png")
    assert files.sidecar_path("out/fox.png") == Path("out/fox.png.imagegen.json")


# --------------------------------------------------------------------------------- generate / refine


def test_generate_writes_image_and_sidecar(
    server: FakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server.servicer.push(make_generation(seed=7, width=16, height=16, signature=b"\x00\xffsig"))
    reference = tmp_path / "ref.png"
    reference.write_bytes(make_png(2, 2))
    code = run(
        "generate", "a red fox", "-o", "fox.png", "--width", "1024", "--height", "1024", "--seed", "7",
        "--model", "gemini-3.1-flash-image", "--aspect-ratio", "1:1", "--image-size", "1K",
        "--input", str(reference), "--target", server.target,
    )  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert out.startswith(
        "fox.png  asked 1024x1024, 1:1, 1K -> 16x16 (1:1, 1K)  seed=7  model=gemini-3.1-flash-image  1 attempt  time="
    )
    assert (tmp_path / "fox.png").read_bytes().startswith(b"\x89PNG")
    sidecar = json.loads((tmp_path / "fox.png.imagegen.json").read_text())
    assert sidecar["format"] == "imagegen.conversation.v1"
    assert sidecar["settings"]["width"] == 1024
    assert len(sidecar["history"]) == 2
    request = server.servicer.calls[-1].request
    assert isinstance(request, pb.GenerateRequest)
    assert request.options.seed == 7 and request.options.image_size == "1K"
    assert len(request.input_images) == 1


def test_generate_default_name_and_json(server: FakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("generate", "A Red Fox!", "--json", "--target", server.target) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["event"] == "completed" and data["path"] == "a-red-fox.png"
    assert data["sidecar"] == "a-red-fox.png.imagegen.json"
    assert {"seed", "width", "height", "model", "attempts", "time", "generation_id"} <= data.keys()
    assert run("generate", "A Red Fox!", "--target", server.target) == 0
    assert (tmp_path / "a-red-fox-2.png").exists()


def test_refine_uses_sidecar_history(server: FakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    server.servicer.push(
        make_generation(generation_id="g1", signature=b"first\x00sig"),
        make_generation(generation_id="g2", signature=b"second\xffsig"),
        make_generation(generation_id="g3"),
    )
    assert (
        run("generate", "a fox", "-o", "fox.png", "--width", "1024", "--height", "1024", "--target", server.target) == 0
    )
    assert run("refine", "fox.png", "make it night", "--target", server.target) == 0
    assert (tmp_path / "fox-2.png").exists() and (tmp_path / "fox-2.png.imagegen.json").exists()
    request = server.servicer.calls[-1].request
    assert isinstance(request, pb.RefineRequest)
    assert request.prompt == "make it night"
    assert request.history[1].parts[-1].thought_signature == b"first\x00sig"
    assert request.options.width == 1024

    assert run("refine", "fox-2.png", "add a moon", "-o", "moon.png", "--target", server.target) == 0
    request = server.servicer.calls[-1].request
    assert isinstance(request, pb.RefineRequest)
    assert len(request.history) == 4
    assert request.history[3].parts[-1].thought_signature == b"second\xffsig"
    assert (tmp_path / "moon.png.imagegen.json").exists()
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["fox.png", "fox-2.png", "moon.png"]


def test_refine_without_sidecar_uses_image_as_input(
    server: FakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "photo.png").write_bytes(make_png(4, 4))
    assert run("refine", "photo.png", "make it night", "--target", server.target) == 0
    assert "no photo.png.imagegen.json" in capsys.readouterr().err
    request = server.servicer.calls[-1].request
    assert isinstance(request, pb.GenerateRequest)
    assert request.input_images[0].data == make_png(4, 4)
    assert (tmp_path / "photo-2.png.imagegen.json").exists()


def test_local_input_errors_exit_2(server: FakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("refine", "missing.png", "x", "--target", server.target) == 2
    assert "image not found" in capsys.readouterr().err
    assert run("generate", "x", "--input", "nope.png", "--target", server.target) == 2
    assert "input image not found: nope.png" in capsys.readouterr().err
    (tmp_path / "bad.png").write_bytes(make_png())
    (tmp_path / "bad.png.imagegen.json").write_text("{}")
    assert run("refine", "bad.png", "x", "--target", server.target) == 2
    assert "cannot read bad.png.imagegen.json" in capsys.readouterr().err
    assert server.servicer.calls == []


# -------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("fake", "code", "text"),
    [
        (
            FakeError(S.INVALID_ARGUMENT, "bad width", "INVALID_REQUEST", field_violations=[("options.width", "x")]),
            2,
            "invalid request",
        ),
        (
            FakeError(
                S.INVALID_ARGUMENT, "blocked", "CONTENT_BLOCKED", {"blockSide": "prompt", "blockReason": "SAFETY"}
            ),
            3,
            "content blocked",
        ),
        (FakeError.rate_limited(retry_after=4.0), 4, "retry after 4.0 s"),
        (FakeError(S.RESOURCE_EXHAUSTED, "daily", "UPSTREAM_QUOTA_EXHAUSTED"), 4, "rate limited"),
        (FakeError.unavailable("UPSTREAM_UNAVAILABLE"), 5, "unavailable"),
        (FakeError(S.DEADLINE_EXCEEDED, "slow", "UPSTREAM_TIMEOUT"), 5, "deadline exceeded"),
        (FakeError(S.NOT_FOUND, "no model", "MODEL_NOT_FOUND", {"model": "m"}), 6, "not found"),
        (FakeError(S.FAILED_PRECONDITION, "no image", "NO_IMAGE"), 1, "NoImageError"),
        (FakeError(S.INTERNAL, "boom", "INTERNAL"), 1, "InternalError"),
    ],
)
def test_error_exit_codes(
    server: FakeServer, fake: FakeError, code: int, text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    server.servicer.push(fake)
    assert run("generate", "x", "--target", server.target) == code
    captured = capsys.readouterr()
    assert captured.out == ""
    err_lines = captured.err.strip().splitlines()
    assert len(err_lines) == 1 and err_lines[0].startswith("imagegen: error: ")
    assert text in err_lines[0]
    if fake.reason == "CONTENT_BLOCKED":
        assert "[prompt side, SAFETY]" in err_lines[0]


def test_error_json(server: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    server.servicer.push(FakeError.rate_limited(retry_after=2.0))
    assert run("generate", "x", "--json", "--target", server.target) == 4
    data = json.loads(capsys.readouterr().out)
    assert data["event"] == "error" and data["exit_code"] == 4
    assert data["reason"] == "UPSTREAM_RATE_LIMITED" and data["retry_after"] == 2.0
    assert data["error"] == "RateLimitError"


def test_unreachable_server_one_line_with_hint(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("generate", "x", "--target", "127.0.0.1:1", "--timeout", "5") == 5
    assert capsys.readouterr().err.splitlines() == [
        "imagegen: error: cannot reach an imagegen server at 127.0.0.1:1 (connection refused); "
        "is `imagegen serve` running there? Pass --target or set IMAGEGEN_TARGET"
    ]


def test_help_examples_parse(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("--help") == 0
    help_text = capsys.readouterr().out
    examples = help_text.split("examples:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert len(examples) >= 5
    for line in examples:
        argv = shlex.split(line.split("   ")[0])  # the command, without its explanation
        assert argv[0] == "imagegen"
        if argv[1] != "serve":
            main.build_parser().parse_args(argv[1:])


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("--version") == 0
    assert capsys.readouterr().out.strip() == f"imagegen {importlib.metadata.version('imagegen')}"


@pytest.mark.parametrize("command", ["health", "models", "demo", "generate", "refine"])
def test_every_command_has_a_description(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(command, "--help") == 0
    usage, description = capsys.readouterr().out.split("\n\n")[:2]
    assert usage.startswith(f"usage: imagegen {command}")
    assert len(description.split()) >= 8, description


@pytest.mark.parametrize(
    ("target", "why"),
    [
        ("http://127.0.0.1:50051", "is a URL"),
        ("localhost", "has no port"),
        ("", "has no port"),
        ("127.0.0.1:abc", "the port must be a number"),
        ("127.0.0.1:99999", "the port must be a number"),
        ("not a host:50051", "is not a host name"),
        ("[::1:50051", "is not a host name"),
    ],
)
def test_malformed_target_exits_2(target: str, why: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("models", "--target", target) == 2
    assert why in capsys.readouterr().err


@pytest.mark.parametrize(
    "target", ["127.0.0.1:50051", "localhost:1", "[::1]:50051", "dns:///example.com:443", "unix:/tmp/s"]
)
def test_wellformed_targets_parse(target: str) -> None:
    assert main.build_parser().parse_args(["models", "--target", target]).target == target


def test_malformed_target_from_the_environment_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("IMAGEGEN_TARGET", "http://example:1")
    assert run("health") == 2
    assert "is a URL" in capsys.readouterr().err


def test_connection_errors_name_the_target() -> None:
    unresolved = imagegen.UnavailableError("DNS resolution failed for nosuch.invalid:1: Domain name not found")
    assert describe_error(unresolved, "nosuch.invalid:1") == (
        "cannot resolve the host of nosuch.invalid:1; check --target or IMAGEGEN_TARGET"
    )
    late = imagegen.DeadlineExceededError("Deadline Exceeded", code=S.DEADLINE_EXCEEDED)
    assert describe_error(late, "h:1").startswith("deadline exceeded: no answer from h:1 in time")
    # An error the server sent (it carries a reason) is reported as such, not as a connection problem.
    shutting = imagegen.UnavailableError("draining", code=S.UNAVAILABLE, reason="SHUTTING_DOWN")
    assert describe_error(shutting, "h:1").startswith("unavailable: ")


# gRPC 1.85's own texts, from real runs: a plaintext client against a TLS server, and the reverse.
_PLAIN_TO_TLS = "failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:50777: Socket closed"
_TLS_TO_PLAIN = (
    "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:50778: Tls handshake failed "
    "(TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:100000f7:SSL routines:OPENSSL_internal:WRONG_VERSION_NUMBER: "
    "Invalid certificate verification context: OK"
)
_UNTRUSTED = (
    "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:50777: Tls handshake failed "
    "(TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:1000007d:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED: "
    "self signed certificate: OK"
)


@pytest.mark.parametrize(
    ("message", "line"),
    [
        (_PLAIN_TO_TLS, "(the server closed the connection); does it require TLS (--tls or --ca-cert)?"),
        (_TLS_TO_PLAIN, "(TLS handshake failed); the server does not speak TLS: drop --tls and --ca-cert"),
        (
            _UNTRUSTED,
            "(TLS handshake failed: its certificate is not trusted); pass the CA that signed it with --ca-cert",
        ),
        ("something new", "(no connection); is `imagegen serve` running there?"),
    ],
)
def test_connection_errors_say_what_to_try(message: str, line: str) -> None:
    text = describe_error(imagegen.UnavailableError(message), "h:1")
    assert text.startswith("cannot reach an imagegen server at h:1 ") and line in text, text


def test_a_closed_stdout_is_not_an_error(server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    class ClosedPipe(io.StringIO):
        def write(self, _: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    err = io.StringIO()
    monkeypatch.setattr("sys.stdout", ClosedPipe())
    monkeypatch.setattr("sys.stderr", err)
    assert run("models", "--target", server.target) == 1
    assert err.getvalue() == ""


def test_ctrl_c_exits_130(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def interrupted(*_: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(main.images, "generate", interrupted)
    assert run("generate", "x") == 130
    assert capsys.readouterr().err == "imagegen: interrupted\n"


def test_client_retries_flag(server: FakeServer) -> None:
    server.servicer.push(FakeError.unavailable("SHUTTING_DOWN"))
    assert run("generate", "x", "--retries", "2", "--target", server.target) == 0
    assert len(server.servicer.calls) == 2


# -------------------------------------------------------------------------------------------- stream


def _stream_script() -> FakeStream:
    return FakeStream(
        stream_events(
            make_generation(seed=11), failures=[(S.RESOURCE_EXHAUSTED, "UPSTREAM_RATE_LIMITED", 4.0)], previews=2
        )
    )


def test_stream_plain_lines(server: FakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    server.servicer.push(_stream_script())
    assert run("generate", "a fox", "-o", "fox.png", "--stream", "--target", server.target) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("accepted: generation gen-1")
    assert lines[1] == "attempt 1/3 started"
    assert lines[2].startswith("attempt 1 failed: RESOURCE_EXHAUSTED UPSTREAM_RATE_LIMITED")
    assert lines[2].endswith("retry in 4.0 s")
    assert lines[3] == "attempt 2/3 started"
    assert lines[4] == "preview 1 (4x4) saved to fox.preview-1.png"
    assert lines[5] == "preview 2 (4x4) saved to fox.preview-2.png"
    assert lines[6].startswith("fox.png  ") and "  seed=11  " in lines[6]
    assert len(lines) == 7
    assert (tmp_path / "fox.preview-1.png").exists() and (tmp_path / "fox.preview-2.png").exists()
    assert (tmp_path / "fox.png.imagegen.json").exists()
    assert server.servicer.calls[-1].method == "GenerateStream"


def test_stream_json_lines(server: FakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    server.servicer.push(_stream_script())
    assert run("generate", "a fox", "-o", "out/fox.png", "--stream", "--json", "--target", server.target) == 0
    assert (tmp_path / "out" / "fox.preview-2.png").exists()
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["event"] for e in events] == [
        "accepted",
        "attempt_started",
        "attempt_failed",
        "heartbeat",
        "attempt_started",
        "preview",
        "preview",
        "completed",
    ]
    assert events[2]["code"] == "RESOURCE_EXHAUSTED" and events[2]["retry_delay"] == 4.0
    assert events[5]["path"] == str(Path("out/fox.preview-1.png"))
    assert events[-1]["path"] == str(Path("out/fox.png")) and events[-1]["attempts"] == 2


def test_stream_refine_and_stream_error(server: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("generate", "a fox", "-o", "fox.png", "--target", server.target) == 0
    server.servicer.push(FakeStream(stream_events()[:2], error=FakeError.rate_limited(retry_after=3.0)))
    assert run("refine", "fox.png", "night", "--stream", "--json", "--target", server.target) == 4
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()[1:]]
    assert [e["event"] for e in out] == ["accepted", "attempt_started", "error"]
    assert server.servicer.calls[-1].method == "RefineStream"
    assert run("refine", "fox.png", "night", "--stream", "--target", server.target) == 0
    assert server.servicer.calls[-1].method == "RefineStream"


def test_live_reporter_status_line() -> None:
    out = io.StringIO()
    reporter = LiveReporter(out, interval=0.01)
    script = stream_events(failures=[(S.RESOURCE_EXHAUSTED, "UPSTREAM_RATE_LIMITED", 4.0)], previews=1)
    for response in script:
        event = event_from_response(response)
        assert event is not None
        reporter.event(event, preview_path=Path("fox.preview-1.png") if event.kind == "preview" else None)
        if event.kind == "attempt_failed":
            text = out.getvalue()
            assert "retry in 4.0 s because RESOURCE_EXHAUSTED (UPSTREAM_RATE_LIMITED)" in text
            assert "attempt 1/3" in text
    reporter.close()
    text = out.getvalue()
    assert "\r\x1b[2K" in text
    assert "attempt 1 failed: RESOURCE_EXHAUSTED UPSTREAM_RATE_LIMITED" in text
    assert "preview 1 (4x4) saved to fox.preview-1.png\n" in text
    assert "attempt 2/3" in text
    assert text.endswith("\r\x1b[2K")


def test_reporters_say_when_the_server_falls_back_to_another_model() -> None:
    fell = event_from_response(
        pb.GenerateStreamResponse(
            model_fallback=pb.ModelFallback(
                from_model="gemini-3-pro-image",
                to_model="gemini-3.1-flash-image",
                reason=image_pb2.FALLBACK_REASON_UNAVAILABLE,
            )
        )
    )
    assert fell is not None
    plain, lines = io.StringIO(), io.StringIO()
    PlainReporter(plain).event(fell)
    JsonReporter(lines).event(fell)
    assert plain.getvalue() == "gemini-3-pro-image unavailable: falling back to gemini-3.1-flash-image\n"
    assert json.loads(lines.getvalue()) == {
        "event": "model_fallback",
        "from_model": "gemini-3-pro-image",
        "to_model": "gemini-3.1-flash-image",
        "reason": "unavailable",
    }
    live = io.StringIO()
    reporter = LiveReporter(live, interval=60)
    reporter.event(fell)
    reporter.close()
    assert "falling back to gemini-3.1-flash-image" in live.getvalue()


def test_make_reporter_picks_by_tty() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert type(make_reporter(io.StringIO(), json_lines=False)).__name__ == "PlainReporter"
    assert type(make_reporter(io.StringIO(), json_lines=True)).__name__ == "JsonReporter"
    live = make_reporter(Tty(), json_lines=False)
    assert isinstance(live, LiveReporter)
    live.close()


# -------------------------------------------------------------------------------- health / models


def test_health(server: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("health", "--target", server.target) == 0
    assert capsys.readouterr().out.strip() == "SERVING"
    assert run("health", "--service", "no.such.Service", "--target", server.target) == 6
    assert run("health", "--target", "127.0.0.1:1", "--timeout", "5") == 5


def test_models(server: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("models", "--target", server.target) == 0
    out = capsys.readouterr().out
    assert "gemini-3.1-flash-image (default)" in out and "1:1, 16:9" in out
    assert run("models", "--json", "--target", server.target) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["name"] == "gemini-3.1-flash-image" and rows[0]["image_sizes"] == ["1K", "2K"]


# ----------------------------------------------------------------------------------------- delegation


def test_serve_and_emulator_delegate(monkeypatch: pytest.MonkeyPatch) -> None:
    import imagegen_server.cli
    import imagegen_server.emulator

    seen: list[tuple[str, list[str]]] = []

    def fake_serve(argv: list[str]) -> int:
        seen.append(("serve", argv))
        return 0

    def fake_emulator(argv: list[str]) -> int:
        seen.append(("emulator", argv))
        return 3

    monkeypatch.setattr(imagegen_server.cli, "serve_main", fake_serve)
    monkeypatch.setattr(imagegen_server.emulator, "emulator_main", fake_emulator)
    assert run("serve", "--port", "0", "--help") == 0
    assert run("emulator", "--port", "9") == 3
    assert seen == [("serve", ["--port", "0", "--help"]), ("emulator", ["--port", "9"])]
