"""The README's Python examples run as written against a real server.

Keeps the README true: each ```python block is executed (in a worker thread,
since the sync client blocks) with the README's address swapped for the test
server's, in a temporary working directory.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from imagegen_server.app import RunningServer

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_readme_has_examples() -> None:
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(BLOCKS)))
async def test_readme_example_runs(
    index: int, server: RunningServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code = BLOCKS[index].replace("127.0.0.1:50051", server.target)
    await asyncio.to_thread(exec, compile(code, f"README.md[python block {index}]", "exec"), {"__name__": "__readme__"})
    if "save(" in code:
        assert any(tmp_path.glob("*.png")), "the example should have written its image"  # noqa: ASYNC240
