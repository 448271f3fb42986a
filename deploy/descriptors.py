"""Build the protobuf descriptor set that Envoy's ``grpc_json_transcoder`` reads.

Usage: ``python deploy/descriptors.py [OUT]`` (default ``deploy/imagegen.pb``).

Uses grpcio-tools' bundled protoc (in the ``dev`` extra), so no other tool is
needed. The set holds the ``imagegen.v1`` files with every import
(``--include_imports``: ``google/api/*.proto`` for the HTTP rules, the
well-known types) plus ``google/rpc/status.proto`` and
``google/rpc/error_details.proto``, whose types Envoy needs to turn the
``grpc-status-details-bin`` trailer into a JSON ``google.rpc.Status``
(``convert_grpc_status``). ``google/api`` and ``google/rpc`` come from the
copies vendored in ``protos/google``; googleapis-common-protos (a dependency of
grpcio-status) is on the include path after them as a fallback. ``buf build``
on the repository builds an equivalent set (it includes every file of the
module).

The Dockerfile runs this in its build stage and copies the result into the
Envoy image; ``tests/unit/test_deploy_manifests.py`` runs it too and checks
the Envoy config against the result.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
#: Extra files Envoy needs for ``convert_grpc_status`` (error detail types).
STATUS_PROTOS = ("google/rpc/status.proto", "google/rpc/error_details.proto")


def _include_dirs() -> list[Path]:
    """protos/ first, then googleapis-common-protos, then protoc's well-known types."""
    import grpc_tools
    from google.rpc import status_pb2

    googleapis = Path(status_pb2.__file__).resolve().parent.parent.parent
    well_known = Path(grpc_tools.__file__).resolve().parent / "_proto"
    return [PROTO_ROOT, googleapis, well_known]


def build(out: Path) -> Path:
    """Write the descriptor set for ``protos/imagegen/v1/*.proto`` to ``out``; return ``out``."""
    from grpc_tools import protoc

    sources = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.glob("imagegen/v1/*.proto"))
    if not sources:
        raise SystemExit(f"no .proto files under {PROTO_ROOT / 'imagegen/v1'}")
    out.parent.mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        *(f"-I{d}" for d in _include_dirs()),
        "--include_imports",
        "--include_source_info",
        f"--descriptor_set_out={out}",
        *sources,
        *STATUS_PROTOS,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return out


if __name__ == "__main__":
    target = build(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "deploy" / "imagegen.pb")
    print(f"wrote {target}")
