"""One error vocabulary: ``imagegen.v1.ErrorReason`` is the only source of ErrorInfo reasons and the domain.

Every reason the server emits is an enum value whose proto comment names the gRPC code it is sent with
(and the server really sends that code); every documented value is either emitted by the server or
listed here as belonging to a feature not built yet; no reason is spelled as a string literal in the
server or the SDK; the SDK maps every value to an exception class.
"""

from __future__ import annotations

import re
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2

from imagegen import errors as sdk_errors
from imagegen.v1.error_reason_pb2 import ErrorReason
from imagegen_server import errors
from imagegen_server.decoding import Undecodable, undecodable_request
from imagegen_server.gemini.errors import ErrorKind, UpstreamError

ROOT = Path(__file__).resolve().parents[2]
PROTO = ROOT / "protos" / "imagegen" / "v1" / "error_reason.proto"
PREFIX = "ERROR_REASON_"
CODES = {c.name for c in grpc.StatusCode}


def _documented() -> dict[str, str]:
    """Enum value name -> its leading comment, parsed from the proto source."""
    body = PROTO.read_text().split("enum ErrorReason {", 1)[1].split("\n}", 1)[0]
    docs: dict[str, str] = {}
    comment: list[str] = []
    for raw in body.splitlines():
        line = raw.strip()
        if line.startswith("//"):
            comment.append(line.removeprefix("//").strip())
        elif match := re.fullmatch(r"(ERROR_REASON_\w+) = \d+;", line):
            docs[match.group(1)] = " ".join(comment)
            comment = []
        elif line.startswith("option"):
            comment = []
    return docs


DOCUMENTED = _documented()


def _code_of(doc: str) -> str:
    return doc.split(".", 1)[0]


def _info(err: errors.ServiceError) -> error_details_pb2.ErrorInfo:
    return err.error_info()


def _emitted_by_server() -> list[errors.ServiceError]:
    """One status per way the server can fail (every upstream kind and every constructor)."""
    out = [
        errors.from_upstream(UpstreamError(kind, "x"), attempts=1, retry_delay=None, metadata={}) for kind in ErrorKind
    ]
    out += [
        errors.invalid_request([errors.FieldViolation("prompt", "must not be empty")]),
        errors.overloaded(1.0, {}),
        errors.shutting_down({}),
        errors.deadline_exceeded({}),
        errors.max_duration_exceeded(600.0, {}),
        errors.internal({}),
        errors.shared_state_unavailable("the request id"),
        undecodable_request("Generate", Undecodable("imagegen.v1.GenerateRequest", 6)),
        errors.caller_quota_exceeded("alice", "requests_per_minute", 60, 1.0, {}),
        errors.memory_overloaded(1.0, {}),
        errors.request_too_large(65536, 70000, {}),
    ]
    return out


def test_every_value_is_documented_with_its_code() -> None:
    names = set(ErrorReason.keys())
    assert set(DOCUMENTED) == names, "proto parse and descriptor disagree"
    for name, doc in DOCUMENTED.items():
        assert name.startswith(PREFIX)
        if name == "ERROR_REASON_UNSPECIFIED":
            continue
        assert _code_of(doc) in CODES, f"{name}: comment must start with its gRPC code, got {doc[:40]!r}"


def test_every_emitted_reason_is_a_value_sent_with_its_documented_code() -> None:
    for err in _emitted_by_server():
        info = _info(err)
        name = PREFIX + info.reason
        assert name in DOCUMENTED, f"{info.reason} is not an ErrorReason value"
        assert info.domain == "imagegen.dev" == errors.DOMAIN == sdk_errors.DOMAIN
        assert err.code.name == _code_of(DOCUMENTED[name]), f"{info.reason}: sent with {err.code.name}"


def test_every_status_built_in_the_source_uses_the_documented_code() -> None:
    # Catches statuses built outside errors.py's constructors (auth, limits, ...): each
    # ``build(grpc.StatusCode.X, ..., ErrorReason.ERROR_REASON_Y, ...)`` must pair X with Y's documented code.
    call = re.compile(
        r"grpc\.StatusCode\.([A-Z_]+),(?:(?!grpc\.StatusCode)[\s\S])*?ErrorReason\.(ERROR_REASON_[A-Z_]+)"
    )
    found = 0
    for path in (ROOT / "server" / "imagegen_server").rglob("*.py"):
        for code, name in call.findall(path.read_text()):
            found += 1
            assert code == _code_of(DOCUMENTED[name]), f"{path.name}: {name} built with {code}"
    assert found >= 5


#: Values defined for features the server does not have yet (issues 11, 12, 14). When a feature lands
#: and the server names its reason, remove it here: the test below then checks it is emitted.
NOT_YET_EMITTED = {
    # A duplicate whose first call was cancelled takes over instead (idempotency.py).
    "ERROR_REASON_DUPLICATE_CANCELLED",
}


def test_every_value_is_emitted_or_listed_as_not_yet() -> None:
    # The ErrorReasons the server's source names: what it can send.
    source = "\n".join(p.read_text() for p in (ROOT / "server" / "imagegen_server").rglob("*.py"))
    named = set(re.findall(r"\bERROR_REASON_[A-Z_]+\b", source)) - {"ERROR_REASON_UNSPECIFIED"}
    emitted = {PREFIX + _info(err).reason for err in _emitted_by_server()}
    assert emitted <= named
    values = set(DOCUMENTED) - {"ERROR_REASON_UNSPECIFIED"}
    assert named <= values
    assert not (named & NOT_YET_EMITTED), f"now emitted, drop from NOT_YET_EMITTED: {named & NOT_YET_EMITTED}"
    assert values - named == NOT_YET_EMITTED, f"documented but never emitted: {values - named - NOT_YET_EMITTED}"


@pytest.mark.parametrize("root", ["server/imagegen_server", "sdk/imagegen"])
def test_no_reason_is_spelled_as_a_literal(root: str) -> None:
    # Names that are also gRPC code names (INTERNAL, DEADLINE_EXCEEDED) appear legitimately as codes.
    wire = {n.removeprefix(PREFIX) for n in DOCUMENTED} - CODES - {"UNSPECIFIED"}
    pattern = re.compile(r"""["'](""" + "|".join(sorted(wire)) + r""")["']""")
    offenders = []
    for path in (ROOT / root).rglob("*.py"):
        if any(f"/{skip}/" in path.as_posix() for skip in ("v1", "emulator", "gemini")):
            continue  # generated stubs; the upstream client and the emulator speak Gemini's vocabulary
        for lineno, line in enumerate(path.read_text().splitlines(), start=1):
            if pattern.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{lineno}: {line.strip()}")
    assert not offenders, "derive reasons from ErrorReason (reason_name):\n" + "\n".join(offenders)


def test_sdk_maps_every_value_to_a_class() -> None:
    for value in ErrorReason.values():
        if value == ErrorReason.ERROR_REASON_UNSPECIFIED:
            continue
        wire = sdk_errors.reason_name(value)
        cls = sdk_errors._BY_REASON.get(wire)
        assert cls is not None, f"imagegen.errors has no class for {wire}"


def test_wire_name_drops_only_the_prefix() -> None:
    assert errors.reason_name(ErrorReason.ERROR_REASON_UPSTREAM_RATE_LIMITED) == "UPSTREAM_RATE_LIMITED"
    assert sdk_errors.reason_name(ErrorReason.ERROR_REASON_INTERNAL) == "INTERNAL"
