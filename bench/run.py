"""Run the benchmarks: ``python bench/run.py [--quick] [--check]``.

Prints a table of ratios against baselines measured in the same run and
writes ``bench/results.json``. See ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

if not __package__:  # run as a script: make ``bench`` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.benchmarks import concurrency, gateway_overhead, streaming_overhead, sync_vs_async
from bench.harness import SMALL, BenchConfig, Result, format_table, write_json
from bench.memory import memory
from imagegen import AsyncClient
from imagegen_server.app import run_server
from imagegen_server.config import ServerConfig

RESULTS_PATH = Path(__file__).resolve().parent / "results.json"


async def run_all(config: BenchConfig) -> list[Result]:
    """Every benchmark, in order; each result carries its same-run baseline."""
    results: list[Result] = []
    async with (
        run_server(ServerConfig(port=0, emulator_image_profile=SMALL)) as server,
        AsyncClient(server.target) as client,
    ):
        results += await gateway_overhead(server, client, config)
        results += await streaming_overhead(client, config)
        results += await sync_vs_async(server, client, config)
    results += await concurrency(config)
    results += await memory(config)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmarks: ratios against same-run baselines.")
    parser.add_argument("--quick", action="store_true", help="fewer iterations and one memory burst per size")
    parser.add_argument("--check", action="store_true", help="exit 1 when a ratio misses its target")
    parser.add_argument("--output", type=Path, default=RESULTS_PATH, help=f"JSON results (default {RESULTS_PATH})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)

    config = BenchConfig.quick() if args.quick else BenchConfig.full()
    started = time.perf_counter()
    results = asyncio.run(run_all(config))
    elapsed = time.perf_counter() - started
    print(format_table(results))
    print(f"\n{'quick' if args.quick else 'full'} run in {elapsed:.1f} s; results in {args.output}")
    meta = {
        "command": "python bench/run.py" + (" --quick" if args.quick else ""),
        "seconds": round(elapsed, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count() or 0,
        "config": asdict(config),
    }
    write_json(args.output, results, meta)
    return 1 if args.check and any(r.met is False for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
