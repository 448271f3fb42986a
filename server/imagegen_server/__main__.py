"""``python -m imagegen_server serve ...`` (same as the ``imagegen`` console script)."""

from __future__ import annotations

import sys

from imagegen_server.cli import serve_main


def main() -> int:
    """Dispatch ``serve`` and ``emulator`` without needing the SDK's CLI."""
    args = sys.argv[1:]
    if args and args[0] == "emulator":
        from imagegen_server.emulator import emulator_main

        return emulator_main(args[1:])
    if args and args[0] == "serve":
        args = args[1:]
    return serve_main(args)


if __name__ == "__main__":
    sys.exit(main())
