"""Regenerate the Python stubs in ``sdk/imagegen/v1`` from ``protos/``.

Usage: ``python protos/generate.py [OUT_DIR]`` (default: ``sdk``).

The proto package ``imagegen.v1`` lands at the Python package ``imagegen.v1``,
so the generated absolute imports work without post-processing. Messages get
``.py`` + mypy-protobuf ``.pyi``; services get ``_grpc.py`` + ``_grpc.pyi``.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
PROTO_FILES = sorted(PROTO_ROOT.glob("imagegen/v1/*.proto"))


def _plugin(name: str) -> str:
    # The plugins live next to the interpreter in a venv; PATH may not have them.
    exe = Path(sys.executable).with_name(name)
    found = str(exe) if exe.exists() else shutil.which(name)
    if not found:
        raise SystemExit(f"{name} not found: pip install mypy-protobuf")
    return found


def generate(out_dir: Path) -> None:
    """Run protoc with the python, grpc_python and mypy-protobuf generators."""
    import grpc_tools
    from grpc_tools import protoc

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    target = out_dir / "imagegen" / "v1"
    target.mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *(str(p.relative_to(PROTO_ROOT)) for p in PROTO_FILES),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    init = target / "__init__.py"
    if not init.exists():
        init.write_text('"""Generated protobuf and gRPC stubs for imagegen.v1 (do not edit)."""\n')


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else PROTO_ROOT.parent / "sdk")
