"""The ``imagegen`` command line: generate, refine, stream progress, health, models, demo, serve, emulator.

Exit codes (see :data:`EXIT_CODES`): 0 success, 2 invalid input, 3 content
blocked, 4 rate limited or quota exhausted, 5 unavailable or deadline
exceeded, 6 not found, 1 anything else (130 on Ctrl-C).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import grpc

from imagegen._progress import error_to_dict, make_reporter, result_to_dict
from imagegen._retry import ClientRetry
from imagegen.client import DEFAULT_TARGET, DEFAULT_TIMEOUT, Client, EventStream
from imagegen.conversation import Conversation
from imagegen.errors import (
    ContentPolicyError,
    DeadlineExceededError,
    ImagegenError,
    InvalidRequestError,
    NotFoundError,
    RateLimitError,
    UnavailableError,
    from_grpc_error,
)
from imagegen.types import GenerationResult, Preview

__all__ = ["EXIT_CODES", "SIDECAR_SUFFIX", "exit_code_for", "main", "sidecar_path"]

#: Exit code per failure class; the first matching class wins, anything else exits 1.
EXIT_CODES: tuple[tuple[type[ImagegenError], int], ...] = (
    (InvalidRequestError, 2),
    (ContentPolicyError, 3),
    (RateLimitError, 4),
    (UnavailableError, 5),
    (DeadlineExceededError, 5),
    (NotFoundError, 6),
)
EXIT_OK = 0
EXIT_OTHER = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

#: Appended to an image's file name for its conversation sidecar.
SIDECAR_SUFFIX = ".imagegen.json"

_TARGET_ENV = "IMAGEGEN_TARGET"


def exit_code_for(error: ImagegenError) -> int:
    """The CLI exit code for an SDK error."""
    for cls, code in EXIT_CODES:
        if isinstance(error, cls):
            return code
    return EXIT_OTHER


def sidecar_path(image_path: str | os.PathLike[str]) -> Path:
    """Where the conversation sidecar of ``image_path`` lives: ``fox.png`` -> ``fox.png.imagegen.json``."""
    path = Path(image_path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


class _UsageError(Exception):
    """A problem with the command line or local files (exit 2)."""


def _describe_error(error: ImagegenError) -> str:
    label = {
        2: "invalid request",
        3: "content blocked",
        4: "rate limited",
        5: "unavailable" if isinstance(error, UnavailableError) else "deadline exceeded",
        6: "not found",
    }.get(exit_code_for(error), type(error).__name__)
    text = f"{label}: {error}"
    if isinstance(error, ContentPolicyError):
        side = f"{error.block_side} side" if error.block_side else ""
        why = ", ".join(x for x in (side, error.block_reason or "") if x)
        if why:
            text += f" [{why}]"
    return text


# ------------------------------------------------------------------------------------------- naming


def _next_free(path: Path) -> Path:
    """``path`` if free, else ``stem-2.ext``, ``stem-3.ext``... (sidecars count as taken)."""
    if not path.exists() and not sidecar_path(path).exists():
        return path
    match = re.fullmatch(r"(.*)-(\d+)", path.stem)
    stem, n = (match.group(1), int(match.group(2))) if match else (path.stem, 1)
    while True:
        n += 1
        candidate = path.with_name(f"{stem}-{n}{path.suffix}")
        if not candidate.exists() and not sidecar_path(candidate).exists():
            return candidate


def _default_output(prompt: str) -> Path:
    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:40].strip("-") or "image"
    return _next_free(Path(f"{slug}.png"))


def refine_output(source: str | os.PathLike[str]) -> Path:
    """The default output of ``imagegen refine fox.png``: ``fox-2.png`` (``fox-3.png`` after ``fox-2.png``...)."""
    path = Path(source)
    match = re.fullmatch(r"(.*)-(\d+)", path.stem)
    stem, n = (match.group(1), int(match.group(2))) if match else (path.stem, 1)
    return _next_free(path.with_name(f"{stem}-{n + 1}{path.suffix or '.png'}"))


def _preview_path(output: Path, index: int) -> Path:
    return output.with_name(f"{output.stem}.preview-{index}{output.suffix or '.png'}")


# ------------------------------------------------------------------------------------------ parsing


def _add_client_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--target",
        default=os.environ.get(_TARGET_ENV, DEFAULT_TARGET),
        help=f"server host:port (default ${_TARGET_ENV} or {DEFAULT_TARGET})",
    )
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT, help="deadline in seconds (default %(default)s)"
    )
    parser.add_argument("--tls", action="store_true", help="use TLS with the system's root certificates")


def _add_generation_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", help="where to write the image")
    parser.add_argument("--model", help="model id (default: the server's)")
    parser.add_argument("--width", type=int, help="desired width in pixels")
    parser.add_argument("--height", type=int, help="desired height in pixels")
    parser.add_argument("--aspect-ratio", help="explicit aspect ratio, e.g. 16:9")
    parser.add_argument("--image-size", help="explicit size tier: 512, 1K, 2K or 4K")
    parser.add_argument("--seed", type=int, help="seed (default: the server picks one and reports it)")
    parser.add_argument("--input", action="append", default=[], metavar="PATH", help="input image (repeat for several)")
    parser.add_argument("--request-id", help="idempotency key; lets --retries retry any retryable error")
    parser.add_argument("--retries", type=int, default=0, help="client-side retries where safe (default %(default)s)")
    parser.add_argument("--stream", action="store_true", help="show live progress and save previews")
    parser.add_argument("--json", action="store_true", help="print JSON (one object per event with --stream)")
    _add_client_args(parser)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``imagegen`` command."""
    parser = argparse.ArgumentParser(prog="imagegen", description="Gemini image generation over gRPC.")
    parser.add_argument("--version", action="version", version="imagegen 0.1.0")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    gen = sub.add_parser("generate", help="generate an image from a prompt")
    gen.add_argument("prompt", help="what to draw")
    _add_generation_args(gen)

    ref = sub.add_parser("refine", help="edit an image written by generate or refine (uses its sidecar)")
    ref.add_argument("image", help="an image written by imagegen (its .imagegen.json sidecar holds the history)")
    ref.add_argument("prompt", help="the edit to make, e.g. 'make it night'")
    _add_generation_args(ref)

    health = sub.add_parser("health", help="check the server's grpc.health.v1 status")
    health.add_argument("--service", default="", help="service name (default: the whole server)")
    _add_client_args(health)

    models = sub.add_parser("models", help="list the models the server accepts")
    models.add_argument("--json", action="store_true", help="print JSON")
    _add_client_args(models)

    demo = sub.add_parser("demo", help="start a server with the embedded emulator and exercise the SDK")
    demo.add_argument("--out-dir", default=".", help="where to write the demo images (default: .)")

    sub.add_parser("serve", help="run the gRPC server (see imagegen serve --help)", add_help=False)
    sub.add_parser("emulator", help="run the Gemini emulator (see imagegen emulator --help)", add_help=False)
    return parser


def _make_client(args: argparse.Namespace) -> Client:
    credentials = grpc.ssl_channel_credentials() if args.tls else None
    retries = getattr(args, "retries", 0)
    retry = ClientRetry(max_attempts=retries + 1) if retries > 0 else None
    return Client(args.target, timeout=args.timeout, credentials=credentials, retry=retry)


# ----------------------------------------------------------------------------------------- commands


def _emit_result(
    args: argparse.Namespace, result: GenerationResult, output: Path, sidecar: Path, elapsed: float, out: TextIO
) -> None:
    if args.json:
        data = result_to_dict(result, path=output, sidecar=sidecar, elapsed=elapsed)
        print(json.dumps(data), file=out, flush=True)
        return
    attempts = f"{result.attempts} attempt" + ("s" if result.attempts != 1 else "")
    print(
        f"{output}  seed={result.seed}  size={result.width}x{result.height}  model={result.model}  "
        f"{attempts}  time={elapsed:.2f}s",
        file=out,
        flush=True,
    )


def _run_stream(stream: EventStream, output: Path, args: argparse.Namespace, out: TextIO) -> GenerationResult:
    output.parent.mkdir(parents=True, exist_ok=True)  # previews are saved next to the output
    reporter = make_reporter(out, json_lines=args.json)
    previews = 0
    try:
        with stream:
            for event in stream:
                preview_path = None
                if isinstance(event, Preview):
                    previews += 1
                    preview_path = _preview_path(output, previews)
                    event.image.save(preview_path)
                reporter.event(event, preview_path=preview_path)
    finally:
        reporter.close()
    if stream.result is None:
        raise ImagegenError("the stream ended without a result", code=grpc.StatusCode.INTERNAL)
    return stream.result


def _turn_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    for path in args.input:
        if not Path(path).is_file():
            raise _UsageError(f"input image not found: {path}")
    return {
        "input_images": [Path(p) for p in args.input],
        "model": args.model,
        "width": args.width,
        "height": args.height,
        "aspect_ratio": args.aspect_ratio,
        "image_size": args.image_size,
        "seed": args.seed,
        "request_id": args.request_id,
    }


def _finish(
    args: argparse.Namespace,
    conversation: Conversation,
    result: GenerationResult,
    output: Path,
    started: float,
    out: TextIO,
) -> int:
    output.parent.mkdir(parents=True, exist_ok=True)
    result.save(output)
    sidecar = sidecar_path(output)
    sidecar.write_text(conversation.to_json(), encoding="utf-8")
    _emit_result(args, result, output, sidecar, time.monotonic() - started, out)
    return EXIT_OK


def _cmd_generate(args: argparse.Namespace, out: TextIO) -> int:
    kwargs = _turn_kwargs(args)
    output = Path(args.output) if args.output else _default_output(args.prompt)
    started = time.monotonic()
    with _make_client(args) as client:
        conversation = Conversation(
            client,
            model=args.model,
            width=args.width,
            height=args.height,
            aspect_ratio=args.aspect_ratio,
            image_size=args.image_size,
        )
        if args.stream:
            result = _run_stream(conversation.refine_stream(args.prompt, **kwargs), output, args, out)
        else:
            result = conversation.refine(args.prompt, **kwargs)
        return _finish(args, conversation, result, output, started, out)


def _cmd_refine(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    source = Path(args.image)
    if not source.is_file():
        raise _UsageError(f"image not found: {source}")
    kwargs = _turn_kwargs(args)
    sidecar = sidecar_path(source)
    output = Path(args.output) if args.output else refine_output(source)
    started = time.monotonic()
    with _make_client(args) as client:
        if sidecar.is_file():
            try:
                conversation = Conversation.from_json(sidecar.read_text(encoding="utf-8"), client)
            except (ValueError, KeyError, TypeError) as exc:
                raise _UsageError(f"cannot read {sidecar}: {exc}") from exc
        else:
            print(
                f"note: no {sidecar.name}; starting a new conversation with {source} as the input image",
                file=err,
            )
            conversation = Conversation(client)
            kwargs["input_images"] = [source, *kwargs["input_images"]]
        if args.stream:
            result = _run_stream(conversation.refine_stream(args.prompt, **kwargs), output, args, out)
        else:
            result = conversation.refine(args.prompt, **kwargs)
        return _finish(args, conversation, result, output, started, out)


def _cmd_health(args: argparse.Namespace, out: TextIO) -> int:
    try:
        from grpc_health.v1 import health_pb2
    except ImportError as exc:  # pragma: no cover - grpcio-health-checking is in the server extra
        raise _UsageError("imagegen health needs grpcio-health-checking: pip install 'imagegen[server]'") from exc
    with _make_client(args) as client:
        check = client.channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        try:
            response: health_pb2.HealthCheckResponse = check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
        except grpc.RpcError as exc:
            raise from_grpc_error(exc) from exc
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    print(status, file=out)
    return EXIT_OK if response.status == health_pb2.HealthCheckResponse.SERVING else EXIT_OTHER


def _cmd_models(args: argparse.Namespace, out: TextIO) -> int:
    with _make_client(args) as client:
        models = client.list_models()
    if args.json:
        rows = [
            {
                "name": m.name,
                "aspect_ratios": list(m.aspect_ratios),
                "image_sizes": list(m.image_sizes),
                "max_input_images": m.max_input_images,
                "requires_thought_signatures": m.requires_thought_signatures,
                "is_default": m.is_default,
            }
            for m in models
        ]
        print(json.dumps(rows), file=out)
        return EXIT_OK
    for m in models:
        default = " (default)" if m.is_default else ""
        sizes = ", ".join(m.image_sizes) or "fixed"
        print(f"{m.name}{default}", file=out)
        print(f"  aspect ratios: {', '.join(m.aspect_ratios)}", file=out)
        print(f"  sizes: {sizes}; up to {m.max_input_images} input images", file=out)
    return EXIT_OK


def _delegate(command: str, argv: list[str]) -> int:
    try:
        if command == "serve":
            from imagegen_server.cli import serve_main

            return int(serve_main(argv))
        from imagegen_server.emulator import emulator_main

        return int(emulator_main(argv))
    except ImportError as exc:
        print(
            f"imagegen: error: '{command}' needs the server package ({exc}); pip install 'imagegen[server]'",
            file=sys.stderr,
        )
        return EXIT_OTHER


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``imagegen`` command with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] in ("serve", "emulator"):
        return _delegate(args_list[0], args_list[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(args_list)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    out, err = sys.stdout, sys.stderr
    try:
        if args.command == "generate":
            return _cmd_generate(args, out)
        if args.command == "refine":
            return _cmd_refine(args, out, err)
        if args.command == "health":
            return _cmd_health(args, out)
        if args.command == "models":
            return _cmd_models(args, out)
        if args.command == "demo":
            from imagegen._demo import run_demo

            return run_demo(Path(args.out_dir), out)
    except _UsageError as exc:
        print(f"imagegen: error: {exc}", file=err)
        return EXIT_USAGE
    except ImagegenError as exc:
        code = exit_code_for(exc)
        if getattr(args, "json", False):
            print(json.dumps(error_to_dict(exc, code)), file=out, flush=True)
        print(f"imagegen: error: {_describe_error(exc)}", file=err)
        return code
    except OSError as exc:
        print(f"imagegen: error: {exc}", file=err)
        return EXIT_OTHER
    except KeyboardInterrupt:
        print("imagegen: interrupted", file=err)
        return EXIT_INTERRUPTED
    parser.error(f"unknown command {args.command!r}")  # pragma: no cover - argparse rejects it first
    return EXIT_USAGE  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
