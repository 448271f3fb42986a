"""``pip install imagegen`` without the server extra: the client commands work, ``serve`` says what is missing.

Each command runs in a fresh interpreter whose import system refuses the server
package and every module only the ``server`` extra installs.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagegen.testing import FakeServer, make_generation

#: Installs an import hook that behaves as if the server extra (and the server package) were not installed.
_WITHOUT_SERVER = """
import importlib.abc, sys
BLOCKED = {"imagegen_server", "aiohttp", "PIL", "prometheus_client", "grpc_reflection"}
class Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Missing())
from imagegen_cli.main import main
code = main(sys.argv[1:])
loaded = sorted({m.split(".")[0] for m in sys.modules} & BLOCKED)
assert not loaded, loaded
sys.exit(code)
"""


def imagegen(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _WITHOUT_SERVER, *argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def server() -> Iterator[FakeServer]:
    with FakeServer(health=True) as running:
        yield running


def test_client_commands_need_only_the_sdk(server: FakeServer, tmp_path: Path) -> None:
    help_run = imagegen("--help", cwd=tmp_path)
    assert help_run.returncode == 0 and "exit codes:" in help_run.stdout, help_run.stderr

    server.servicer.push(make_generation(seed=3))
    done = imagegen("generate", "a fox", "-o", "fox.png", "--target", server.target, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "fox.png").read_bytes().startswith(b"\x89PNG")
    assert (tmp_path / "fox.png.imagegen.json").exists()

    health = imagegen("health", "--target", server.target, cwd=tmp_path)
    assert (health.returncode, health.stdout.strip()) == (0, "SERVING"), health.stderr
    models = imagegen("models", "--target", server.target, cwd=tmp_path)
    assert models.returncode == 0 and "(default)" in models.stdout, models.stderr


@pytest.mark.parametrize("command", ["serve", "emulator", "demo"])
def test_server_commands_say_the_extra_is_missing(command: str, tmp_path: Path) -> None:
    run = imagegen(command, cwd=tmp_path)
    assert run.returncode == 1
    assert run.stdout == ""
    assert run.stderr.splitlines() == [
        f"imagegen {command}: needs the server extra (missing module imagegen_server): pip install 'imagegen[server]'"
    ]
