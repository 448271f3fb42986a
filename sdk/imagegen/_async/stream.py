"""The typed event stream of ``generate_stream`` / ``refine_stream``."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from types import TracebackType
from typing import Self

from imagegen._stream import EventStreamBase
from imagegen.types import GenerationResult, StreamEvent


class AsyncEventStream(EventStreamBase, AsyncIterator[StreamEvent]):
    """The typed events of a ``generate_stream`` / ``refine_stream`` call.

    Iterate it (``async for``); the last event of a successful stream is :class:`imagegen.Completed`,
    and a failure raises an :class:`imagegen.ImagegenError` from the loop. Use ``async with``
    (or call :meth:`aclose`) to cancel the call when you stop early.
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
