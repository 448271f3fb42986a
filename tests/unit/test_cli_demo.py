"""``imagegen demo`` end to end: the real server with its embedded emulator, called through the SDK."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagegen_cli.main import main


def test_demo_writes_images_and_prints_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("GEMINI_API_KEY", "GOOGLE_API_KEY", "IMAGEGEN_UPSTREAM_URL"):
        monkeypatch.delenv(name, raising=False)
    assert main(["demo", "--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for name in ("imagegen-demo.png", "imagegen-demo-refine-1.png", "imagegen-demo-refine-2.png"):
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG")
    assert (tmp_path / "imagegen-demo-stream.png").exists()
    assert f"{tmp_path / 'imagegen-demo.png'}  asked 1024x1024 -> 1024x1024 (1:1, 1K)  seed=7" in out
    assert "embedded Gemini emulator" in out
    assert "attempt 1 failed: RESOURCE_EXHAUSTED UPSTREAM_RATE_LIMITED" in out
    assert "attempt 2 failed: UNAVAILABLE" in out
    assert "  3 attempts  " in out
    assert out.rstrip().endswith("demo done")
