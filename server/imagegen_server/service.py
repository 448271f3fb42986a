"""The ImageGenerationService servicer: RPC -> validation -> retry loop -> upstream.

All four generation RPCs share one code path, :meth:`Pipeline.events`: an async
generator of progress events ending in the finished ``Generation``. The
streaming RPCs forward every event; the unary RPCs are the same generator with
the events dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias, TypeVar

import grpc

from imagegen.v1 import image_generation_service_pb2 as pb
from imagegen.v1 import image_generation_service_pb2_grpc as pb_grpc
from imagegen.v1 import image_pb2
from imagegen_server import errors
from imagegen_server.config import ServerConfig
from imagegen_server.errors import ServiceError
from imagegen_server.gemini.errors import ErrorKind, UpstreamError
from imagegen_server.gemini.types import InlineImage, UpstreamRequest, UpstreamResult
from imagegen_server.idempotency import FingerprintMismatch, IdempotencyCache
from imagegen_server.imagetypes import probe_image
from imagegen_server.models import MODELS
from imagegen_server.observability import Metrics, bind_generation
from imagegen_server.retry import (
    MONOTONIC_CLOCK,
    Clock,
    RetryBudget,
    RetryDecision,
    RetryFailure,
    RetryPolicy,
    call_with_retries,
)
from imagegen_server.translation import choose_seed, to_upstream
from imagegen_server.validation import GenerationMessage, validate

log = logging.getLogger(__name__)

#: Shave this off the caller's deadline so our own DEADLINE_EXCEEDED/RetryInfo
#: status (with details) reaches the caller before gRPC's bare one.
DEADLINE_MARGIN = 0.05


class Upstream(Protocol):
    """The Gemini client as the pipeline sees it."""

    async def generate(
        self,
        request: UpstreamRequest,
        *,
        timeout: float | None = None,
        on_draft: Callable[[InlineImage], None] | None = None,
    ) -> UpstreamResult:
        """One upstream call; raises UpstreamError on failure."""
        ...


Event: TypeAlias = pb.Accepted | pb.AttemptStarted | pb.AttemptFailed | pb.Heartbeat | pb.Preview | image_pb2.Generation

_EVENT_FIELD: Mapping[type, str] = {
    pb.Accepted: "accepted",
    pb.AttemptStarted: "attempt_started",
    pb.AttemptFailed: "attempt_failed",
    pb.Heartbeat: "heartbeat",
    pb.Preview: "preview",
    image_pb2.Generation: "completed",
}

_ROLE = {"user": image_pb2.ROLE_USER, "model": image_pb2.ROLE_MODEL}


@dataclass(frozen=True, slots=True)
class _Done:
    """Queue sentinel: the upstream task finished (its result is on the task)."""


class _EventQueue:
    """Retry observer and draft sink that turns callbacks into queued events."""

    def __init__(self, metrics: Metrics | None) -> None:
        self.queue: asyncio.Queue[Event | _Done] = asyncio.Queue()
        self._drafts = 0
        self._metrics = metrics

    def attempt_started(self, attempt: int, max_attempts: int) -> None:
        self._drafts = 0
        self.queue.put_nowait(pb.AttemptStarted(attempt=attempt, max_attempts=max_attempts))

    def attempt_failed(self, attempt: int, error: UpstreamError, decision: RetryDecision) -> None:
        code, reason = errors.upstream_status(error)
        if self._metrics is not None:
            self._metrics.upstream_attempts.labels(error.kind.name).inc()
            if decision.will_retry:
                self._metrics.retry_wait_seconds.inc(decision.delay)
        self.queue.put_nowait(
            pb.AttemptFailed(
                attempt=attempt,
                code=code.value[0],
                reason=reason,
                message=error.message,
                retry_delay=errors.duration(decision.delay if decision.will_retry else 0.0),
                will_retry=decision.will_retry,
            )
        )

    def draft(self, image: InlineImage) -> None:
        self._drafts += 1
        try:
            _, width, height = probe_image(image.data, image.mime_type)
        except ValueError:  # the client already dropped undecodable drafts; be safe anyway
            width = height = 0
        preview = image_pb2.Image(data=image.data, mime_type=image.mime_type, width=width, height=height)
        self.queue.put_nowait(pb.Preview(image=preview, index=self._drafts))


class Pipeline:
    """Runs one generation request end to end; shared by all RPCs.

    Holds the process-wide pieces (upstream client, retry budget, concurrency
    limit, idempotency cache); everything per request lives in :meth:`events`.
    """

    def __init__(
        self,
        config: ServerConfig,
        upstream: Upstream,
        *,
        clock: Clock = MONOTONIC_CLOCK,
        metrics: Metrics | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._config = config
        #: Draws the seed of requests that bring none.
        self._rng = rng or random.SystemRandom()
        self._metrics = metrics
        self._upstream = upstream
        self._clock = clock
        self._policy = RetryPolicy(
            max_attempts=config.max_attempts,
            initial_backoff=config.initial_backoff,
            max_backoff=config.max_backoff,
            max_upstream_delay=config.max_upstream_delay,
            attempt_timeout=config.attempt_timeout,
        )
        self._budget = RetryBudget(config.retry_budget_tokens, config.retry_budget_ratio)
        self._slots = asyncio.Semaphore(config.max_concurrency)
        self._cache: IdempotencyCache[image_pb2.Generation] = IdempotencyCache(
            config.idempotency_ttl, config.idempotency_max_entries, clock.now
        )
        self.draining = False

    async def events(
        self,
        request: GenerationMessage,
        *,
        method: str,
        history: Sequence[image_pb2.Turn] | None,
        time_remaining: float | None,
        previews: bool,
    ) -> AsyncIterator[Event]:
        """Validate, deduplicate, call upstream with retries; yield progress, then the Generation."""
        meta: dict[str, str] = {"requestId": request.options.request_id}
        if self.draining:
            raise errors.shutting_down(meta)
        start = self._clock.now()
        deadline = None if time_remaining is None else start + time_remaining - DEADLINE_MARGIN
        validated = validate(request, self._config, history=history)
        upstream = to_upstream(validated, self._config, seed=choose_seed(validated.seed, self._rng), previews=previews)
        generation_id = uuid.uuid4().hex
        meta["generationId"] = generation_id
        bind_generation(generation_id)

        key = validated.request_id
        if key:
            fingerprint = hashlib.sha256(method.encode() + request.SerializeToString(deterministic=True)).digest()
            try:
                owner, shared = self._cache.claim(f"{method}:{key}", fingerprint)
            except FingerprintMismatch:
                raise errors.invalid_request(
                    [errors.FieldViolation("options.request_id", "already used for a different request")], meta
                ) from None
            if not owner:
                # A duplicate: share the first request's result, no second upstream call.
                async for event in self._follow(shared, start):
                    yield event
                return
            try:
                async for event in self._generate(upstream, validated.request_id, generation_id, meta, start, deadline):
                    if isinstance(event, image_pb2.Generation):
                        self._cache.resolve(f"{method}:{key}", event)
                    yield event
            except BaseException as exc:
                self._cache.fail(f"{method}:{key}", _for_followers(exc, meta))
                raise
            return
        async for event in self._generate(upstream, validated.request_id, generation_id, meta, start, deadline):
            yield event

    async def _follow(self, shared: asyncio.Future[image_pb2.Generation], start: float) -> AsyncIterator[Event]:
        """Wait for another request's result, with heartbeats so a stream stays alive."""
        while True:
            try:
                async with asyncio.timeout(self._config.heartbeat_interval):
                    # Shielded: one duplicate hanging up must not cancel the owner's future.
                    generation = await asyncio.shield(shared)
            except TimeoutError:
                yield pb.Heartbeat(elapsed=errors.duration(self._clock.now() - start))
                continue
            yield generation
            return

    async def _generate(
        self,
        upstream: UpstreamRequest,
        request_id: str,
        generation_id: str,
        meta: dict[str, str],
        start: float,
        deadline: float | None,
    ) -> AsyncIterator[Event]:
        await self._acquire_slot(deadline, meta)
        try:
            yield pb.Accepted(
                generation_id=generation_id,
                seed=upstream.seed or 0,  # translation always sets it
                model=upstream.model,
                max_attempts=self._policy.max_attempts,
                aspect_ratio=upstream.aspect_ratio or "",
                image_size=upstream.image_size or "",
            )
            sink = _EventQueue(self._metrics)
            on_draft = sink.draft if upstream.include_thoughts else None

            async def attempt(timeout: float | None) -> UpstreamResult:
                return await self._upstream.generate(upstream, timeout=timeout, on_draft=on_draft)

            task = asyncio.create_task(
                call_with_retries(
                    attempt,
                    policy=self._policy,
                    budget=self._budget,
                    deadline=deadline,
                    observer=sink,
                    clock=self._clock,
                )
            )
            task.add_done_callback(lambda _: sink.queue.put_nowait(_Done()))
            try:
                async for event in self._progress(sink, start):
                    yield event
                try:
                    outcome = task.result()
                except RetryFailure as failure:
                    raise self._final_error(failure, generation_id, deadline, meta) from None
            finally:
                if not task.done():
                    # The caller hung up or the deadline hit: abort the upstream HTTP request now.
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
                elif not task.cancelled():
                    # Finished while the caller was leaving: read its outcome so
                    # asyncio does not log "Task exception was never retrieved".
                    task.exception()
            elapsed = self._clock.now() - start
            if self._metrics is not None:
                self._metrics.upstream_attempts.labels("ok").inc()
            log.info(
                "generation %s done: model=%s attempts=%d %.2fs",
                generation_id,
                upstream.model,
                outcome.attempts,
                elapsed,
            )
            yield _generation(upstream, request_id, outcome.value, generation_id, outcome.attempts, elapsed)
        finally:
            self._slots.release()

    async def _progress(self, sink: _EventQueue, start: float) -> AsyncIterator[Event]:
        """Forward the retry loop's events until it finishes, with heartbeats while quiet."""
        while True:
            try:
                async with asyncio.timeout(self._config.heartbeat_interval):
                    item = await sink.queue.get()
            except TimeoutError:
                yield pb.Heartbeat(elapsed=errors.duration(self._clock.now() - start))
                continue
            if isinstance(item, _Done):
                return
            yield item

    def _final_error(
        self, failure: RetryFailure, generation_id: str, deadline: float | None, meta: Mapping[str, str]
    ) -> ServiceError:
        """The status for a request whose retry loop gave up."""
        log.info(
            "generation %s failed after %d attempt(s): %s (%s)",
            generation_id,
            failure.attempts,
            failure.error.kind.name,
            failure.stop_reason,
        )
        if (
            failure.error.kind is ErrorKind.DEADLINE_EXCEEDED
            and deadline is not None
            and self._clock.now() >= deadline - DEADLINE_MARGIN
        ):
            # Upstream was still working when the caller's time ran out.
            return errors.deadline_exceeded({**meta, "attempts": str(failure.attempts)})
        return errors.from_upstream(
            failure.error, attempts=failure.attempts, retry_delay=failure.retry_delay, metadata=meta
        )

    async def _acquire_slot(self, deadline: float | None, meta: Mapping[str, str]) -> None:
        # One slot per request, held across its retries and waits: the limit
        # bounds concurrent requests to upstream, not just concurrent sockets.
        wait = self._config.queue_timeout
        if deadline is not None:
            wait = min(wait, max(deadline - self._clock.now(), 0.0))
        try:
            async with asyncio.timeout(wait):
                await self._slots.acquire()
        except TimeoutError:
            raise errors.overloaded(max(self._config.queue_timeout, 1.0), meta) from None


def _for_followers(exc: BaseException, meta: Mapping[str, str]) -> BaseException:
    """What duplicates waiting on a failed owner should see."""
    if isinstance(exc, ServiceError):
        return exc
    # The first caller hung up: its duplicates did nothing wrong, they may retry now.
    return errors.duplicate_cancelled(meta)


def _finish_reason(name: str) -> image_pb2.FinishReason.ValueType:
    try:
        return image_pb2.FinishReason.Value(f"FINISH_REASON_{name}")
    except ValueError:
        return image_pb2.FINISH_REASON_OTHER if name else image_pb2.FINISH_REASON_UNSPECIFIED


def _generation(
    upstream: UpstreamRequest,
    request_id: str,
    result: UpstreamResult,
    generation_id: str,
    attempts: int,
    elapsed: float,
) -> image_pb2.Generation:
    turn = image_pb2.Turn(role=image_pb2.ROLE_MODEL)
    for part in result.parts:
        out = turn.parts.add(thought_signature=part.thought_signature or b"", thought=part.thought)
        if part.image is not None and part.image.data == result.image.data:
            # The final image: its bytes travel once, in Generation.image (see the proto).
            out.image.mime_type = part.image.mime_type
            out.image.width, out.image.height = result.width, result.height
        elif part.image is not None:
            out.image.data = part.image.data
            out.image.mime_type = part.image.mime_type
        elif part.text is not None:
            out.text = part.text
    return image_pb2.Generation(
        image=image_pb2.Image(
            data=result.image.data, mime_type=result.image.mime_type, width=result.width, height=result.height
        ),
        generation_id=generation_id,
        seed=upstream.seed or 0,
        model=upstream.model,
        model_version=result.model_version,
        attempts=attempts,
        inference_time=errors.duration(elapsed),
        thought_signature=result.thought_signature or b"",
        text=result.text,
        finish_reason=_finish_reason(result.finish_reason),
        usage=image_pb2.Usage(
            prompt_tokens=result.usage.prompt_tokens,
            output_tokens=result.usage.output_tokens,
            thoughts_tokens=result.usage.thoughts_tokens,
            total_tokens=result.usage.total_tokens,
        ),
        aspect_ratio=upstream.aspect_ratio or "",
        image_size=upstream.image_size or "",
        model_turn=turn,
        request_id=request_id,
        response_id=result.response_id,
    )


Ctx: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
_Msg = TypeVar("_Msg", pb.GenerateStreamResponse, pb.RefineStreamResponse)


class ImageGenerationServicer(pb_grpc.ImageGenerationServiceServicer):
    """gRPC plumbing over :class:`Pipeline`: error mapping and event wrapping."""

    def __init__(self, pipeline: Pipeline, config: ServerConfig) -> None:
        self._pipeline = pipeline
        self._config = config

    async def Generate(self, request: pb.GenerateRequest, context: Ctx) -> pb.GenerateResponse:
        """Generate one image; the streaming path with events dropped."""
        generation = await self._final(request, context, "Generate", None)
        return pb.GenerateResponse(generation=generation)

    async def Refine(self, request: pb.RefineRequest, context: Ctx) -> pb.RefineResponse:
        """Edit an image given the conversation history."""
        generation = await self._final(request, context, "Refine", request.history)
        return pb.RefineResponse(generation=generation)

    async def GenerateStream(
        self, request: pb.GenerateStreamRequest, context: Ctx
    ) -> AsyncIterator[pb.GenerateStreamResponse]:
        """Generate with progress events."""
        async for msg in self._stream(request, context, "Generate", None, pb.GenerateStreamResponse):
            yield msg

    async def RefineStream(
        self, request: pb.RefineStreamRequest, context: Ctx
    ) -> AsyncIterator[pb.RefineStreamResponse]:
        """Refine with progress events."""
        async for msg in self._stream(request, context, "Refine", request.history, pb.RefineStreamResponse):
            yield msg

    async def ListModels(self, request: pb.ListModelsRequest, context: Ctx) -> pb.ListModelsResponse:
        """The allowed models and what each supports."""
        response = pb.ListModelsResponse()
        for spec in MODELS:
            if spec.name not in self._config.allowed_models:
                continue
            response.models.add(
                name=spec.name,
                aspect_ratios=spec.aspect_ratios,
                image_sizes=spec.image_sizes,
                max_input_images=spec.max_input_images,
                requires_thought_signatures=spec.requires_thought_signatures,
                is_default=spec.name == self._config.default_model,
            )
        return response

    async def _final(
        self, request: GenerationMessage, context: Ctx, method: str, history: Sequence[image_pb2.Turn] | None
    ) -> image_pb2.Generation:
        generation: image_pb2.Generation | None = None
        async for event in self._guarded(request, context, method, history, previews=False):
            if isinstance(event, image_pb2.Generation):
                generation = event
        if generation is None:  # pragma: no cover - _guarded always ends in a Generation or aborts
            await self._abort(context, errors.internal({}))
            raise AssertionError("unreachable")
        return generation

    async def _stream(
        self,
        request: GenerationMessage,
        context: Ctx,
        method: str,
        history: Sequence[image_pb2.Turn] | None,
        wrap: type[_Msg],
    ) -> AsyncIterator[_Msg]:
        async for event in self._guarded(request, context, method, history, previews=True):
            message = wrap()
            getattr(message, _EVENT_FIELD[type(event)]).CopyFrom(event)
            yield message

    async def _guarded(
        self,
        request: GenerationMessage,
        context: Ctx,
        method: str,
        history: Sequence[image_pb2.Turn] | None,
        *,
        previews: bool,
    ) -> AsyncIterator[Event]:
        """The pipeline's events, with every failure turned into a proper status."""
        try:
            async for event in self._pipeline.events(
                request,
                method=method,
                history=history,
                time_remaining=context.time_remaining(),
                previews=previews,
            ):
                yield event
        except ServiceError as err:
            await self._abort(context, err)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Never let Python's text reach the caller as UNKNOWN.
            request_id = request.options.request_id
            log.exception("unexpected error in %s (requestId=%s)", method, request_id)
            await self._abort(context, errors.internal({"requestId": request_id}))

    @staticmethod
    async def _abort(context: Ctx, err: ServiceError) -> None:
        await context.abort_with_status(err.to_grpc_status())
