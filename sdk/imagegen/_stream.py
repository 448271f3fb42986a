"""The transport-independent half of the event streams: the final result and the result callbacks."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from imagegen.errors import ImagegenError
from imagegen.types import Completed, GenerationResult, StreamEvent

__all__ = ["EventStreamBase", "ResultCallback"]

#: Called with the final result when a stream's :class:`imagegen.Completed` event is read.
ResultCallback = Callable[[GenerationResult], object]


class EventStreamBase:
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
