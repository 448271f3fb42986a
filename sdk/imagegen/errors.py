"""Exceptions raised by the imagegen SDK, rebuilt from the gRPC status and its ``google.rpc`` details.

Every failed call raises a subclass of :class:`ImagegenError` (alias
:data:`GenerationError`). The class is chosen by the ``ErrorInfo.reason`` the
server put in the ``grpc-status-details-bin`` trailer first, then by the gRPC
status code, so callers can catch errors by meaning:

==============================  =======================  ===================================================
class                           gRPC code                ErrorInfo reasons
==============================  =======================  ===================================================
:class:`InvalidRequestError`    INVALID_ARGUMENT         INVALID_REQUEST, UPSTREAM_INVALID_ARGUMENT,
                                (also OUT_OF_RANGE)      MISSING_THOUGHT_SIGNATURE, UNDECODABLE_REQUEST,
                                                         REQUEST_TOO_LARGE
:class:`ContentPolicyError`     INVALID_ARGUMENT         CONTENT_BLOCKED
:class:`NoImageError`           FAILED_PRECONDITION      NO_IMAGE
:class:`FailedPreconditionError` FAILED_PRECONDITION     UPSTREAM_FAILED_PRECONDITION
:class:`RateLimitError`         RESOURCE_EXHAUSTED       UPSTREAM_RATE_LIMITED, OVERLOADED,
                                                         CALLER_QUOTA_EXCEEDED, MEMORY_OVERLOADED
:class:`QuotaExhaustedError`    RESOURCE_EXHAUSTED       UPSTREAM_QUOTA_EXHAUSTED
:class:`UnavailableError`       UNAVAILABLE              UPSTREAM_UNAVAILABLE, SHUTTING_DOWN,
                                                         DUPLICATE_CANCELLED, CIRCUIT_OPEN,
                                                         SHARED_STATE_UNAVAILABLE
:class:`DeadlineExceededError`  DEADLINE_EXCEEDED        UPSTREAM_TIMEOUT, DEADLINE_EXCEEDED,
                                                         MAX_DURATION_EXCEEDED
:class:`NotFoundError`          NOT_FOUND                MODEL_NOT_FOUND
:class:`AuthenticationError`    UNAUTHENTICATED          CREDENTIALS_MISSING, CREDENTIALS_INVALID
:class:`PermissionDeniedError`  PERMISSION_DENIED        METHOD_NOT_ALLOWED
:class:`UpstreamAuthError`      INTERNAL                 UPSTREAM_AUTH
:class:`InternalError`          INTERNAL, UNKNOWN,       UPSTREAM_MALFORMED, INTERNAL
                                DATA_LOSS
:class:`UnimplementedError`     UNIMPLEMENTED
:class:`RequestCancelledError`  CANCELLED
==============================  =======================  ===================================================

The reasons are the values of ``imagegen.v1.ErrorReason`` (``protos/imagegen/v1/error_reason.proto``,
documented there) without their ``ERROR_REASON_`` prefix; :func:`reason_name` converts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar, cast

import grpc
from google.protobuf import any_pb2
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from imagegen.v1.error_reason_pb2 import ErrorReason, error_domain

__all__ = [
    "DOMAIN",
    "AuthenticationError",
    "ContentBlockedError",
    "ContentPolicyError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "FieldViolation",
    "GenerationError",
    "ImagegenError",
    "InternalError",
    "InvalidRequestError",
    "NoImageError",
    "NotFoundError",
    "PermissionDeniedError",
    "QuotaExhaustedError",
    "QuotaViolation",
    "RateLimitError",
    "RequestCancelledError",
    "UnavailableError",
    "UnimplementedError",
    "UpstreamAuthError",
    "from_grpc_error",
    "reason_name",
]

#: ``ErrorInfo.domain`` of errors raised by the imagegen server (the ``error_domain`` option of ``ErrorReason``).
DOMAIN: str = ErrorReason.DESCRIPTOR.GetOptions().Extensions[error_domain]

#: The prefix buf's lint rules put on every value name; the wire string drops it.
_REASON_PREFIX = ErrorReason.Name(ErrorReason.ERROR_REASON_UNSPECIFIED).removesuffix("UNSPECIFIED")


def reason_name(reason: ErrorReason.ValueType) -> str:
    """The ``ErrorInfo.reason`` string of an ``ErrorReason`` value, e.g. ``UPSTREAM_RATE_LIMITED``.

    Compare :attr:`ImagegenError.reason` against it:
    ``err.reason == reason_name(ErrorReason.ERROR_REASON_CONTENT_BLOCKED)``.
    """
    return ErrorReason.Name(reason).removeprefix(_REASON_PREFIX)


_DETAILS_KEY = "grpc-status-details-bin"

_M = TypeVar("_M", bound=Message)


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One invalid request field, from ``google.rpc.BadRequest``."""

    #: Path of the field, e.g. ``history[2].parts[1].image.data``.
    field: str
    #: Why it is invalid.
    description: str
    #: Machine-readable reason (UPPER_SNAKE), when given.
    reason: str = ""


@dataclass(frozen=True, slots=True)
class QuotaViolation:
    """One exceeded quota, from ``google.rpc.QuotaFailure``."""

    #: What the quota applies to (e.g. a project or model).
    subject: str
    #: Human-readable description of the quota.
    description: str


class ImagegenError(Exception):
    """Base class of every error the SDK raises for a failed call.

    Attributes:
        code: The gRPC status code.
        message: The status message (developer-facing, English).
        reason: ``ErrorInfo.reason`` such as ``UPSTREAM_RATE_LIMITED`` (``""`` when absent).
        domain: ``ErrorInfo.domain`` (``"imagegen.dev"`` for the server's own errors).
        metadata: ``ErrorInfo.metadata`` (lowerCamel keys, string values).
        generation_id: The server's generation id (metadata ``generationId``), when known.
        request_id: Your request id (metadata ``requestId``), when you gave one.
        attempts: Upstream attempts the server made (metadata ``attempts``), when known.
        retry_after: Seconds to wait before retrying (``RetryInfo.retry_delay``), when given.
        status: The raw ``google.rpc.Status`` from the trailer, or ``None`` without details.
        details: Every unpacked detail message (ErrorInfo, RetryInfo, BadRequest, ...).
    """

    code: grpc.StatusCode
    message: str
    reason: str
    domain: str
    metadata: dict[str, str]
    retry_after: float | None
    status: status_pb2.Status | None
    details: tuple[Message, ...]

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode = grpc.StatusCode.UNKNOWN,
        reason: str = "",
        domain: str = "",
        metadata: dict[str, str] | None = None,
        retry_after: float | None = None,
        status: status_pb2.Status | None = None,
        details: Sequence[Message] = (),
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason
        self.domain = domain
        self.metadata = dict(metadata or {})
        self.retry_after = retry_after
        self.status = status
        self.details = tuple(details)

    @property
    def generation_id(self) -> str | None:
        """The server's generation id for the failed request, when the server reported it."""
        return self.metadata.get("generationId") or None

    @property
    def request_id(self) -> str | None:
        """The caller's request id, when one was given and the server echoed it."""
        return self.metadata.get("requestId") or None

    @property
    def attempts(self) -> int | None:
        """How many upstream attempts the server made, when it reported it."""
        value = self.metadata.get("attempts")
        try:
            return int(value) if value is not None else None
        except ValueError:
            return None

    def find_detail(self, kind: type[_M]) -> _M | None:
        """Return the first detail message of type ``kind`` (e.g. ``error_details_pb2.QuotaFailure``)."""
        for detail in self.details:
            if isinstance(detail, kind):
                return detail
        return None

    def __str__(self) -> str:
        text = f"{self.code.name}: {self.message}" if self.message else self.code.name
        extras = []
        if self.reason:
            extras.append(self.reason)
        if self.retry_after is not None:
            extras.append(f"retry after {self.retry_after:.1f} s")
        if self.generation_id:
            extras.append(f"generation {self.generation_id}")
        return f"{text} ({', '.join(extras)})" if extras else text

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code.name}, reason={self.reason!r}, message={self.message!r})"


#: The seed project's name for :class:`ImagegenError`.
GenerationError = ImagegenError


class InvalidRequestError(ImagegenError):
    """The request was invalid (INVALID_ARGUMENT): a field is wrong, or the upstream rejected it.

    ``field_violations`` lists the offending fields from ``google.rpc.BadRequest``.
    Reasons: ``INVALID_REQUEST`` (our validation), ``UPSTREAM_INVALID_ARGUMENT``,
    ``MISSING_THOUGHT_SIGNATURE``.
    """

    @property
    def field_violations(self) -> list[FieldViolation]:
        """The invalid fields, in the order the server listed them."""
        bad = self.find_detail(error_details_pb2.BadRequest)
        if bad is None:
            return []
        return [FieldViolation(v.field, v.description, v.reason) for v in bad.field_violations]

    def __str__(self) -> str:
        base = super().__str__()
        fields = ", ".join(v.field for v in self.field_violations if v.field)
        return f"{base} [fields: {fields}]" if fields else base


class ContentPolicyError(ImagegenError):
    """The prompt or the output was blocked by the model's safety filters (reason ``CONTENT_BLOCKED``)."""

    @property
    def block_reason(self) -> str | None:
        """The upstream block reason, e.g. ``SAFETY`` or ``PROHIBITED_CONTENT``."""
        return self.metadata.get("blockReason") or None

    @property
    def block_side(self) -> str | None:
        """``"prompt"`` when the input was blocked, ``"output"`` when the generated image was."""
        return self.metadata.get("blockSide") or None

    @property
    def finish_reason(self) -> str | None:
        """The upstream finish reason, when the output was blocked."""
        return self.metadata.get("finishReason") or None


#: The seed project's other name for :class:`ContentPolicyError`.
ContentBlockedError = ContentPolicyError


class NoImageError(ImagegenError):
    """The model answered without an image, even after a retry (reason ``NO_IMAGE``)."""

    @property
    def model_text(self) -> str | None:
        """The text the model answered with instead of an image, if any."""
        return self.metadata.get("modelText") or None

    @property
    def finish_reason(self) -> str | None:
        """The upstream finish reason."""
        return self.metadata.get("finishReason") or None


class FailedPreconditionError(ImagegenError):
    """The upstream refused the request in its current state (FAILED_PRECONDITION), e.g. billing or region."""


class RateLimitError(ImagegenError):
    """Rate limited (RESOURCE_EXHAUSTED): upstream 429s outlasted the server's retries, or it is overloaded.

    :attr:`retry_after` carries the server's suggested wait from ``RetryInfo``.
    """

    @property
    def quota_violations(self) -> list[QuotaViolation]:
        """The exceeded quotas from ``google.rpc.QuotaFailure``."""
        failure = self.find_detail(error_details_pb2.QuotaFailure)
        if failure is None:
            return []
        return [QuotaViolation(v.subject, v.description) for v in failure.violations]


class QuotaExhaustedError(RateLimitError):
    """A per-day (or other long-window) quota is used up (reason ``UPSTREAM_QUOTA_EXHAUSTED``): do not retry soon."""


class UnavailableError(ImagegenError):
    """The server or the upstream is unavailable (UNAVAILABLE); retrying later is safe."""


class DeadlineExceededError(ImagegenError):
    """The call's deadline expired, or the upstream timed out (DEADLINE_EXCEEDED)."""


class NotFoundError(ImagegenError):
    """A named resource does not exist (NOT_FOUND), e.g. an unknown model (reason ``MODEL_NOT_FOUND``)."""

    @property
    def resource_name(self) -> str | None:
        """The missing resource's name (``ResourceInfo`` or metadata ``model``)."""
        info = self.find_detail(error_details_pb2.ResourceInfo)
        if info is not None and info.resource_name:
            return info.resource_name
        return self.metadata.get("model") or None


class AuthenticationError(ImagegenError):
    """The caller is not authenticated to the gateway (UNAUTHENTICATED)."""


class PermissionDeniedError(ImagegenError):
    """The caller may not make this call (PERMISSION_DENIED)."""


class InternalError(ImagegenError):
    """The server failed unexpectedly (INTERNAL, UNKNOWN or DATA_LOSS)."""


class UpstreamAuthError(InternalError):
    """The server's own Gemini API key is missing or invalid (reason ``UPSTREAM_AUTH``): an operator problem."""


class UnimplementedError(ImagegenError):
    """The server does not implement this method (UNIMPLEMENTED)."""


class RequestCancelledError(ImagegenError):
    """The call was cancelled (CANCELLED)."""


#: ErrorReason -> class; every value but UNSPECIFIED has one (tests/unit/test_error_reasons.py).
_CLASS_BY_REASON: dict[ErrorReason.ValueType, type[ImagegenError]] = {
    ErrorReason.ERROR_REASON_INVALID_REQUEST: InvalidRequestError,
    ErrorReason.ERROR_REASON_UPSTREAM_INVALID_ARGUMENT: InvalidRequestError,
    ErrorReason.ERROR_REASON_MISSING_THOUGHT_SIGNATURE: InvalidRequestError,
    ErrorReason.ERROR_REASON_UNDECODABLE_REQUEST: InvalidRequestError,
    ErrorReason.ERROR_REASON_REQUEST_TOO_LARGE: InvalidRequestError,
    ErrorReason.ERROR_REASON_UPSTREAM_FAILED_PRECONDITION: FailedPreconditionError,
    ErrorReason.ERROR_REASON_CONTENT_BLOCKED: ContentPolicyError,
    ErrorReason.ERROR_REASON_NO_IMAGE: NoImageError,
    ErrorReason.ERROR_REASON_UPSTREAM_RATE_LIMITED: RateLimitError,
    ErrorReason.ERROR_REASON_OVERLOADED: RateLimitError,
    ErrorReason.ERROR_REASON_CALLER_QUOTA_EXCEEDED: RateLimitError,
    ErrorReason.ERROR_REASON_MEMORY_OVERLOADED: RateLimitError,
    ErrorReason.ERROR_REASON_UPSTREAM_QUOTA_EXHAUSTED: QuotaExhaustedError,
    ErrorReason.ERROR_REASON_UPSTREAM_UNAVAILABLE: UnavailableError,
    ErrorReason.ERROR_REASON_SHUTTING_DOWN: UnavailableError,
    ErrorReason.ERROR_REASON_DUPLICATE_CANCELLED: UnavailableError,
    ErrorReason.ERROR_REASON_CIRCUIT_OPEN: UnavailableError,
    ErrorReason.ERROR_REASON_SHARED_STATE_UNAVAILABLE: UnavailableError,
    ErrorReason.ERROR_REASON_UPSTREAM_TIMEOUT: DeadlineExceededError,
    ErrorReason.ERROR_REASON_DEADLINE_EXCEEDED: DeadlineExceededError,
    ErrorReason.ERROR_REASON_MAX_DURATION_EXCEEDED: DeadlineExceededError,
    ErrorReason.ERROR_REASON_MODEL_NOT_FOUND: NotFoundError,
    ErrorReason.ERROR_REASON_CREDENTIALS_MISSING: AuthenticationError,
    ErrorReason.ERROR_REASON_CREDENTIALS_INVALID: AuthenticationError,
    ErrorReason.ERROR_REASON_METHOD_NOT_ALLOWED: PermissionDeniedError,
    ErrorReason.ERROR_REASON_UPSTREAM_AUTH: UpstreamAuthError,
    ErrorReason.ERROR_REASON_UPSTREAM_MALFORMED: InternalError,
    ErrorReason.ERROR_REASON_INTERNAL: InternalError,
}
_BY_REASON: dict[str, type[ImagegenError]] = {reason_name(r): cls for r, cls in _CLASS_BY_REASON.items()}

_BY_CODE: dict[grpc.StatusCode, type[ImagegenError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequestError,
    grpc.StatusCode.OUT_OF_RANGE: InvalidRequestError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: RateLimitError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.UNAUTHENTICATED: AuthenticationError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.INTERNAL: InternalError,
    grpc.StatusCode.UNKNOWN: InternalError,
    grpc.StatusCode.DATA_LOSS: InternalError,
    grpc.StatusCode.UNIMPLEMENTED: UnimplementedError,
    grpc.StatusCode.CANCELLED: RequestCancelledError,
}

_DETAIL_TYPES: tuple[type[Message], ...] = (
    error_details_pb2.ErrorInfo,
    error_details_pb2.RetryInfo,
    error_details_pb2.BadRequest,
    error_details_pb2.QuotaFailure,
    error_details_pb2.PreconditionFailure,
    error_details_pb2.ResourceInfo,
    error_details_pb2.RequestInfo,
    error_details_pb2.Help,
    error_details_pb2.LocalizedMessage,
    error_details_pb2.DebugInfo,
)


def _unpack(any_detail: any_pb2.Any) -> Message | None:
    for kind in _DETAIL_TYPES:
        if any_detail.Is(cast(Descriptor, kind.DESCRIPTOR)):
            message = kind()
            if any_detail.Unpack(message):
                return message
    return None


def _rich_status(err: grpc.RpcError) -> status_pb2.Status | None:
    """The ``google.rpc.Status`` in the ``grpc-status-details-bin`` trailer, if any.

    Uses ``grpc_status.rpc_status.from_call`` (which also works on ``grpc.aio.AioRpcError``);
    when that rejects a status whose code or message disagree with the call's, the
    trailer is still decoded so that its details are not lost.
    """
    try:
        status = rpc_status.from_call(cast(grpc.Call, err))
    except ValueError:
        status = None
    except (AttributeError, TypeError, DecodeError):
        return None
    if status is not None:
        return cast(status_pb2.Status, status)
    try:
        trailing = cast(Iterable[tuple[str, str | bytes]], err.trailing_metadata() or ())
    except Exception:
        return None
    for key, value in trailing:
        if key == _DETAILS_KEY and isinstance(value, bytes):
            with contextlib.suppress(DecodeError):
                return status_pb2.Status.FromString(value)
    return None


def from_grpc_error(err: grpc.RpcError) -> ImagegenError:
    """Rebuild the typed exception for a failed call from its status code and rich details.

    Works on the errors of both the sync channel (``grpc.RpcError`` that is also a
    ``grpc.Call``) and grpc.aio (``grpc.aio.AioRpcError``). The class is chosen by
    ``ErrorInfo.reason`` (for the ``imagegen.dev`` domain, or no domain), then by code.
    """
    try:
        code = err.code()
        message = err.details() or ""
    except Exception:
        code, message = grpc.StatusCode.UNKNOWN, str(err)
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    status = _rich_status(err)
    details: list[Message] = []
    if status is not None:
        for any_detail in status.details:
            unpacked = _unpack(any_detail)
            if unpacked is not None:
                details.append(unpacked)
        message = message or status.message

    reason = domain = ""
    metadata: dict[str, str] = {}
    retry_after: float | None = None
    for detail in details:
        if isinstance(detail, error_details_pb2.ErrorInfo) and not reason:
            reason, domain, metadata = detail.reason, detail.domain, dict(detail.metadata)
        elif isinstance(detail, error_details_pb2.RetryInfo) and retry_after is None:
            retry_after = max(0.0, detail.retry_delay.ToTimedelta().total_seconds())

    cls: type[ImagegenError] | None = None
    if reason and domain in (DOMAIN, ""):
        cls = _BY_REASON.get(reason)
    if cls is None:
        if code is grpc.StatusCode.RESOURCE_EXHAUSTED and not reason and "larger than max" in message:
            # grpc core's own message-size limit, not a rate limit.
            cls = InvalidRequestError
        else:
            cls = _BY_CODE.get(code, ImagegenError)
    return cls(
        message,
        code=code,
        reason=reason,
        domain=domain,
        metadata=metadata,
        retry_after=retry_after,
        status=status,
        details=details,
    )
