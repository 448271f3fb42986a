"""Soak (CI version): 1,000 calls at concurrency 32, half unary half streams, 30% with one
transient fault of each kind in turn (429 with RetryInfo, 503, 504, a stalled body, a cut
body) followed by success. Every call succeeds, every faulted request made exactly two
upstream calls (the others one), none is lost, and the process's open file descriptors,
RSS and call tasks stay flat from the first tenth to the end.

The long version is ``python -m bench.soak --calls 10000`` (same driver, bench/soak.py).
"""

from __future__ import annotations

import pytest

from bench.soak import FAULTS, soak

CALLS = 1000

#: Flat, with room for what is not a leak: keep-alive connections and their
#: sockets (client and emulator ends share this process) and allocator noise.
FD_SLACK = 16
RSS_SLACK_MIB = 40.0
#: Tasks that belong to keep-alive connections (one per pooled upstream connection).
TASK_SLACK = 4


@pytest.mark.timeout(300)
async def test_soak_1000_calls_with_30_percent_single_faults() -> None:
    report = await soak(CALLS, concurrency=32, fault_rate=0.3)
    assert report.outcomes == {"OK": CALLS}, report.to_json()
    assert report.lost == 0
    assert report.faulted == 300 and len(FAULTS) == 5
    assert report.attempts_faulted == {2: 300}, "every faulted request: exactly one retry"
    assert report.attempts_clean == {1: 700}, "no retry without a fault"
    first, end = report.after_first_tenth, report.at_end
    assert first is not None and end is not None
    assert end.open_fds <= first.open_fds + FD_SLACK, report.to_json()
    assert end.rss_mib <= first.rss_mib + RSS_SLACK_MIB, report.to_json()
    assert end.tasks <= first.tasks + TASK_SLACK, report.to_json()
