"""``imagegen serve``: parse flags and environment, set up logging, run the server.

Exit codes: 0 after a graceful stop on SIGTERM, 130 after one on Ctrl-C
(SIGINT), 2 for a bad flag or a refused flag combination (unusable TLS files),
7 when the address cannot be bound (the port is taken, or the host is not this
machine's), 1 when one of ``--workers`` exited on its own. ``imagegen --help``
lists them all.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from imagegen_server.app import serve
from imagegen_server.config import ConfigError, ServerConfig
from imagegen_server.logs import log_handler
from imagegen_server.ports import CannotListenError
from imagegen_server.workers import supervise

EXIT_OK = 0
#: A flag or flag combination the server refuses (also argparse's code for a bad flag).
EXIT_USAGE = 2
#: The port is taken or the address cannot be bound (the ``imagegen`` command documents the same number).
EXIT_CANNOT_LISTEN = 7
EXIT_INTERRUPTED = 130
#: ``--workers``: a worker exited on its own (the others were stopped).
EXIT_WORKER_FAILED = 1


def serve_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``imagegen serve``; returns the process exit code."""
    config = ServerConfig.from_args(list(argv) if argv is not None else None)
    # Every line of a request names its RPC and generation, so one request's story greps out.
    handler = log_handler(config.log_format, sys.stderr, secrets=[config.api_key])
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    try:
        if config.workers > 1:
            supervised = supervise(config)
            if supervised is None:
                return EXIT_WORKER_FAILED
            stopped_by = supervised
        else:
            stopped_by = asyncio.run(serve(config))
    except ConfigError as exc:
        print(f"imagegen serve: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CannotListenError as exc:
        print(f"imagegen serve: {exc}", file=sys.stderr)
        return EXIT_CANNOT_LISTEN
    except KeyboardInterrupt:  # Ctrl-C before the signal handlers are installed
        return EXIT_INTERRUPTED
    return EXIT_INTERRUPTED if stopped_by == signal.SIGINT else EXIT_OK
