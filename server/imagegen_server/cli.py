"""``imagegen serve``: parse flags and environment, set up logging, run the server."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence

from imagegen_server.app import serve
from imagegen_server.config import ServerConfig


def serve_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``imagegen serve``; returns the process exit code."""
    config = ServerConfig.from_args(list(argv) if argv is not None else None)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        asyncio.run(serve(config))
    except KeyboardInterrupt:  # pragma: no cover - signal handlers normally catch it
        return 130
    return 0
