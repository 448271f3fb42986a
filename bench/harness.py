"""Shared pieces of the benchmarks: run sizes, results with targets, timing and reporting."""

from __future__ import annotations

import json
import math
import operator
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

#: Prompt and seed used everywhere: a fixed seed makes the emulator's render
#: cache hit, so timings measure the request path and not PNG encoding.
PROMPT = "a red fox in the snow, benchmark"
SEED = 7
#: The per-call overhead benchmarks (``bench/run.py``) use the emulator's small
#: images, so they measure the fixed cost of a call; ``bench/compare.py`` and
#: the memory benchmark use Gemini-sized ones.
SMALL = "small"

Detail = float | int | str


@dataclass(frozen=True, slots=True)
class BenchConfig:
    """How much work each benchmark does."""

    #: Sequential calls per latency sample set, after ``warmup`` calls.
    iterations: int
    warmup: int
    #: Concurrent requests per batch, upstream latency, batches per server setting.
    concurrent: int
    latency: float
    batches: int
    #: In-flight requests in the memory burst, the image sizes measured, and how
    #: many bursts (each in a fresh gateway process) the median is taken over.
    memory_burst: int
    memory_sizes: tuple[str, ...]
    memory_repeats: int

    @classmethod
    def full(cls) -> BenchConfig:
        return cls(
            iterations=1000,
            warmup=50,
            concurrent=32,
            latency=0.2,
            batches=10,
            memory_burst=16,
            memory_sizes=("2K", "4K"),
            memory_repeats=5,
        )

    @classmethod
    def quick(cls) -> BenchConfig:
        return cls(
            iterations=100,
            warmup=10,
            concurrent=32,
            latency=0.2,
            batches=3,
            memory_burst=16,
            memory_sizes=("2K", "4K"),
            memory_repeats=1,
        )

    @classmethod
    def smoke(cls) -> BenchConfig:
        """The smallest run that still exercises every code path (for the unit test)."""
        return cls(
            iterations=2,
            warmup=1,
            concurrent=4,
            latency=0.05,
            batches=1,
            memory_burst=2,
            memory_sizes=("2K",),
            memory_repeats=1,
        )


@dataclass(frozen=True, slots=True)
class Target:
    """``ratio <op> value``, e.g. ``<= 1.5``."""

    op: Literal["<=", ">="]
    value: float

    def met(self, ratio: float) -> bool:
        compare = operator.le if self.op == "<=" else operator.ge
        return bool(compare(ratio, self.value))

    def __str__(self) -> str:
        return f"{self.op} {self.value:g}"


@dataclass(frozen=True, slots=True)
class Result:
    """One row of the table: a measurement, its same-run baseline, their ratio."""

    name: str
    #: What is compared, e.g. ``"p50 ms"`` or ``"req/s"``.
    metric: str
    baseline_label: str
    baseline: float
    measured: float
    #: None for rows reported for information only.
    target: Target | None
    details: dict[str, Detail] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.measured / self.baseline if self.baseline else math.inf

    @property
    def met(self) -> bool | None:
        return None if self.target is None else self.target.met(self.ratio)

    def to_json(self) -> dict[str, object]:
        out = asdict(self)
        out["ratio"] = round(self.ratio, 4)
        out["target"] = None if self.target is None else {"op": self.target.op, "value": self.target.value}
        out["met"] = self.met
        return out


def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile, ``q`` in (0, 100]."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


async def timed(call: Callable[[], Awaitable[object]]) -> float:
    """Seconds one awaited call took."""
    start = time.perf_counter()
    await call()
    return time.perf_counter() - start


async def sample_pair(
    baseline: Callable[[], Awaitable[float]],
    candidate: Callable[[], Awaitable[float]],
    config: BenchConfig,
) -> tuple[list[float], list[float]]:
    """Alternate baseline and candidate calls (each returns its own duration) so
    that drift in the machine's speed affects both alike; warm-up calls are dropped."""
    base: list[float] = []
    cand: list[float] = []
    for i in range(config.warmup + config.iterations):
        b, c = await baseline(), await candidate()
        if i >= config.warmup:
            base.append(b)
            cand.append(c)
    return base, cand


def latency_results(
    name: str,
    baseline_label: str,
    baseline: Sequence[float],
    measured: Sequence[float],
    target: Target | None,
) -> list[Result]:
    """A p50 row, judged against ``target``, and a p95 row for information, in ms.

    The p95 of sub-millisecond calls swings too much from run to run on a
    shared machine to be judged; the p50 is stable to a few percent.
    """
    rows = []
    for q in (50, 95):
        base_ms, meas_ms = percentile(baseline, q) * 1000, percentile(measured, q) * 1000
        rows.append(
            Result(
                name=name,
                metric=f"p{q} ms",
                baseline_label=baseline_label,
                baseline=base_ms,
                measured=meas_ms,
                target=target if q == 50 else None,
                details={"samples": len(measured), "added_ms": round(meas_ms - base_ms, 3)},
            )
        )
    return rows


def format_table(results: Sequence[Result]) -> str:
    """A fixed-width text table of the results."""
    header = ("benchmark", "metric", "baseline", "measured", "ratio", "target", "")
    rows = [header]
    for r in results:
        verdict = "" if r.met is None else ("ok" if r.met else "MISS")
        rows.append(
            (
                r.name,
                r.metric,
                f"{r.baseline:.3g} ({r.baseline_label})",
                f"{r.measured:.3g}",
                f"{r.ratio:.2f}x",
                "-" if r.target is None else str(r.target),
                verdict,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_json(path: Path, results: Sequence[Result], meta: Mapping[str, object]) -> None:
    """Write ``{"meta": ..., "results": [...]}`` to ``path``."""
    payload = {"meta": meta, "results": [r.to_json() for r in results]}
    path.write_text(json.dumps(payload, indent=2) + "\n")
