"""The benchmarks run end to end in their smallest modes (no timing assertions)."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

from bench.compare import PATHS, CompareConfig, compare, format_report
from bench.harness import BenchConfig, write_json
from bench.memory import supported
from bench.run import run_all


async def test_every_benchmark_produces_a_ratio(tmp_path: Path) -> None:
    results = await run_all(BenchConfig.smoke())

    names = {r.name.split(" ")[0] for r in results}
    expected = {"gateway", "stream", "sync", "concurrency"} | ({"memory"} if supported() else set())
    assert names == expected
    for result in results:
        assert result.baseline > 0, result
        assert result.measured > 0, result
        assert math.isfinite(result.ratio) and result.ratio > 0, result

    out = tmp_path / "results.json"
    write_json(out, results, {"command": "smoke"})
    rows = json.loads(out.read_text())["results"]
    assert len(rows) == len(results)
    for row in rows:
        assert {"name", "metric", "baseline", "measured", "ratio", "target", "met"} <= row.keys()


def test_compare_runs_every_section_in_smoke_mode() -> None:
    # Sync test: compare() starts its own event loop and server processes.
    report = asyncio.run(compare(CompareConfig.smoke(), "python -m bench compare --smoke"))

    for cell in report.cells:
        assert set(cell.runs) == set(PATHS)
        assert all(cell.rps(path) > 0 and cell.latency_ms(path, 99) > 0 for path in PATHS)
    assert [cost.path for cost in report.cpu] == list(PATHS)
    assert all(cost.client > 0 for cost in report.cpu)
    assert {b.path for b in report.bursts} == {"gateway-stream", "relay"}
    assert {b.path for b in report.memory} == {"gateway", "relay"}
    assert all(b.rss_peak >= b.rss_before > 0 and b.image_bytes > 0 for b in report.bursts + report.memory)
    text = format_report(report)
    for heading in ("## Emulator", "## Throughput and latency", "## CPU seconds", "in flight at", "## Issue 13"):
        assert heading in text
