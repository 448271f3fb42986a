"""The protobuf messages a generation produces: progress events and the finished ``Generation``.

Pure builders from the pipeline's typed values (``UpstreamRequest``,
``UpstreamResult``, ``UpstreamError``, ``RetryDecision``) to the messages of
``imagegen/v1``, plus the table that wraps an event into a stream response.
Nothing here does I/O or keeps state; the pipeline decides when each is sent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final, TypeAlias, TypeVar

from imagegen.v1 import image_generation_service_pb2 as pb
from imagegen.v1 import image_pb2
from imagegen_server import errors
from imagegen_server.gemini.errors import UpstreamError
from imagegen_server.gemini.types import InlineImage, UpstreamRequest, UpstreamResult
from imagegen_server.imagetypes import probe_image
from imagegen_server.retry import CIRCUIT_OPEN, RetryDecision

#: Everything the pipeline yields: progress events, then the finished Generation.
Event: TypeAlias = (
    pb.Accepted
    | pb.AttemptStarted
    | pb.AttemptFailed
    | pb.ModelFallback
    | pb.Heartbeat
    | pb.Preview
    | image_pb2.Generation
)

#: Event type -> its field in the ``oneof event`` of both stream responses.
_STREAM_FIELD: Final[Mapping[type, str]] = {
    pb.Accepted: "accepted",
    pb.AttemptStarted: "attempt_started",
    pb.AttemptFailed: "attempt_failed",
    pb.ModelFallback: "model_fallback",
    pb.Heartbeat: "heartbeat",
    pb.Preview: "preview",
    image_pb2.Generation: "completed",
}

StreamMessage = TypeVar("StreamMessage", pb.GenerateStreamResponse, pb.RefineStreamResponse)


def stream_message(event: Event, wrap: type[StreamMessage]) -> StreamMessage:
    """``event`` as a GenerateStream/RefineStream response."""
    message = wrap()
    getattr(message, _STREAM_FIELD[type(event)]).CopyFrom(event)
    return message


def accepted(
    generation_id: str,
    request: UpstreamRequest,
    max_attempts: int,
    *,
    requested_model: str = "",
    fallback_reason: image_pb2.FallbackReason.ValueType = image_pb2.FALLBACK_REASON_UNSPECIFIED,
    fallback_models: Sequence[str] = (),
) -> pb.Accepted:
    """The first event: what will be asked of which model (defaults and seed filled in).

    ``request`` is for the model the request starts on; ``requested_model``
    (default: the same) differs when it starts on a fallback model.
    """
    return pb.Accepted(
        generation_id=generation_id,
        seed=request.seed or 0,  # translation always sets it
        model=request.model,
        requested_model=requested_model or request.model,
        fallback_reason=fallback_reason,
        fallback_models=fallback_models,
        max_attempts=max_attempts,
        aspect_ratio=request.aspect_ratio or "",
        image_size=request.image_size or "",
    )


def model_fallback(from_model: str, to_model: str, reason: image_pb2.FallbackReason.ValueType) -> pb.ModelFallback:
    """The request moves to ``to_model`` (sent before that model's first attempt)."""
    return pb.ModelFallback(from_model=from_model, to_model=to_model, reason=reason)


def stop_reason(reason: str) -> pb.RetryStopReason.ValueType:
    """A retry loop stop reason (``"retry_budget"``) as the enum value (RETRY_STOP_REASON_RETRY_BUDGET)."""
    try:
        return pb.RetryStopReason.Value(f"RETRY_STOP_REASON_{reason.upper()}")
    except ValueError:
        return pb.RETRY_STOP_REASON_UNSPECIFIED


def attempt_started(attempt: int, max_attempts: int) -> pb.AttemptStarted:
    """Upstream attempt ``attempt`` (1-based) begins."""
    return pb.AttemptStarted(attempt=attempt, max_attempts=max_attempts)


def attempt_failed(attempt: int, error: UpstreamError, decision: RetryDecision) -> pb.AttemptFailed:
    """An attempt failed; code and reason are the ones the final status would carry."""
    code, reason = errors.upstream_status(error)
    return pb.AttemptFailed(
        attempt=attempt,
        code=code.value[0],
        reason=reason,
        message=error.message,
        # Zero when not retrying, except for an open circuit: then the time until its probe.
        retry_delay=errors.duration(decision.delay if decision.will_retry or decision.reason == CIRCUIT_OPEN else 0.0),
        will_retry=decision.will_retry,
        stop_reason=pb.RETRY_STOP_REASON_UNSPECIFIED if decision.will_retry else stop_reason(decision.reason),
    )


def heartbeat(elapsed: float) -> pb.Heartbeat:
    """Keeps a quiet stream alive; ``elapsed`` seconds since the request arrived."""
    return pb.Heartbeat(elapsed=errors.duration(elapsed))


def preview(image: InlineImage, index: int) -> pb.Preview:
    """Draft ``index`` (1-based within its attempt), with its pixel size when decodable."""
    try:
        _, width, height = probe_image(image.data, image.mime_type)
    except ValueError:  # the client already dropped undecodable drafts; be safe anyway
        width = height = 0
    return pb.Preview(
        image=image_pb2.Image(data=image.data, mime_type=image.mime_type, width=width, height=height), index=index
    )


def generation(
    request: UpstreamRequest,
    result: UpstreamResult,
    *,
    generation_id: str,
    request_id: str,
    attempts: int,
    elapsed: float,
    requested_model: str = "",
    fallback_reason: image_pb2.FallbackReason.ValueType = image_pb2.FALLBACK_REASON_UNSPECIFIED,
) -> image_pb2.Generation:
    """The finished Generation: ``result`` as answered to ``request`` (by a fallback model when ``fallback_reason``).

    The image's bytes are copied once, straight into the message (an ``Image``
    built first and passed in would be copied a second time).
    """
    message = image_pb2.Generation(
        generation_id=generation_id,
        seed=request.seed or 0,
        model=request.model,
        requested_model=requested_model or request.model,
        fallback_reason=fallback_reason,
        model_version=result.model_version,
        attempts=attempts,
        inference_time=errors.duration(elapsed),
        thought_signature=result.thought_signature or b"",
        text=result.text,
        finish_reason=finish_reason(result.finish_reason),
        usage=image_pb2.Usage(
            prompt_tokens=result.usage.prompt_tokens,
            output_tokens=result.usage.output_tokens,
            thoughts_tokens=result.usage.thoughts_tokens,
            total_tokens=result.usage.total_tokens,
        ),
        aspect_ratio=request.aspect_ratio or "",
        image_size=request.image_size or "",
        model_turn=model_turn(result, generation_id),
        request_id=request_id,
        response_id=result.response_id,
    )
    image = message.image
    image.data = result.image.data
    image.mime_type = result.image.mime_type
    image.width, image.height = result.width, result.height
    return message


def model_turn(result: UpstreamResult, generation_id: str) -> image_pb2.Turn:
    """The model turn to send back in a later Refine's history (signatures kept)."""
    turn = image_pb2.Turn(role=image_pb2.ROLE_MODEL)
    for part in result.parts:
        out = turn.parts.add(thought_signature=part.thought_signature or b"", thought=part.thought)
        if part.image is not None and part.image.data == result.image.data:
            # The final image: its bytes travel once, in Generation.image; the part
            # says whose (a Refine request brings them back in history_images).
            out.image_generation_id = generation_id
            out.image.mime_type = part.image.mime_type
            out.image.width, out.image.height = result.width, result.height
        elif part.image is not None:
            out.image.data = part.image.data
            out.image.mime_type = part.image.mime_type
        elif part.text is not None:
            out.text = part.text
    return turn


def finish_reason(name: str) -> image_pb2.FinishReason.ValueType:
    """Gemini's ``finishReason`` string as our enum (OTHER for names we do not know)."""
    try:
        return image_pb2.FinishReason.Value(f"FINISH_REASON_{name}")
    except ValueError:
        return image_pb2.FINISH_REASON_OTHER if name else image_pb2.FINISH_REASON_UNSPECIFIED
