"""``imagegen serve``: parse flags and environment, set up logging, run the server."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence

from imagegen_server.app import serve
from imagegen_server.config import ServerConfig
from imagegen_server.observability import GenerationLogFilter


def serve_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``imagegen serve``; returns the process exit code."""
    config = ServerConfig.from_args(list(argv) if argv is not None else None)
    handler = logging.StreamHandler(sys.stderr)
    # Every line of a request names its generation, so one request's story greps out.
    handler.addFilter(GenerationLogFilter())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(generation)s] %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    try:
        asyncio.run(serve(config))
    except KeyboardInterrupt:  # pragma: no cover - signal handlers normally catch it
        return 130
    return 0
