"""The checked-in stubs in sdk/imagegen/v1 must be exactly what protos/ generates."""

from __future__ import annotations

import filecmp
import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_stubs_are_fresh(tmp_path: Path) -> None:
    generate = runpy.run_path(str(ROOT / "protos" / "generate.py"))["generate"]
    generate(tmp_path)
    fresh = tmp_path / "imagegen" / "v1"
    checked_in = ROOT / "sdk" / "imagegen" / "v1"
    names = sorted(p.name for p in fresh.iterdir() if p.is_file())
    assert any(n.endswith("_pb2_grpc.pyi") for n in names), names
    stale = [n for n in names if not filecmp.cmp(fresh / n, checked_in / n, shallow=False)]
    assert not stale, f"regenerate with `python protos/generate.py`: {stale} differ"
    extra = sorted({p.name for p in checked_in.iterdir() if p.is_file()} - set(names))
    assert not extra, f"files in sdk/imagegen/v1 that protos/ no longer generates: {extra}"
