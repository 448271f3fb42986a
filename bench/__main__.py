"""``python -m bench compare [--smoke]`` (the comparison, writes bench/RESULTS.md),
``python -m bench run [--quick] [--check]`` (the per-call overhead benchmarks) or
``python -m bench soak [--calls N]`` (many calls with single transient faults; prints a JSON report)."""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    commands = ("compare", "run", "soak")
    if not argv or argv[0] not in commands:
        print(f"usage: python -m bench {{{','.join(commands)}}} [options]  (each takes --help)", file=sys.stderr)
        return 2
    if argv[0] == "compare":
        from bench.compare import main as compare_main

        return compare_main(argv[1:])
    if argv[0] == "soak":
        from bench.soak import main as soak_main

        return soak_main(argv[1:])
    from bench.run import main as run_main

    return run_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
