"""bench/outage.py runs end to end in a second, against the real server and emulator (no timing assertions)."""

from __future__ import annotations

from dataclasses import replace

from bench.outage import outage
from tests.conftest import FAST


async def test_outage_bench_bounds_attempts_and_recovers() -> None:
    config = replace(FAST, breaker_open_seconds=0.2, breaker_max_open_seconds=0.4)
    figures = await outage(seconds=1.0, callers=4, think=0.02, recovery=2, config=config)
    assert figures.requests > 0 and figures.circuit_openings >= 1
    assert figures.upstream_attempts <= 1.25 * figures.requests + 5 * 3 + 4 * 2 + 1 + 1.0 / 0.2
    assert figures.recovered_ok == 2
    assert set(figures.outcomes) <= {
        "UNAVAILABLE/UPSTREAM_UNAVAILABLE/attempts_exhausted",
        "UNAVAILABLE/UPSTREAM_UNAVAILABLE/circuit_open",
        "UNAVAILABLE/CIRCUIT_OPEN/circuit_open",
    }
