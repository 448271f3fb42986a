"""``imagegen emulator``: run the Gemini emulator until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from .app import DEFAULT_API_KEY
from .render import IMAGE_PROFILE_ENV, IMAGE_PROFILES, resolve_image_profile
from .server import Emulator


def build_parser() -> argparse.ArgumentParser:
    """The command-line options."""
    parser = argparse.ArgumentParser(
        prog="imagegen emulator", description="Run a local Gemini API emulator with fault injection."
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8765, help="port; 0 picks a free one (default: %(default)s)")
    parser.add_argument("--api-key", default=DEFAULT_API_KEY, help="the key clients must send (default: %(default)s)")
    parser.add_argument(
        "--image-profile",
        choices=IMAGE_PROFILES,
        help=f"realistic: PNGs as large as Gemini's (1K ~1.5 MB, 4K ~22 MB); small: tiny images "
        f"(default: ${IMAGE_PROFILE_ENV}, else realistic)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request")
    return parser


async def _serve(host: str, port: int, api_key: str, image_profile: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with Emulator(host=host, port=port, api_key=api_key, image_profile=image_profile) as emulator:
        # One line, flushed: scripts and other-language tests wait for it.
        print(f"Gemini emulator listening on {emulator.base_url} (api key: {api_key})", flush=True)
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
