"""The ImageGenerationService servicer: gRPC plumbing over the one :class:`~imagegen_server.pipeline.Pipeline`.

Each RPC hands its request to :meth:`Pipeline.events`; the unary RPCs keep only
the final ``Generation``, the streaming ones wrap every event into a stream
response. Every failure becomes a proper status here (never UNKNOWN).

:func:`add_to_server` registers the servicer so that each response is
serialized as soon as it is made and the message dropped: gRPC keeps what a
handler returns or yields alive until it is sent, which for a slow caller is
a while, and a final image should wait as one serialized copy, not two.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
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

    def GenerateStream(
        self, request: pb.GenerateStreamRequest, context: Ctx
    ) -> AsyncIterator[pb.GenerateStreamResponse]:
        """Generate with progress events."""
        # The stream itself, not a loop forwarding it: a forwarding frame would
        # hold each message (the final image) while gRPC sends it.
        return self._stream(request, context, "Generate", None, pb.GenerateStreamResponse)

    def RefineStream(self, request: pb.RefineStreamRequest, context: Ctx) -> AsyncIterator[pb.RefineStreamResponse]:
        """Refine with progress events."""
        history = with_history_images(request.history, request.history_images)
        return self._stream(request, context, "Refine", history, pb.RefineStreamResponse)

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
        events = self._guarded(request, context, method, history, previews=True)
        async for event in events:
            if not isinstance(event, image_pb2.Generation):
                yield stream_message(event, wrap)
                continue
            # The last event. The pipeline finishes before it is sent, so that
            # its frames drop the Generation (the message holds a copy), and the
            # message is handed on without a reference kept here: while a slow
            # caller reads, only its serialized bytes wait (see add_to_server).
            final = [stream_message(event, wrap)]
            del event
            async for _ in events:
                pass  # pragma: no cover - nothing follows the Generation
            yield final.pop()

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


def add_to_server(servicer: ImageGenerationServicer, server: grpc.aio.Server) -> None:
    """Register ``servicer``'s RPCs on ``server``, each response serialized as soon as it is made.

    Like the generated ``add_ImageGenerationServiceServicer_to_server``, but
    gRPC gets bytes: a handler's return value (or each yielded message) stays
    referenced until it has been sent, so handing gRPC the message would keep
    the image twice (message and serialized bytes) for as long as a slow
    caller takes to read it.
    """
    service = pb.DESCRIPTOR.services_by_name["ImageGenerationService"]
    handlers: dict[str, grpc.RpcMethodHandler[Any, bytes]] = {}
    for method in service.methods:
        request_type = getattr(pb, method.input_type.name)
        behaviour = getattr(servicer, method.name)
        if method.server_streaming:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(
                _serialized_stream(behaviour), request_deserializer=request_type.FromString
            )
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                _serialized_unary(behaviour), request_deserializer=request_type.FromString
            )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
    server.add_registered_method_handlers(service.full_name, handlers)


def _serialized_unary(method: Callable[[Any, Ctx], Awaitable[Any]]) -> Callable[[Any, Ctx], Awaitable[bytes]]:
    async def serialized(request: Any, context: Ctx) -> bytes:
        data: bytes = (await method(request, context)).SerializeToString()
        return data

    return serialized


def _serialized_stream(method: Callable[[Any, Ctx], AsyncIterator[Any]]) -> Callable[[Any, Ctx], AsyncIterator[bytes]]:
    async def serialized(request: Any, context: Ctx) -> AsyncIterator[bytes]:
        async for message in method(request, context):
            data: bytes = message.SerializeToString()
            del message  # not kept alive while gRPC sends ``data``
            yield data

    return serialized
