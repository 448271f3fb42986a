"""The one code path of all four generation RPCs: validation -> translation -> retry loop -> upstream.

:meth:`Pipeline.events` is an async generator of progress events ending in the
finished ``Generation``. The streaming RPCs forward every event; the unary RPCs
are the same generator with the events dropped. The pipeline orchestrates only:
messages are built by :mod:`imagegen_server.events`, and what happens to each
request is reported to a :class:`~imagegen_server.lifecycle.GenerationObserver`
(metrics among others) instead of being counted here.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from imagegen.v1 import image_generation_service_pb2 as pb
from imagegen.v1 import image_pb2
from imagegen.v1.error_reason_pb2 import ErrorReason
from imagegen_server import errors, events
from imagegen_server.breaker import BreakerPolicy, BreakerStore, CircuitBreaker, ModelCircuit
from imagegen_server.caller import current_caller
from imagegen_server.config import ServerConfig
from imagegen_server.errors import ServiceError
from imagegen_server.events import Event
from imagegen_server.fairshare import FairSlots
from imagegen_server.gemini.errors import ErrorKind, UpstreamError
from imagegen_server.gemini.types import InlineImage, UpstreamRequest, UpstreamResult
from imagegen_server.idempotency import (
    Abandoned,
    Claim,
    FingerprintMismatch,
    IdempotencyKey,
    IdempotencyStore,
    MemoryIdempotencyStore,
)
from imagegen_server.lifecycle import GenerationObserver
from imagegen_server.logs import bind_generation
from imagegen_server.models import ModelSpec, find_model
from imagegen_server.retry import (
    DEADLINE,
    MONOTONIC_CLOCK,
    NOT_RETRYABLE,
    Clock,
    RetryBudget,
    RetryDecision,
    RetryFailure,
    RetryOutcome,
    RetryPolicy,
    call_with_retries,
)
from imagegen_server.translation import can_serve, choose_seed, to_upstream
from imagegen_server.validation import GenerationMessage, ValidatedRequest, validate

log = logging.getLogger(__name__)

#: Shave this off the caller's deadline so our own DEADLINE_EXCEEDED/RetryInfo
#: status (with details) reaches the caller before gRPC's bare one: a tenth of
#: the time, at least DEADLINE_MARGIN (the status's way out on an idle server)
#: and at most MAX_DEADLINE_MARGIN (a busy event loop can lag by that much).
DEADLINE_MARGIN = 0.05
MAX_DEADLINE_MARGIN = 0.5


def deadline_margin(time_remaining: float) -> float:
    """How much earlier than the caller's deadline the pipeline gives up."""
    return min(MAX_DEADLINE_MARGIN, max(DEADLINE_MARGIN, time_remaining / 10))


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


@dataclass(frozen=True, slots=True)
class _Call:
    """One accepted request as it moves through the pipeline."""

    #: The Gemini request for the requested model.
    upstream: UpstreamRequest
    #: The same request (prompt, seed, shape) for each fallback model that can serve it, in order.
    fallbacks: tuple[UpstreamRequest, ...]
    request_id: str
    generation_id: str
    #: ErrorInfo metadata of every status this request may end with.
    meta: Mapping[str, str]
    start: float
    #: Our own deadline (the caller's minus deadline_margin(), at most the
    #: server's maximum call duration), on the pipeline's clock.
    deadline: float
    #: True when the server's maximum call duration, not the caller, set the deadline.
    capped: bool


@dataclass(frozen=True, slots=True)
class _Done:
    """Queue sentinel: the upstream task finished (its result is on the task)."""


class _Reporter:
    """The retry loop's observer for one request.

    Turns each step into a stream event on :attr:`queue` for the caller, and
    reports it to the process-wide lifecycle observer.
    """

    def __init__(self, model: str, observer: GenerationObserver) -> None:
        self.queue: asyncio.Queue[Event | _Done] = asyncio.Queue()
        self._model = model
        self._observer = observer
        self._drafts = 0

    def attempt_started(self, attempt: int, max_attempts: int) -> None:
        """A new attempt: previews count from 1 again."""
        self._drafts = 0
        self._observer.attempt_started(self._model, attempt, max_attempts)
        self.queue.put_nowait(events.attempt_started(attempt, max_attempts))

    def attempt_failed(self, attempt: int, error: UpstreamError, decision: RetryDecision) -> None:
        """Report the failure and, when one follows, the wait before the retry."""
        self._observer.attempt_failed(self._model, attempt, error, decision)
        if decision.will_retry:
            self._observer.retry_waiting(self._model, attempt, decision.delay)
        self.queue.put_nowait(events.attempt_failed(attempt, error, decision))

    def draft(self, image: InlineImage) -> None:
        """A thought image from upstream, forwarded as a preview."""
        self._drafts += 1
        self.queue.put_nowait(events.preview(image, self._drafts))


class Pipeline:
    """Runs one generation request end to end; shared by all RPCs.

    Holds the process-wide pieces (upstream client, retry budget, concurrency
    limit, idempotency cache, lifecycle observer); everything per request lives
    in :meth:`events`.
    """

    def __init__(
        self,
        config: ServerConfig,
        upstream: Upstream,
        *,
        clock: Clock = MONOTONIC_CLOCK,
        observer: GenerationObserver | None = None,
        rng: random.Random | None = None,
        idempotency: IdempotencyStore[image_pb2.Generation] | None = None,
        breakers: BreakerStore | None = None,
    ) -> None:
        self._config = config
        self._upstream = upstream
        self._clock = clock
        self._observer = observer or GenerationObserver()
        #: Draws the seed of requests that bring none.
        self._rng = rng or random.SystemRandom()
        self._policy = RetryPolicy(
            max_attempts=config.max_attempts,
            initial_backoff=config.initial_backoff,
            max_backoff=config.max_backoff,
            max_upstream_delay=config.max_upstream_delay,
            attempt_timeout=config.attempt_timeout,
        )
        #: One retry budget per upstream model (quotas and outages are per model), made on first use.
        self._budgets: dict[str, RetryBudget] = {}
        self._budget(config.default_model)  # a bad budget setting fails at startup, not on a request
        #: The circuits of all models; their state in ``breakers`` (default: this process's memory). A store
        #: shared by replicas runs on the wall clock, the one clock they share (NTP keeps it within ms).
        self._breaker = CircuitBreaker(
            BreakerPolicy(
                failure_threshold=config.breaker_failure_threshold,
                open_seconds=config.breaker_open_seconds,
                max_open_seconds=config.breaker_max_open_seconds,
                probe_timeout=config.attempt_timeout,
            ),
            store=breakers,
            clock=clock.now if breakers is None else time.time,
            listener=self._observer.circuit_changed,
        )
        #: Each model's fallback models, in order (checked at startup by ServerConfig.problems()).
        self._fallbacks = config.fallback_chains()
        #: Upstream slots, queued fairly across callers (round-robin, FIFO per caller).
        self._slots = FairSlots(config.max_concurrency)
        self._idempotency: IdempotencyStore[image_pb2.Generation] = idempotency or MemoryIdempotencyStore(
            ttl=config.idempotency_ttl, max_bytes=config.idempotency_max_bytes, sizeof=_generation_size, clock=clock.now
        )
        #: Refuse new calls (shutdown has begun); calls in flight go on.
        self.draining = False
        #: The tasks running a call right now, so shutdown can end them with details.
        self._calls: set[asyncio.Task[Any]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._cutting_off = False

    def waiting_for_slots(self, caller: str | None = None) -> int:
        """Requests queued for an upstream slot now (of ``caller``, or of everyone)."""
        return self._slots.waiting(caller)

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
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - grpc.aio runs every handler in a task
            raise RuntimeError("Pipeline.events must run in a task")
        self._calls.add(task)
        self._idle.clear()
        try:
            async for event in self._call(
                request, meta, method=method, history=history, time_remaining=time_remaining, previews=previews
            ):
                if isinstance(event, image_pb2.Generation):
                    # Done: its result is on its way out, a shutdown must not cut that.
                    self._untrack(task)
                yield event
        except asyncio.CancelledError:
            if not self._cutting_off or task not in self._calls:
                raise  # the caller hung up or its deadline passed: nobody to tell
            # Our own cut-off at the end of the shutdown grace: say so, with details.
            task.uncancel()
            raise errors.shutting_down(meta) from None
        finally:
            self._untrack(task)

    def _untrack(self, task: asyncio.Task[Any]) -> None:
        self._calls.discard(task)
        if not self._calls:
            self._idle.set()

    @property
    def in_flight(self) -> int:
        """Calls running right now."""
        return len(self._calls)

    async def drained(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the calls in flight to end; True if none is left."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(timeout, 0.0)):
                await self._idle.wait()
        return self._idle.is_set()

    def cut_off(self) -> int:
        """End every call in flight now with UNAVAILABLE / SHUTTING_DOWN and RetryInfo.

        For the end of the shutdown grace: the calls abort with details (their
        upstream requests aborted too) instead of being cut by gRPC with a bare
        status. Refuses new calls from now on. Returns how many were ended.
        """
        self.draining = True
        self._cutting_off = True
        for task in self._calls:
            task.cancel()
        return len(self._calls)

    async def _call(
        self,
        request: GenerationMessage,
        meta: dict[str, str],
        *,
        method: str,
        history: Sequence[image_pb2.Turn] | None,
        time_remaining: float | None,
        previews: bool,
    ) -> AsyncIterator[Event]:
        """One accepted call: validate, deduplicate, generate."""
        start = self._clock.now()
        limit = self._config.max_call_duration
        # A caller without a deadline (or with a longer one) still gets an end:
        # a silent upstream must not hold the call and its slot forever.
        own = None if time_remaining is None else time_remaining - deadline_margin(time_remaining)
        capped = own is None or own > limit
        deadline = start + (limit if own is None or own > limit else own)
        validated = validate(request, self._config, history=history)
        generation_id = uuid.uuid4().hex
        meta["generationId"] = generation_id
        bind_generation(generation_id)
        seed = choose_seed(validated.seed, self._rng)
        call = _Call(
            upstream=to_upstream(validated, self._config, seed=seed, previews=previews),
            fallbacks=tuple(
                to_upstream(validated, self._config, seed=seed, previews=previews, spec=spec)
                for spec in self._fallback_specs(validated)
            ),
            request_id=validated.request_id,
            generation_id=generation_id,
            meta=meta,
            start=start,
            deadline=deadline,
            capped=capped,
        )
        if not call.request_id:
            async for event in self._generate(call):
                yield event
            return
        fingerprint = hashlib.sha256(method.encode() + request.SerializeToString(deterministic=True)).digest()
        async for event in self._once(call, _idempotency_key(method, call.request_id), fingerprint):
            yield event

    async def _once(self, call: _Call, key: IdempotencyKey, fingerprint: bytes) -> AsyncIterator[Event]:
        """Generate for the first request with this key; later duplicates share its result.

        A duplicate waits with its own deadline. If the owner gives up for its
        own reasons (its deadline, its caller hung up), a waiting duplicate
        claims the key and runs the request itself.
        """
        while True:
            try:
                claim = await self._idempotency.claim(key, fingerprint)
            except FingerprintMismatch:
                raise errors.invalid_request(
                    [errors.FieldViolation("options.request_id", "already used for a different request")], call.meta
                ) from None
            if claim.owner:
                async for event in self._own(call, claim):
                    yield event
                return
            try:
                # A duplicate: share the owner's result, no second upstream call.
                async for event in self._follow(call, claim):
                    yield event
                return
            except Abandoned:
                log.info("request_id %s: the first call gave up on its own; this duplicate takes over", key.request_id)

    async def _own(self, call: _Call, claim: Claim) -> AsyncIterator[Event]:
        """Generate as the key's owner and tell the waiting duplicates how it ended."""
        try:
            async for event in self._generate(call):
                if isinstance(event, image_pb2.Generation):
                    await self._idempotency.resolve(claim, event)
                yield event
        except BaseException as exc:
            if _owners_own(exc):
                await self._idempotency.abandon(claim)
            else:
                await self._idempotency.fail(claim, exc)
            raise

    async def _follow(self, call: _Call, claim: Claim) -> AsyncIterator[Event]:
        """Wait for the owner's result until this call's own deadline, with heartbeats so a stream stays alive."""
        while True:
            remaining = call.deadline - self._clock.now()
            if remaining <= 0:
                raise self._deadline_error(call, {})
            try:
                generation = await self._idempotency.wait(claim, min(self._config.heartbeat_interval, remaining))
            except TimeoutError:
                if self._clock.now() < call.deadline:
                    yield events.heartbeat(self._clock.now() - call.start)
                continue
            yield generation
            return

    async def _generate(self, call: _Call) -> AsyncIterator[Event]:
        """Hold a concurrency slot while the retry loops run; forward their events, then the Generation.

        The requested model first (or, when its circuit is open, the first
        fallback whose circuit is not); when a model stays overloaded through
        its retries and nothing of it reached the caller, the next fallback.
        """
        await self._acquire_slot(call.deadline, call.meta)
        try:
            candidates = (call.upstream, *call.fallbacks)
            index, reason = await self._starting_model(candidates)
            yield events.accepted(
                call.generation_id,
                candidates[index],
                self._policy.max_attempts,
                requested_model=call.upstream.model,
                fallback_reason=reason,
                fallback_models=[u.model for u in candidates[index + 1 :]],
            )
            if index:
                self._fell_back(call, call.upstream.model, candidates[index].model, reason)
            while True:
                upstream = candidates[index]
                reporter = _Reporter(upstream.model, self._observer)
                task = self._start_retries(call, upstream, reporter)
                delivered = False
                try:
                    async for event in self._progress(reporter, call.start):
                        delivered = delivered or isinstance(event, pb.Preview)
                        yield event
                    try:
                        outcome = task.result()
                    except RetryFailure as failure:
                        why = self._fallback_reason(call, failure, delivered=delivered)
                        if why is None or index + 1 >= len(candidates):
                            raise self._final_error(call, upstream, failure) from None
                        outcome, reason = None, why
                finally:
                    await _settle(task)
                if outcome is not None:
                    generation = self._finished(call, upstream, outcome, reason)
                    # The decoded image now lives in the Generation; the upstream result
                    # (held by the task too) must not stay alive while it is sent.
                    del task, outcome
                    yield generation
                    return
                index += 1
                self._fell_back(call, upstream.model, candidates[index].model, reason)
                yield events.model_fallback(upstream.model, candidates[index].model, reason)
        finally:
            self._slots.release()

    async def _starting_model(
        self, candidates: Sequence[UpstreamRequest]
    ) -> tuple[int, image_pb2.FallbackReason.ValueType]:
        """The first candidate whose circuit takes calls, and why it is not the requested model.

        When every circuit is open, the requested model: its fast failure names it.
        """
        for index, upstream in enumerate(candidates):
            if await self._breaker.blocked_for(upstream.model) is None:
                return index, image_pb2.FALLBACK_REASON_CIRCUIT_OPEN if index else image_pb2.FALLBACK_REASON_UNSPECIFIED
        return 0, image_pb2.FALLBACK_REASON_UNSPECIFIED

    def _fallback_reason(
        self, call: _Call, failure: RetryFailure, *, delivered: bool
    ) -> image_pb2.FallbackReason.ValueType | None:
        """Why the next fallback model may take over after ``failure``; None when it may not."""
        if delivered or failure.stop_reason == NOT_RETRYABLE:
            # The caller has seen this model's work, or the request itself is at fault.
            return None
        if call.deadline - self._clock.now() < self._policy.min_attempt_time:
            return None  # no time left for another model
        match failure.error.kind:
            case ErrorKind.CIRCUIT_OPEN:
                return image_pb2.FALLBACK_REASON_CIRCUIT_OPEN
            case ErrorKind.UNAVAILABLE:
                return image_pb2.FALLBACK_REASON_UNAVAILABLE
            case ErrorKind.RATE_LIMITED if not any(v.per_day for v in failure.error.quota_violations):
                return image_pb2.FALLBACK_REASON_RATE_LIMITED
            case _:
                # Timeouts, malformed answers, per-day quotas, our key: another model would not help.
                return None

    def _fell_back(
        self, call: _Call, from_model: str, to_model: str, reason: image_pb2.FallbackReason.ValueType
    ) -> None:
        """Report a move to a fallback model."""
        why = image_pb2.FallbackReason.Name(reason).removeprefix("FALLBACK_REASON_").lower()
        self._observer.model_fallback(from_model, to_model, why)
        log.warning("generation %s: %s %s, falling back to %s", call.generation_id, from_model, why, to_model)

    def _fallback_specs(self, validated: ValidatedRequest) -> tuple[ModelSpec, ...]:
        """The fallback models that may serve ``validated``, in order."""
        if not validated.fallback_allowed:
            return ()
        specs = (find_model(name) for name in self._fallbacks.get(validated.spec.name, ()))
        return tuple(spec for spec in specs if spec is not None and can_serve(spec, validated))

    def _start_retries(
        self, call: _Call, upstream: UpstreamRequest, reporter: _Reporter
    ) -> asyncio.Task[RetryOutcome[UpstreamResult]]:
        """Run ``upstream``'s retry loop in its own task; its end is queued after its last event."""
        on_draft = reporter.draft if upstream.include_thoughts else None

        async def attempt(timeout: float | None) -> UpstreamResult:
            return await self._upstream.generate(upstream, timeout=timeout, on_draft=on_draft)

        task = asyncio.create_task(
            call_with_retries(
                attempt,
                policy=self._policy,
                budget=self._budget(upstream.model),
                circuit=ModelCircuit(self._breaker, upstream.model),
                deadline=call.deadline,
                observer=reporter,
                clock=self._clock,
            )
        )
        task.add_done_callback(lambda _: reporter.queue.put_nowait(_Done()))
        return task

    async def _progress(self, reporter: _Reporter, start: float) -> AsyncIterator[Event]:
        """Forward the retry loop's events until it finishes, with heartbeats while quiet."""
        while True:
            try:
                async with asyncio.timeout(self._config.heartbeat_interval):
                    item = await reporter.queue.get()
            except TimeoutError:
                yield events.heartbeat(self._clock.now() - start)
                continue
            if isinstance(item, _Done):
                return
            yield item

    def _finished(
        self,
        call: _Call,
        upstream: UpstreamRequest,
        outcome: RetryOutcome[UpstreamResult],
        fallback_reason: image_pb2.FallbackReason.ValueType,
    ) -> image_pb2.Generation:
        """Report the success and build the Generation (answered by ``upstream.model``)."""
        elapsed = self._clock.now() - call.start
        model = upstream.model
        self._observer.upstream_answered(model, outcome.attempts, outcome.value)
        self._observer.attempt_succeeded(model, outcome.attempts)
        self._observer.generation_done(model, outcome.attempts, elapsed)
        log.info("generation %s done: model=%s attempts=%d %.2fs", call.generation_id, model, outcome.attempts, elapsed)
        return events.generation(
            upstream,
            outcome.value,
            generation_id=call.generation_id,
            request_id=call.request_id,
            attempts=outcome.attempts,
            elapsed=elapsed,
            requested_model=call.upstream.model,
            fallback_reason=fallback_reason,
        )

    def _final_error(self, call: _Call, upstream: UpstreamRequest, failure: RetryFailure) -> ServiceError:
        """Report the failure; the status for a request whose (last model's) retry loop gave up."""
        now = self._clock.now()
        self._observer.generation_failed(
            upstream.model, failure.attempts, failure.error, failure.stop_reason, now - call.start
        )
        log.info(
            "generation %s failed after %d attempt(s): %s (%s)",
            call.generation_id,
            failure.attempts,
            failure.error.kind.name,
            failure.stop_reason,
        )
        if failure.error.kind is ErrorKind.DEADLINE_EXCEEDED and now >= call.deadline - DEADLINE_MARGIN:
            # Upstream was still working when the caller's time ran out.
            return self._deadline_error(call, {"attempts": str(failure.attempts), "stopReason": failure.stop_reason})
        return errors.from_upstream(
            failure.error,
            attempts=failure.attempts,
            retry_delay=failure.retry_delay,
            metadata={**call.meta, "stopReason": failure.stop_reason},
        )

    def _budget(self, model: str) -> RetryBudget:
        """The retry budget of ``model``."""
        budget = self._budgets.get(model)
        if budget is None:
            config = self._config
            budget = RetryBudget(
                config.retry_budget_percent,
                config.retry_budget_min_retries,
                config.retry_budget_window,
                clock=self._clock.now,
            )
            self._budgets[model] = budget
        return budget

    def _deadline_error(self, call: _Call, extra: Mapping[str, str]) -> ServiceError:
        """DEADLINE_EXCEEDED for a call whose time ran out, saying whose limit it was."""
        if call.capped:
            return errors.max_duration_exceeded(self._config.max_call_duration, {**call.meta, **extra})
        return errors.deadline_exceeded({**call.meta, **extra})

    async def _acquire_slot(self, deadline: float, meta: Mapping[str, str]) -> None:
        # One slot per request, held across its retries and waits: the limit
        # bounds concurrent requests to upstream, not just concurrent sockets.
        wait = min(self._config.queue_timeout, max(deadline - self._clock.now(), 0.0))
        try:
            async with asyncio.timeout(wait):
                await self._slots.acquire(current_caller().name)
        except TimeoutError:
            raise errors.overloaded(max(self._config.queue_timeout, 1.0), meta) from None


async def _settle(task: asyncio.Task[Any]) -> None:
    """Leave no retry task behind, whatever ended the request."""
    if not task.done():
        # The caller hung up or the deadline hit: abort the upstream HTTP request now.
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    elif not task.cancelled():
        # Finished while the caller was leaving: read its outcome so
        # asyncio does not log "Task exception was never retrieved".
        task.exception()


def _idempotency_key(method: str, request_id: str) -> IdempotencyKey:
    """The one place a request's idempotency key is made.

    Scoped per caller: one caller's request_id never answers (or blocks) another's.
    """
    return IdempotencyKey(caller=current_caller().name, method=method, request_id=request_id)


#: Reasons that end a call for reasons of its own, not of the request: a
#: duplicate with time left takes over instead of sharing them.
_OWN_REASONS = frozenset(
    errors.reason_name(r)
    for r in (
        ErrorReason.ERROR_REASON_DEADLINE_EXCEEDED,
        ErrorReason.ERROR_REASON_MAX_DURATION_EXCEEDED,
        ErrorReason.ERROR_REASON_SHUTTING_DOWN,
        ErrorReason.ERROR_REASON_OVERLOADED,
    )
)


def _owners_own(exc: BaseException) -> bool:
    """Whether the owner's failure is its own (hang-up, its deadline), not the request's."""
    if not isinstance(exc, ServiceError):
        return True  # its caller hung up (CancelledError) or something unexpected happened to it
    info = exc.error_info()
    # Stopped retrying because its own deadline left no time: a duplicate with more may retry.
    return info.reason in _OWN_REASONS or info.metadata.get("stopReason") == DEADLINE


def _generation_size(generation: image_pb2.Generation) -> int:
    """Bytes a cached Generation holds (its image dominates)."""
    return generation.ByteSize()
