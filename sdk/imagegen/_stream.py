"""The event streams of ``generate_stream`` / ``refine_stream``: typed events, the final result and its callbacks."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Iterator
from types import TracebackType
from typing import Self

import grpc

from imagegen.errors import ImagegenError
from imagegen.types import Completed, GenerationResult, StreamEvent

__all__ = ["AsyncEventStream", "EventStream"]

ResultCallback = Callable[[GenerationResult], object]


class _EventStreamBase:
    """The final result and the result callbacks, shared by both event streams."""

    def __init__(self) -> None:
        self._callbacks: list[ResultCallback] = []
        #: The final result, once the :class:`Completed` event has been read.
        self.result: GenerationResult | None = None

    def add_result_callback(self, callback: ResultCallback) -> None:
        """Call ``callback(result)`` when the :class:`imagegen.Completed` event is read, before it is returned.

        Callbacks run in the order they were added; an exception from one ends the iteration with it.
        """
        self._callbacks.append(callback)

    def _seen(self, event: StreamEvent) -> StreamEvent:
        if isinstance(event, Completed):
            self.result = event.result
            for callback in self._callbacks:
                callback(event.result)
        return event

    def _final(self) -> GenerationResult:
        if self.result is None:
            raise ImagegenError("stream ended without a result", code=grpc.StatusCode.INTERNAL)
        return self.result


class EventStream(_EventStreamBase, Iterator[StreamEvent]):
    """The typed events of a ``generate_stream`` / ``refine_stream`` call (sync).

    Iterate it; the last event of a successful stream is :class:`imagegen.Completed`,
    and a failure raises an :class:`imagegen.ImagegenError` from the loop. Use it as a
    context manager (or call :meth:`close`) to cancel the call when you stop early.
    """

    def __init__(self, events: Generator[StreamEvent, None, None]) -> None:
        super().__init__()
        self._events = events

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> StreamEvent:
        return self._seen(next(self._events))

    def final_result(self) -> GenerationResult:
        """Consume the remaining events and return the generated result (raises on failure)."""
        for _ in self:
            pass
        return self._final()

    def close(self) -> None:
        """Stop reading and cancel the call if it is still running."""
        self._events.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class AsyncEventStream(_EventStreamBase, AsyncIterator[StreamEvent]):
    """The typed events of an async ``generate_stream`` / ``refine_stream`` call.

    ``async for`` over it; a failure raises an :class:`imagegen.ImagegenError`.
    Use ``async with`` (or :meth:`aclose`) to cancel the call when you stop early.
    """

    def __init__(self, events: AsyncGenerator[StreamEvent, None]) -> None:
        super().__init__()
        self._events = events

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> StreamEvent:
        return self._seen(await self._events.__anext__())

    async def final_result(self) -> GenerationResult:
        """Consume the remaining events and return the generated result (raises on failure)."""
        async for _ in self:
            pass
        return self._final()

    async def aclose(self) -> None:
        """Stop reading and cancel the call if it is still running."""
        await self._events.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
