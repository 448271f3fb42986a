"""Every way a request can end badly, as a gRPC status with ``google.rpc`` details.

One mapping from upstream error kinds to (status code, ErrorInfo reason), used
for the final status and for streaming ``AttemptFailed`` events alike. Details
travel in the standard ``grpc-status-details-bin`` trailer (grpcio-status), so
clients in any language can read them. See the README's error table.

The reasons and the domain come from ``imagegen.v1.ErrorReason`` (protos/imagegen/v1/error_reason.proto):
code here names an enum value, and :func:`reason_name` turns it into the wire string.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from imagegen.v1.error_reason_pb2 import ErrorReason, error_domain
from imagegen_server.gemini.errors import ErrorKind, UpstreamError
from imagegen_server.quoting import cut, escape_controls

#: The ErrorInfo domain of every error this service emits (the enum's ``error_domain`` option).
DOMAIN: str = ErrorReason.DESCRIPTOR.GetOptions().Extensions[error_domain]

#: The prefix buf's lint rules put on every value name; the wire string drops it.
_REASON_PREFIX = ErrorReason.Name(ErrorReason.ERROR_REASON_UNSPECIFIED).removesuffix("UNSPECIFIED")


def reason_name(reason: ErrorReason.ValueType) -> str:
    """The ``ErrorInfo.reason`` string of an enum value: ``ERROR_REASON_OVERLOADED`` -> ``OVERLOADED``."""
    return ErrorReason.Name(reason).removeprefix(_REASON_PREFIX)


#: The longest RetryInfo delay we pass on; a proxy's Retry-After date decades
#: ahead is garbage, not advice.
MAX_RETRY_DELAY = 24 * 3600.0

#: Upstream error kind -> (gRPC code, ErrorInfo reason).
_KIND_STATUS: Mapping[ErrorKind, tuple[grpc.StatusCode, ErrorReason.ValueType]] = {
    ErrorKind.INVALID_ARGUMENT: (grpc.StatusCode.INVALID_ARGUMENT, ErrorReason.ERROR_REASON_UPSTREAM_INVALID_ARGUMENT),
    ErrorKind.FAILED_PRECONDITION: (
        grpc.StatusCode.FAILED_PRECONDITION,
        ErrorReason.ERROR_REASON_UPSTREAM_FAILED_PRECONDITION,
    ),
    ErrorKind.MISSING_THOUGHT_SIGNATURE: (
        grpc.StatusCode.INVALID_ARGUMENT,
        ErrorReason.ERROR_REASON_MISSING_THOUGHT_SIGNATURE,
    ),
    ErrorKind.CONTENT_BLOCKED: (grpc.StatusCode.INVALID_ARGUMENT, ErrorReason.ERROR_REASON_CONTENT_BLOCKED),
    ErrorKind.NO_IMAGE: (grpc.StatusCode.FAILED_PRECONDITION, ErrorReason.ERROR_REASON_NO_IMAGE),
    ErrorKind.RATE_LIMITED: (grpc.StatusCode.RESOURCE_EXHAUSTED, ErrorReason.ERROR_REASON_UPSTREAM_RATE_LIMITED),
    ErrorKind.QUOTA_EXHAUSTED: (grpc.StatusCode.RESOURCE_EXHAUSTED, ErrorReason.ERROR_REASON_UPSTREAM_QUOTA_EXHAUSTED),
    ErrorKind.UNAVAILABLE: (grpc.StatusCode.UNAVAILABLE, ErrorReason.ERROR_REASON_UPSTREAM_UNAVAILABLE),
    ErrorKind.DEADLINE_EXCEEDED: (grpc.StatusCode.DEADLINE_EXCEEDED, ErrorReason.ERROR_REASON_UPSTREAM_TIMEOUT),
    ErrorKind.NOT_FOUND: (grpc.StatusCode.NOT_FOUND, ErrorReason.ERROR_REASON_MODEL_NOT_FOUND),
    ErrorKind.AUTH: (grpc.StatusCode.INTERNAL, ErrorReason.ERROR_REASON_UPSTREAM_AUTH),
    ErrorKind.MALFORMED: (grpc.StatusCode.INTERNAL, ErrorReason.ERROR_REASON_UPSTREAM_MALFORMED),
    ErrorKind.CIRCUIT_OPEN: (grpc.StatusCode.UNAVAILABLE, ErrorReason.ERROR_REASON_CIRCUIT_OPEN),
}


def upstream_status(error: UpstreamError) -> tuple[grpc.StatusCode, str]:
    """The gRPC code and ErrorInfo reason (wire string) an upstream failure maps to."""
    code, reason = _KIND_STATUS[error.kind]
    return code, reason_name(reason)


def duration(seconds: float) -> duration_pb2.Duration:
    """A protobuf Duration from float seconds."""
    d = duration_pb2.Duration()
    d.FromNanoseconds(round(max(seconds, 0.0) * 1e9))
    return d


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One bad request field, named by its proto path (``history[2].parts[0].image.data``)."""

    field: str
    description: str


class ServiceError(Exception):
    """A final RPC failure carrying the full ``google.rpc.Status`` to send."""

    def __init__(self, status: status_pb2.Status) -> None:
        super().__init__(status.message)
        self.status = status

    @property
    def code(self) -> grpc.StatusCode:
        """The gRPC status code."""
        return _CODE_BY_VALUE[self.status.code]

    def to_grpc_status(self) -> grpc.Status:
        """The status for ``context.abort_with_status``."""
        return rpc_status.to_status(self.status)

    def error_info(self) -> error_details_pb2.ErrorInfo:
        """The one ErrorInfo among the details."""
        info = error_details_pb2.ErrorInfo()
        for detail in self.status.details:
            if detail.Unpack(info):
                return info
        raise LookupError("status has no ErrorInfo")  # pragma: no cover - build() always adds one


_CODE_BY_VALUE = {c.value[0]: c for c in grpc.StatusCode}


#: Caps on what one status carries, whoever's text is in it. gRPC drops a trailer above 16 KiB, and the
#: caller then sees RESOURCE_EXHAUSTED "Stream removed" instead of the error; the message travels
#: percent-encoded (up to 12 bytes a character), the details base64-encoded (4 bytes per 3).
MAX_MESSAGE_CHARS = 400
#: Each ErrorInfo metadata value, field violation, quota or resource text.
MAX_DETAIL_CHARS = 300
#: The serialized details (ErrorInfo, RetryInfo, BadRequest...): violations past it are dropped, and counted.
MAX_DETAILS_BYTES = 6 * 1024
#: Metadata keys allowed more than MAX_DETAIL_CHARS (documented in error_reason.proto).
_LONG_METADATA = {"modelText": 1000}
#: Violations considered at most before the size check (a Refine can name thousands of empty parts).
MAX_FIELD_VIOLATIONS = 50


def _text(value: str, limit: int = MAX_DETAIL_CHARS) -> str:
    return cut(escape_controls(value), limit)


def build(
    code: grpc.StatusCode,
    message: str,
    reason: ErrorReason.ValueType,
    metadata: Mapping[str, str] | None = None,
    *,
    retry_delay: float | None = None,
    field_violations: Iterable[FieldViolation] = (),
    quota_violations: Iterable[error_details_pb2.QuotaFailure.Violation] = (),
    resource: error_details_pb2.ResourceInfo | None = None,
) -> ServiceError:
    """Assemble a status with exactly one ErrorInfo and the optional details.

    Every text is escaped and cut here (the one place), so a caller's 20 KB model name or
    upstream's long answer cannot push the status past gRPC's trailer limit.
    """
    status = status_pb2.Status(code=code.value[0])
    info = error_details_pb2.ErrorInfo(reason=reason_name(reason), domain=DOMAIN)
    for key, value in (metadata or {}).items():
        if value:
            info.metadata[key] = _text(value, _LONG_METADATA.get(key, MAX_DETAIL_CHARS))
    status.details.add().Pack(info)
    if retry_delay is not None:
        delay = duration(min(retry_delay, MAX_RETRY_DELAY))
        status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    quota = error_details_pb2.QuotaFailure(
        violations=[
            error_details_pb2.QuotaFailure.Violation(subject=_text(v.subject), description=_text(v.description))
            for v in list(quota_violations)[:MAX_FIELD_VIOLATIONS]
        ]
    )
    if resource is not None:
        resource = error_details_pb2.ResourceInfo(
            resource_type=_text(resource.resource_type),
            resource_name=_text(resource.resource_name),
            owner=_text(resource.owner),
            description=_text(resource.description),
        )
    violations = list(field_violations)
    if violations:
        bad = error_details_pb2.BadRequest()
        for v in violations[:MAX_FIELD_VIOLATIONS]:
            bad.field_violations.add(field=_text(v.field), description=_text(v.description))
        others = status.ByteSize() + quota.ByteSize() + (resource.ByteSize() if resource is not None else 0)
        while len(bad.field_violations) > 1 and others + bad.ByteSize() > MAX_DETAILS_BYTES:
            del bad.field_violations[-1]
        status.details.add().Pack(bad)
        if len(bad.field_violations) < len(violations):
            message += f" ({len(violations) - len(bad.field_violations)} more violations not listed)"
    if quota.violations:
        status.details.add().Pack(quota)
    if resource is not None:
        status.details.add().Pack(resource)
    status.message = _text(message, MAX_MESSAGE_CHARS)
    return ServiceError(status)


def invalid_request(violations: Iterable[FieldViolation], metadata: Mapping[str, str] | None = None) -> ServiceError:
    """INVALID_ARGUMENT for our own validation, one BadRequest violation per field."""
    violations = list(violations)
    names = ", ".join(v.field for v in violations)
    if len(violations) == 1:
        message = f"{names}: {violations[0].description}"
    else:
        more = ", …" if len(violations) > 5 else ""
        names = ", ".join(v.field for v in violations[:5]) + more
        message = f"{len(violations)} invalid fields: {names} (see BadRequest details)"
    return build(
        grpc.StatusCode.INVALID_ARGUMENT,
        message,
        ErrorReason.ERROR_REASON_INVALID_REQUEST,
        metadata,
        field_violations=violations,
    )


def from_upstream(
    error: UpstreamError,
    *,
    attempts: int,
    retry_delay: float | None,
    metadata: Mapping[str, str],
) -> ServiceError:
    """The final status for an upstream failure after the retry loop gave up.

    A missing signature names a history part: Gemini's ``contents`` are our
    ``history`` followed by the new user turn, so content index i is ``history[i]``.
    """
    code, reason = _KIND_STATUS[error.kind]
    meta = dict(metadata)
    meta["attempts"] = str(attempts)
    violations: list[FieldViolation] = []
    quota: list[error_details_pb2.QuotaFailure.Violation] = []
    resource: error_details_pb2.ResourceInfo | None = None
    message = error.message
    delay = retry_delay if retry_delay is not None else error.retry_after

    match error.kind:
        case ErrorKind.CONTENT_BLOCKED:
            meta["blockReason"] = error.block_reason
            meta["blockSide"] = error.block_side
            meta["finishReason"] = error.finish_reason
            message = f"{error.block_side or 'content'} blocked by upstream safety filters ({error.block_reason})"
            delay = None
        case ErrorKind.NO_IMAGE:
            meta["finishReason"] = error.finish_reason
            meta["modelText"] = error.model_text[:1000]
            delay = None
        case ErrorKind.MISSING_THOUGHT_SIGNATURE:
            if error.signature_content_index is not None:
                turn = error.signature_content_index
                part = error.signature_part_index or 0
                violations.append(
                    FieldViolation(
                        f"history[{turn}].parts[{part}].thought_signature",
                        "model part is missing the thought signature it was returned with",
                    )
                )
            delay = None
        case ErrorKind.INVALID_ARGUMENT | ErrorKind.FAILED_PRECONDITION:
            violations.extend(FieldViolation(v.field, v.description) for v in error.field_violations)
            delay = None
        case ErrorKind.RATE_LIMITED | ErrorKind.QUOTA_EXHAUSTED:
            for v in error.quota_violations:
                quota.append(
                    error_details_pb2.QuotaFailure.Violation(
                        subject=v.quota_id or v.quota_metric, description=v.description or v.quota_metric
                    )
                )
            if error.kind is ErrorKind.QUOTA_EXHAUSTED:
                delay = None
        case ErrorKind.NOT_FOUND:
            meta["model"] = error.model
            resource = error_details_pb2.ResourceInfo(
                resource_type="model", resource_name=error.model, description=error.message
            )
            delay = None
        case ErrorKind.AUTH:
            # The operator's key is at fault, not the caller: say so without the key.
            message = "the server's upstream credentials were rejected; contact the operator"
            delay = None
        case ErrorKind.MALFORMED:
            delay = None
        case ErrorKind.CIRCUIT_OPEN:
            meta["model"] = error.model
        case _:
            pass
    if error.http_status is not None:
        meta["httpStatus"] = str(error.http_status)
    if error.upstream_status:
        meta["upstreamStatus"] = error.upstream_status
    return build(
        code,
        message,
        reason,
        meta,
        retry_delay=delay,
        field_violations=violations,
        quota_violations=quota,
        resource=resource,
    )


def overloaded(retry_delay: float, metadata: Mapping[str, str]) -> ServiceError:
    """RESOURCE_EXHAUSTED: our own concurrency limit is full."""
    return build(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "server is at its concurrency limit; retry later",
        ErrorReason.ERROR_REASON_OVERLOADED,
        metadata,
        retry_delay=retry_delay,
    )


#: RetryInfo of SHUTTING_DOWN: long enough for a load balancer to see NOT_SERVING
#: and send the retry to another replica.
SHUTDOWN_RETRY_DELAY = 1.0


def caller_quota_exceeded(
    caller: str, quota: str, limit: float, retry_delay: float, metadata: Mapping[str, str]
) -> ServiceError:
    """RESOURCE_EXHAUSTED: the caller is over its own quota (not the server's, not Gemini's)."""
    return build(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"caller {caller!r} is over its {quota} quota ({limit:g}); retry after the RetryInfo delay",
        ErrorReason.ERROR_REASON_CALLER_QUOTA_EXCEEDED,
        {**metadata, "caller": caller, "quota": quota},
        retry_delay=retry_delay,
        quota_violations=[
            error_details_pb2.QuotaFailure.Violation(subject=f"caller:{caller}", description=f"{quota}: {limit:g}")
        ],
    )


def memory_overloaded(retry_delay: float, metadata: Mapping[str, str]) -> ServiceError:
    """RESOURCE_EXHAUSTED: the request bytes in flight are at the server's memory bound."""
    return build(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "server is at its bound on request bytes in flight; retry later",
        ErrorReason.ERROR_REASON_MEMORY_OVERLOADED,
        metadata,
        retry_delay=retry_delay,
    )


def request_too_large(limit: int, size: int, metadata: Mapping[str, str]) -> ServiceError:
    """RESOURCE_EXHAUSTED: the request is larger than its method accepts (checked before decoding)."""
    return build(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"request of {size} bytes is larger than this method accepts ({limit} bytes)",
        ErrorReason.ERROR_REASON_REQUEST_TOO_LARGE,
        {**metadata, "limitBytes": str(limit)},
    )


def shutting_down(metadata: Mapping[str, str] | None = None) -> ServiceError:
    """UNAVAILABLE: the server is draining (or its grace ended); another replica (or a restart) can serve it."""
    return build(
        grpc.StatusCode.UNAVAILABLE,
        "server is shutting down; retry, another replica can serve it",
        ErrorReason.ERROR_REASON_SHUTTING_DOWN,
        metadata,
        retry_delay=SHUTDOWN_RETRY_DELAY,
    )


#: RetryInfo of SHARED_STATE_UNAVAILABLE: a Redis restart or failover takes a few seconds.
SHARED_STATE_RETRY_DELAY = 2.0


def shared_state_unavailable(what: str, metadata: Mapping[str, str] | None = None) -> ServiceError:
    """UNAVAILABLE: the shared state (Redis) is unreachable and the server fails closed rather than serve ``what``
    without it (a request id, a caller's quota)."""
    return build(
        grpc.StatusCode.UNAVAILABLE,
        f"the shared state store is unreachable, so {what} cannot be checked across replicas; retry later",
        ErrorReason.ERROR_REASON_SHARED_STATE_UNAVAILABLE,
        metadata,
        retry_delay=SHARED_STATE_RETRY_DELAY,
    )


def deadline_exceeded(metadata: Mapping[str, str]) -> ServiceError:
    """DEADLINE_EXCEEDED: the caller's deadline ran out."""
    return build(
        grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded", ErrorReason.ERROR_REASON_DEADLINE_EXCEEDED, metadata
    )


def max_duration_exceeded(limit: float, metadata: Mapping[str, str]) -> ServiceError:
    """DEADLINE_EXCEEDED: the call ran past the server's maximum call duration (the caller's deadline was later)."""
    return build(
        grpc.StatusCode.DEADLINE_EXCEEDED,
        f"the call reached the server's maximum call duration of {limit:g}s; send a deadline to choose your own",
        ErrorReason.ERROR_REASON_MAX_DURATION_EXCEEDED,
        {**metadata, "maxCallDuration": f"{limit:g}s"},
    )


def internal(metadata: Mapping[str, str]) -> ServiceError:
    """INTERNAL for anything unexpected: a generic message, details only in the server log."""
    return build(grpc.StatusCode.INTERNAL, "internal server error", ErrorReason.ERROR_REASON_INTERNAL, metadata)
