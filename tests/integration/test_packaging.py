"""The wheel: what ``pip install imagegen`` gets (license, the three packages, the ``imagegen`` command)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_wheel_carries_the_license_packages_and_command(tmp_path: Path) -> None:
    build_dir = ROOT / "build"
    ours = not build_dir.exists()
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path)]
    try:
        subprocess.run([*pip_wheel, str(ROOT)], check=True, timeout=300, capture_output=True)
    finally:
        if ours:  # setuptools leaves build/ behind; remove it only if it was not there before
            shutil.rmtree(build_dir, ignore_errors=True)
    [wheel] = tmp_path.glob("imagegen-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        metadata = archive.read(f"{info}/METADATA").decode()
        entry_points = archive.read(f"{info}/entry_points.txt").decode()
        license_text = archive.read(f"{info}/licenses/LICENSE").decode()
    assert license_text == (ROOT / "LICENSE").read_text()
    assert "Apache License" in license_text and "Version 2.0" in license_text
    assert "License-Expression: Apache-2.0" in metadata
    assert "Requires-Python: >=3.11" in metadata
    assert "imagegen = imagegen_cli.main:main" in entry_points
    for package in ("imagegen", "imagegen_server", "imagegen_cli"):
        assert f"{package}/__init__.py" in names and f"{package}/py.typed" in names, package
    # The SDK's dependencies stay light: the server's libraries are only in the extra.
    base = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert not [d for d in base if any(lib in d for lib in ("aiohttp", "pillow", "prometheus", "reflection"))], base
