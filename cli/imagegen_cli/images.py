"""``imagegen generate`` and ``imagegen refine``: call the SDK, write the image, its sidecar and previews."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, TextIO

import grpc

from imagegen import Conversation, EventStream, GenerationResult, ImagegenError, Preview
from imagegen_cli.exit_codes import EXIT_OK, UsageError
from imagegen_cli.files import generate_output, preview_path, refine_output, sidecar_path
from imagegen_cli.options import make_client
from imagegen_cli.progress import make_reporter, result_to_dict


def asked_size(width: int | None, height: int | None, aspect_ratio: str | None, image_size: str | None) -> str:
    """What the caller asked for, in the words of the flags: ``1920x1080``, ``16:9, 2K``, ``width 800`` or ``""``."""
    if width and height:
        pixels = f"{width}x{height}"
    elif width:
        pixels = f"width {width}"
    elif height:
        pixels = f"height {height}"
    else:
        pixels = ""
    return ", ".join(x for x in (pixels, aspect_ratio or "", image_size or "") if x)


def delivered_size(result: GenerationResult, asked: str = "") -> str:
    """What was delivered, after what was asked: ``asked 1920x1080 -> 2752x1536 (16:9, 2K)``."""
    tier = ", ".join(x for x in (result.aspect_ratio, result.image_size) if x)
    made = f"{result.width}x{result.height}" + (f" ({tier})" if tier else "")
    return f"asked {asked} -> {made}" if asked else made


def result_line(path: Path, result: GenerationResult, elapsed: float, *, asked: str = "") -> str:
    """The one line a finished generation prints."""
    attempts = f"{result.attempts} attempt" + ("s" if result.attempts != 1 else "")
    return (
        f"{path}  {delivered_size(result, asked)}  seed={result.seed}  model={result.model}  "
        f"{attempts}  time={elapsed:.2f}s"
    )


def _asked(args: argparse.Namespace) -> str:
    return asked_size(args.width, args.height, args.aspect_ratio, args.image_size)


def _emit_result(
    args: argparse.Namespace, result: GenerationResult, output: Path, sidecar: Path, elapsed: float, out: TextIO
) -> None:
    if args.json:
        data = result_to_dict(result, path=output, sidecar=sidecar, elapsed=elapsed)
        data["asked"] = {
            k: v
            for k, v in (
                ("width", args.width),
                ("height", args.height),
                ("aspect_ratio", args.aspect_ratio),
                ("image_size", args.image_size),
            )
            if v
        }
        print(json.dumps(data), file=out, flush=True)
        return
    print(result_line(output, result, elapsed, asked=_asked(args)), file=out, flush=True)


def _run_stream(stream: EventStream, output: Path, args: argparse.Namespace, out: TextIO) -> GenerationResult:
    output.parent.mkdir(parents=True, exist_ok=True)  # previews are saved next to the output
    reporter = make_reporter(out, json_lines=args.json)
    previews = 0
    try:
        with stream:
            for event in stream:
                saved_to = None
                if isinstance(event, Preview):
                    previews += 1
                    saved_to = preview_path(output, previews)
                    event.image.save(saved_to)
                reporter.event(event, preview_path=saved_to)
    finally:
        reporter.close()
    if stream.result is None:
        raise ImagegenError("the stream ended without a result", code=grpc.StatusCode.INTERNAL)
    return stream.result


def _turn_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    for path in args.input:
        if not Path(path).is_file():
            raise UsageError(f"input image not found: {path}")
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


def generate(args: argparse.Namespace, out: TextIO) -> int:
    """``imagegen generate``: a new conversation's first turn."""
    kwargs = _turn_kwargs(args)
    output = Path(args.output) if args.output else generate_output(args.prompt)
    started = time.monotonic()
    with make_client(args) as client:
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


def refine(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """``imagegen refine``: the next turn of the conversation in the image's sidecar."""
    source = Path(args.image)
    if not source.is_file():
        raise UsageError(f"image not found: {source}")
    kwargs = _turn_kwargs(args)
    sidecar = sidecar_path(source)
    output = Path(args.output) if args.output else refine_output(source)
    started = time.monotonic()
    with make_client(args) as client:
        if sidecar.is_file():
            try:
                conversation = Conversation.from_json(sidecar.read_text(encoding="utf-8"), client)
            except (ValueError, KeyError, TypeError) as exc:
                raise UsageError(f"cannot read {sidecar}: {exc}") from exc
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
