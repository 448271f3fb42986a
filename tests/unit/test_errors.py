"""Status building: exactly one ErrorInfo, sane RetryInfo, signature positions mapped to history."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2

from imagegen.v1.error_reason_pb2 import ErrorReason
from imagegen_server import errors
from imagegen_server.gemini.errors import ErrorKind, UpstreamError


def _unpack(err: errors.ServiceError, message: type) -> list:  # type: ignore[type-arg]
    out = []
    for detail in err.status.details:
        msg = message()
        if detail.Unpack(msg):
            out.append(msg)
    return out


def test_retry_info_delay_is_capped() -> None:
    err = errors.build(grpc.StatusCode.RESOURCE_EXHAUSTED, "m", ErrorReason.ERROR_REASON_OVERLOADED, retry_delay=2.3e9)
    (info,) = _unpack(err, error_details_pb2.RetryInfo)
    assert info.retry_delay.seconds == errors.MAX_RETRY_DELAY


def test_missing_signature_names_history_part() -> None:
    upstream = UpstreamError(
        ErrorKind.MISSING_THOUGHT_SIGNATURE, "Image part is missing", signature_content_index=1, signature_part_index=0
    )
    err = errors.from_upstream(upstream, attempts=1, retry_delay=None, metadata={"generationId": "g"})
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert len(_unpack(err, error_details_pb2.ErrorInfo)) == 1
    (bad,) = _unpack(err, error_details_pb2.BadRequest)
    assert bad.field_violations[0].field == "history[1].parts[0].thought_signature"


def test_every_kind_maps_to_one_status() -> None:
    for kind in ErrorKind:
        err = errors.from_upstream(UpstreamError(kind, "boom"), attempts=2, retry_delay=None, metadata={})
        infos = _unpack(err, error_details_pb2.ErrorInfo)
        assert len(infos) == 1 and infos[0].domain == "imagegen.dev"
        assert infos[0].metadata["attempts"] == "2"
        assert err.code is not grpc.StatusCode.UNKNOWN
