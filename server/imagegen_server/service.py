"""The ImageGenerationService servicer: gRPC plumbing over the one :class:`~imagegen_server.pipeline.Pipeline`.

Each RPC hands its request to :meth:`Pipeline.events`; the unary RPCs keep only
the final ``Generation``, the streaming ones wrap every event into a stream
response. Every failure becomes a proper status here (never UNKNOWN).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any, TypeAlias

import grpc

from imagegen.v1 import image_generation_service_pb2 as pb
from imagegen.v1 import image_generation_service_pb2_grpc as pb_grpc
from imagegen.v1 import image_pb2
from imagegen_server import errors
from imagegen_server.config import ServerConfig
from imagegen_server.errors import ServiceError
from imagegen_server.events import Event, StreamMessage, stream_message
from imagegen_server.history import with_history_images
from imagegen_server.models import MODELS
from imagegen_server.pipeline import Pipeline
from imagegen_server.validation import GenerationMessage

log = logging.getLogger(__name__)

Ctx: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


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
        history = with_history_images(request.history, request.history_images)
        generation = await self._final(request, context, "Refine", history)
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
        history = with_history_images(request.history, request.history_images)
        async for msg in self._stream(request, context, "Refine", history, pb.RefineStreamResponse):
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
        wrap: type[StreamMessage],
    ) -> AsyncIterator[StreamMessage]:
        async for event in self._guarded(request, context, method, history, previews=True):
            yield stream_message(event, wrap)

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
