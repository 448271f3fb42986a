"""``python -m imagegen_server.emulator``: same as ``imagegen emulator``."""

from __future__ import annotations

import sys

from .cli import emulator_main

if __name__ == "__main__":
    sys.exit(emulator_main())
