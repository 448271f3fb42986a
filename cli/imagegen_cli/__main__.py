"""``python -m imagegen_cli ...``: the same as the ``imagegen`` command."""

from __future__ import annotations

import sys

from imagegen_cli.main import main

if __name__ == "__main__":
    sys.exit(main())
