"""The ``imagegen`` command: generate, refine, health, models, demo, serve, emulator.

The top layer: it imports the SDK, and the server only for ``serve``,
``emulator`` and ``demo`` (so ``pip install imagegen`` without the ``server``
extra runs every client command). Exit codes are in :mod:`imagegen_cli.exit_codes`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path
from typing import TextIO

from imagegen import ImagegenError
from imagegen_cli import images, info
from imagegen_cli.exit_codes import (
    EXIT_INTERRUPTED,
    EXIT_OTHER,
    EXIT_USAGE,
    UsageError,
    describe_error,
    exit_code_for,
    exit_codes_help,
)
from imagegen_cli.options import SIZE_ROUNDING, TARGET_ENV, add_client_args, add_generation_args
from imagegen_cli.progress import error_to_dict

__all__ = ["build_parser", "main"]

_EXAMPLES = f"""\
examples:
  imagegen serve                                  the server on 127.0.0.1:50051 (embedded emulator without a key)
  imagegen generate "a red fox" -o fox.png --width 1920 --height 1080 --seed 7
  imagegen refine fox.png "make it night"         edit it; history comes from fox.png.imagegen.json
  imagegen generate "a red fox" --stream          live progress: attempts, retries, previews
  imagegen health --target 10.0.0.5:50051         or set {TARGET_ENV}=10.0.0.5:50051
  imagegen demo                                   server + emulator + SDK in one go, writes PNGs

{textwrap.fill("sizes: " + SIZE_ROUNDING, width=100, subsequent_indent="  ")}
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``imagegen`` command (``serve`` and ``emulator`` parse their own flags)."""
    parser = argparse.ArgumentParser(
        prog="imagegen",
        description="Generate and edit images with Gemini through the imagegen gRPC gateway.",
        epilog=_EXAMPLES + "\n" + exit_codes_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,  # keep the epilog's layout
    )
    parser.add_argument("--version", action="version", version=f"imagegen {version('imagegen')}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    gen = sub.add_parser(
        "generate",
        help="generate an image from a prompt",
        description="Generate an image from a prompt and write it with a sidecar (NAME.imagegen.json) "
        "that imagegen refine continues from.",
        epilog=f"sizes: {SIZE_ROUNDING}",
    )
    gen.add_argument("prompt", help="what to draw")
    add_generation_args(gen)

    ref = sub.add_parser(
        "refine",
        help="edit an image written by generate or refine (uses its sidecar)",
        description="Edit an image: the next turn of the conversation stored in IMAGE.imagegen.json "
        "(without one, IMAGE becomes the input image of a new conversation).",
        epilog=f"sizes: {SIZE_ROUNDING}",
    )
    ref.add_argument("image", help="an image written by imagegen (its .imagegen.json sidecar holds the history)")
    ref.add_argument("prompt", help="the edit to make, e.g. 'make it night'")
    add_generation_args(ref)

    health = sub.add_parser(
        "health",
        help="check the server's grpc.health.v1 status",
        description="Ask a running server for its grpc.health.v1 status and print it "
        "(SERVING, NOT_SERVING while it shuts down). Exits 0 only when SERVING.",
    )
    health.add_argument("--service", default="", help="service name (default: the whole server)")
    add_client_args(health)

    models = sub.add_parser(
        "models",
        help="list the models the server accepts",
        description="List the models a running server accepts, with their aspect ratios, size tiers "
        "and input-image limits; the default model is marked.",
    )
    models.add_argument("--json", action="store_true", help="print JSON")
    add_client_args(models)

    demo = sub.add_parser(
        "demo",
        help="start a server with the embedded emulator and exercise the SDK",
        description="Start the server with the embedded Gemini emulator on a free loopback port, then "
        "generate, refine twice and stream through injected failures with the SDK, writing imagegen-demo*.png. "
        "Needs the server extra: pip install 'imagegen[server]'.",
    )
    demo.add_argument("--out-dir", default=".", help="where to write the demo images (default: %(default)s)")

    sub.add_parser("serve", help="run the gRPC server (see imagegen serve --help)", add_help=False)
    sub.add_parser("emulator", help="run the Gemini emulator (see imagegen emulator --help)", add_help=False)
    return parser


def _missing_extra(command: str, exc: ImportError) -> int:
    missing = f" (missing module {exc.name})" if exc.name else ""
    print(f"imagegen {command}: needs the server extra{missing}: pip install 'imagegen[server]'", file=sys.stderr)
    return EXIT_OTHER


def _delegate(command: str, argv: list[str]) -> int:
    """Run ``serve`` or ``emulator``, which live in the server package and parse their own flags."""
    try:
        if command == "serve":
            from imagegen_server.cli import serve_main as entry
        else:
            from imagegen_server.emulator import emulator_main as entry
    except ImportError as exc:
        return _missing_extra(command, exc)
    try:
        return int(entry(argv))
    except SystemExit as exc:  # --help and usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _demo(args: argparse.Namespace, out: TextIO) -> int:
    try:
        from imagegen_cli.demo import run_demo
    except ImportError as exc:
        return _missing_extra("demo", exc)
    return run_demo(Path(args.out_dir), out)


def _run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.command == "generate":
        return images.generate(args, out)
    if args.command == "refine":
        return images.refine(args, out, err)
    if args.command == "health":
        return info.health(args, out)
    if args.command == "models":
        return info.models(args, out)
    return _demo(args, out)


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not fail on the closed pipe again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # not a real file (tests), nothing to redirect
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``imagegen`` command with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] in ("serve", "emulator"):
        return _delegate(args_list[0], args_list[1:])
    try:
        args = build_parser().parse_args(args_list)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    out, err = sys.stdout, sys.stderr
    try:
        return _run(args, out, err)
    except UsageError as exc:
        print(f"imagegen: error: {exc}", file=err)
        return EXIT_USAGE
    except ImagegenError as exc:
        code = exit_code_for(exc)
        if getattr(args, "json", False):
            print(json.dumps(error_to_dict(exc, code)), file=out, flush=True)
        print(f"imagegen: error: {describe_error(exc, getattr(args, 'target', ''))}", file=err)
        return code
    except BrokenPipeError:
        # The reader went away (`imagegen models | head -1`): nothing more to say, and nowhere to say it.
        _silence_stdout()
        return EXIT_OTHER
    except OSError as exc:
        print(f"imagegen: error: {exc}", file=err)
        return EXIT_OTHER
    except KeyboardInterrupt:
        print("imagegen: interrupted", file=err)
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
