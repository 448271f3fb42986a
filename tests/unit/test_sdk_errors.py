"""Every exception class, rebuilt from a real gRPC status with google.rpc details sent by a fake server."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2

import imagegen
from imagegen.errors import from_grpc_error
from imagegen.testing import FakeError, FakeServer

S = grpc.StatusCode


# (error the server sends, class the SDK must raise, exit code the CLI maps it to)
CASES: list[tuple[FakeError, type[imagegen.ImagegenError]]] = [
    (
        FakeError(
            S.INVALID_ARGUMENT,
            "invalid request",
            "INVALID_REQUEST",
            {"generationId": "g1", "requestId": "r1", "attempts": "0"},
            field_violations=[("options.width", "too small"), ("prompt", "required")],
        ),
        imagegen.InvalidRequestError,
    ),
    (FakeError(S.INVALID_ARGUMENT, "upstream 400", "UPSTREAM_INVALID_ARGUMENT"), imagegen.InvalidRequestError),
    (
        FakeError(
            S.INVALID_ARGUMENT,
            "missing signature",
            "MISSING_THOUGHT_SIGNATURE",
            field_violations=[("history[1].parts[0].thought_signature", "required")],
        ),
        imagegen.InvalidRequestError,
    ),
    (
        FakeError(
            S.INVALID_ARGUMENT,
            "blocked",
            "CONTENT_BLOCKED",
            {"blockReason": "SAFETY", "blockSide": "prompt"},
        ),
        imagegen.ContentPolicyError,
    ),
    (
        FakeError(S.FAILED_PRECONDITION, "no image", "NO_IMAGE", {"modelText": "I cannot", "finishReason": "STOP"}),
        imagegen.NoImageError,
    ),
    (
        FakeError(S.FAILED_PRECONDITION, "region", "UPSTREAM_FAILED_PRECONDITION"),
        imagegen.FailedPreconditionError,
    ),
    (FakeError.rate_limited(retry_after=4.0), imagegen.RateLimitError),
    (FakeError(S.RESOURCE_EXHAUSTED, "busy", "OVERLOADED", retry_after=0.5), imagegen.RateLimitError),
    (
        FakeError(
            S.RESOURCE_EXHAUSTED,
            "daily quota",
            "UPSTREAM_QUOTA_EXHAUSTED",
            quota_violations=[("project", "requests per day")],
        ),
        imagegen.QuotaExhaustedError,
    ),
    (FakeError.unavailable("UPSTREAM_UNAVAILABLE", retry_after=2.0), imagegen.UnavailableError),
    (FakeError.unavailable("SHUTTING_DOWN"), imagegen.UnavailableError),
    (FakeError(S.DEADLINE_EXCEEDED, "upstream timeout", "UPSTREAM_TIMEOUT"), imagegen.DeadlineExceededError),
    (FakeError(S.DEADLINE_EXCEEDED, "deadline", "DEADLINE_EXCEEDED"), imagegen.DeadlineExceededError),
    (
        FakeError(
            S.NOT_FOUND,
            "no such model",
            "MODEL_NOT_FOUND",
            {"model": "gemini-9"},
            extra_details=[error_details_pb2.ResourceInfo(resource_type="model", resource_name="gemini-9")],
        ),
        imagegen.NotFoundError,
    ),
    (FakeError(S.INTERNAL, "bad key", "UPSTREAM_AUTH"), imagegen.UpstreamAuthError),
    (FakeError(S.INTERNAL, "garbled", "UPSTREAM_MALFORMED"), imagegen.InternalError),
    (FakeError(S.INTERNAL, "boom", "INTERNAL", {"requestId": "abc"}), imagegen.InternalError),
    (FakeError(S.UNAUTHENTICATED, "who are you", "UNAUTHENTICATED"), imagegen.AuthenticationError),
    (FakeError(S.PERMISSION_DENIED, "not you", "PERMISSION_DENIED"), imagegen.PermissionDeniedError),
    (FakeError(S.UNIMPLEMENTED, "later", bare=True), imagegen.UnimplementedError),
    (FakeError(S.CANCELLED, "cancelled", bare=True), imagegen.RequestCancelledError),
    (FakeError(S.ALREADY_EXISTS, "exists", bare=True), imagegen.ImagegenError),
]


@pytest.mark.parametrize(("fake", "expected"), CASES, ids=lambda v: getattr(v, "reason", "") or str(v))
def test_each_error_class_sync(
    server: FakeServer, client: imagegen.Client, fake: FakeError, expected: type[imagegen.ImagegenError]
) -> None:
    server.servicer.push(fake)
    with pytest.raises(imagegen.ImagegenError) as info:
        client.generate("a fox")
    error = info.value
    assert type(error) is expected
    assert isinstance(error, imagegen.GenerationError)
    assert error.code is fake.code
    assert error.message == fake.message
    assert error.reason == fake.reason
    assert error.metadata == dict(fake.metadata) if fake.reason else error.metadata == {}
    assert error.domain == ("imagegen.dev" if fake.reason else "")
    assert (error.status is None) == fake.bare
    assert error.retry_after == fake.retry_after
    assert isinstance(error.__cause__, grpc.RpcError)


@pytest.mark.parametrize(("fake", "expected"), CASES[::3], ids=lambda v: getattr(v, "reason", "") or str(v))
async def test_each_error_class_async(
    server: FakeServer, fake: FakeError, expected: type[imagegen.ImagegenError]
) -> None:
    server.servicer.push(fake)
    async with imagegen.AsyncClient(server.target, timeout=10) as client:
        with pytest.raises(imagegen.ImagegenError) as info:
            await client.generate("a fox")
    assert type(info.value) is expected
    assert info.value.reason == fake.reason
    assert info.value.retry_after == fake.retry_after


def test_invalid_request_details(server: FakeServer, client: imagegen.Client) -> None:
    server.servicer.push(CASES[0][0])
    with pytest.raises(imagegen.InvalidRequestError) as info:
        client.generate("x")
    error = info.value
    assert error.field_violations == [
        imagegen.FieldViolation("options.width", "too small"),
        imagegen.FieldViolation("prompt", "required"),
    ]
    assert error.generation_id == "g1" and error.request_id == "r1" and error.attempts == 0
    assert "options.width" in str(error) and "INVALID_REQUEST" in str(error)


def test_content_blocked_details(server: FakeServer, client: imagegen.Client) -> None:
    server.servicer.push(
        FakeError(
            S.INVALID_ARGUMENT,
            "output blocked",
            "CONTENT_BLOCKED",
            {"blockReason": "IMAGE_SAFETY", "blockSide": "output", "finishReason": "IMAGE_SAFETY"},
        )
    )
    with pytest.raises(imagegen.ContentBlockedError) as info:
        client.generate("x")
    assert info.value.block_side == "output"
    assert info.value.block_reason == "IMAGE_SAFETY"
    assert info.value.finish_reason == "IMAGE_SAFETY"
    assert not isinstance(info.value, imagegen.InvalidRequestError)


def test_rate_limit_details(server: FakeServer, client: imagegen.Client) -> None:
    server.servicer.push(FakeError.rate_limited(retry_after=4.5))
    with pytest.raises(imagegen.RateLimitError) as info:
        client.generate("x")
    error = info.value
    assert error.retry_after == pytest.approx(4.5)
    assert error.quota_violations == [imagegen.QuotaViolation("models/gemini-3.1-flash-image", "requests per minute")]
    assert error.generation_id == "gen-err"
    assert "retry after 4.5 s" in str(error)
    assert error.find_detail(error_details_pb2.RetryInfo) is not None
    assert error.find_detail(error_details_pb2.DebugInfo) is None


def test_quota_exhausted_is_a_rate_limit(server: FakeServer, client: imagegen.Client) -> None:
    server.servicer.push(CASES[8][0])
    with pytest.raises(imagegen.RateLimitError) as info:
        client.generate("x")
    assert isinstance(info.value, imagegen.QuotaExhaustedError)
    assert info.value.quota_violations[0].description == "requests per day"


def test_no_image_and_not_found_details(server: FakeServer, client: imagegen.Client) -> None:
    server.servicer.push(CASES[4][0], CASES[13][0])
    with pytest.raises(imagegen.NoImageError) as no_image:
        client.generate("x")
    assert no_image.value.model_text == "I cannot" and no_image.value.finish_reason == "STOP"
    with pytest.raises(imagegen.NotFoundError) as not_found:
        client.generate("x")
    assert not_found.value.resource_name == "gemini-9"


def test_upstream_auth_is_internal(server: FakeServer, client: imagegen.Client) -> None:
    server.servicer.push(FakeError(S.INTERNAL, "bad key", "UPSTREAM_AUTH"))
    with pytest.raises(imagegen.InternalError) as info:
        client.generate("x")
    assert isinstance(info.value, imagegen.UpstreamAuthError)


def test_foreign_domain_falls_back_to_code(server: FakeServer, client: imagegen.Client) -> None:
    server.servicer.push(FakeError(S.UNAVAILABLE, "proxy", "CONTENT_BLOCKED", domain="proxy.example.com"))
    with pytest.raises(imagegen.UnavailableError) as info:
        client.generate("x")
    assert info.value.domain == "proxy.example.com" and info.value.reason == "CONTENT_BLOCKED"


def test_unknown_reason_falls_back_to_code(server: FakeServer, client: imagegen.Client) -> None:
    server.servicer.push(FakeError(S.NOT_FOUND, "gone", "SOMETHING_NEW"))
    with pytest.raises(imagegen.NotFoundError):
        client.generate("x")


def test_connection_refused_is_unavailable() -> None:
    with imagegen.Client("127.0.0.1:1", timeout=5) as client, pytest.raises(imagegen.UnavailableError) as info:
        client.generate("x")
    assert info.value.status is None and info.value.reason == ""


def test_message_too_large_is_invalid_request() -> None:
    with (
        FakeServer(max_message_bytes=1024 * 1024) as small,
        imagegen.Client(small.target, timeout=10) as client,
        pytest.raises(imagegen.InvalidRequestError) as info,
    ):
        client.generate("x", input_images=[b"\x00" * (2 * 1024 * 1024)])
    assert info.value.code is S.RESOURCE_EXHAUSTED and not info.value.reason


class _FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str, trailing: tuple[tuple[str, bytes], ...]) -> None:
        self._code, self._details, self._trailing = code, details, trailing

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:  # type: ignore[override]
        return self._trailing


def test_mismatched_status_still_yields_details() -> None:
    status = FakeError.rate_limited(retry_after=3.0).to_status()
    err = _FakeRpcError(
        S.RESOURCE_EXHAUSTED, "a different message", (("grpc-status-details-bin", status.SerializeToString()),)
    )
    error = from_grpc_error(err)
    assert isinstance(error, imagegen.RateLimitError)
    assert error.retry_after == 3.0
    assert error.message == "a different message"


def test_garbage_details_are_ignored() -> None:
    err = _FakeRpcError(S.INTERNAL, "x", (("grpc-status-details-bin", b"\xff\xff not a proto"),))
    error = from_grpc_error(err)
    assert type(error) is imagegen.InternalError and error.status is None


def test_exception_is_constructible_by_users() -> None:
    error = imagegen.RateLimitError("slow down", code=S.RESOURCE_EXHAUSTED, retry_after=1.0)
    assert error.retry_after == 1.0 and error.generation_id is None and error.attempts is None
    assert repr(error).startswith("RateLimitError(")
    assert str(imagegen.ImagegenError("")) == "UNKNOWN"
