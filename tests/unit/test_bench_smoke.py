"""The benchmark harness runs end to end in its smallest mode (no timing assertions)."""

from __future__ import annotations

import json
import math
from pathlib import Path

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
