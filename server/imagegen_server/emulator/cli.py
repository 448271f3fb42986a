"""``imagegen emulator``: run the Gemini emulator until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from .render import IMAGE_PROFILE_ENV, IMAGE_PROFILES, resolve_image_profile
from .server import Emulator

_EPILOG = """\
pair it with the gateway; no key is needed, since without --api-key the
emulator accepts any key, or none:
  imagegen emulator --port 8765
  imagegen serve --upstream-url http://127.0.0.1:8765

script faults: POST /emulator/scenarios {"steps": ["rate_limit:2", "ok"]}
returns a marker such as [emulator:1a2b3c4d] to put in a prompt; a marker
no scenario issued is answered with a 400 naming it. Step vocabulary:
imagegen_server/emulator/steps.py.
"""


def build_parser() -> argparse.ArgumentParser:
    """The command-line options."""
    parser = argparse.ArgumentParser(
        prog="imagegen emulator",
        description="Run a local Gemini API emulator with fault injection.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_EPILOG,
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8765, help="port; 0 picks a free one (default: %(default)s)")
    parser.add_argument(
        "--api-key",
        help="require this key (x-goog-api-key header or ?key=), answering a missing one with 403 and a wrong "
        "one with 400 as Gemini does (default: none required, any key or none is accepted)",
    )
    parser.add_argument(
        "--image-profile",
        choices=IMAGE_PROFILES,
        help=f"realistic: PNGs as large as Gemini's (1K ~1.5 MB, 4K ~22 MB); small: tiny images "
        f"(default: ${IMAGE_PROFILE_ENV}, else realistic)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request")
    return parser


async def _serve(host: str, port: int, api_key: str | None, image_profile: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with Emulator(host=host, port=port, api_key=api_key, image_profile=image_profile) as emulator:
        # One line, flushed: scripts and other-language tests wait for it. The
        # key itself is never printed, like every key in this project.
        auth = "requires the --api-key key" if api_key is not None else "accepts any API key, or none"
        print(
            f"Gemini emulator listening on {emulator.base_url} ({auth}; "
            f"pair with: imagegen serve --upstream-url {emulator.base_url})",
            flush=True,
        )
        await stop.wait()


def emulator_main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, stream=sys.stderr)
    try:
        asyncio.run(_serve(args.host, args.port, args.api_key, resolve_image_profile(args.image_profile)))
    except (OSError, ValueError) as exc:
        print(f"imagegen emulator: {exc}", file=sys.stderr)
        return 1
    return 0
