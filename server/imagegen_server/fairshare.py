"""Upstream slots shared fairly between callers: per-caller FIFO queues served round-robin.

:class:`FairSlots` replaces a plain semaphore. While slots are free, calls take
one at once. When all are taken, each caller waits in its own queue, and every
freed slot goes to the caller whose turn it is: callers with waiting calls
take turns, one call each, in the order they started waiting. A caller with a
backlog of a hundred calls therefore delays another caller's next call by at
most one slot turnover, not by its whole backlog.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque


class FairSlots:
    """``capacity`` slots; waiting callers are served round-robin, each caller's calls in order."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._capacity = capacity
        self._free = capacity
        #: Waiting calls per caller; the first key is the caller whose turn is next.
        self._queues: OrderedDict[str, deque[asyncio.Future[None]]] = OrderedDict()

    @property
    def in_use(self) -> int:
        """Slots held now."""
        return self._capacity - self._free

    def waiting(self, caller: str | None = None) -> int:
        """Calls waiting for a slot (of ``caller``, or of everyone)."""
        if caller is not None:
            return len(self._queues.get(caller, ()))
        return sum(len(q) for q in self._queues.values())

    async def acquire(self, caller: str) -> None:
        """Wait for a slot in ``caller``'s turn. Cancelling the wait (a timeout) leaves no slot taken."""
        if self._free > 0 and not self._queues:
            self._free -= 1
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._queues.get(caller)
        if queue is None:
            # A caller that starts waiting takes its turn after those already waiting.
            queue = self._queues[caller] = deque()
        queue.append(turn)
        try:
            await turn
        except BaseException:
            if turn.done() and not turn.cancelled():
                # The slot was handed over just as the wait ended: pass it on.
                self.release()
            else:
                self._forget(caller, turn)
            raise

    def release(self) -> None:
        """Free a slot: it goes to the next caller in turn, if any is waiting."""
        self._free += 1
        while self._free > 0 and self._queues:
            caller, queue = next(iter(self._queues.items()))
            turn = queue.popleft()
            if queue:
                self._queues.move_to_end(caller)
            else:
                del self._queues[caller]
            if turn.done():  # pragma: no cover - cancelled waits are removed by acquire()
                continue
            self._free -= 1
            turn.set_result(None)

    def _forget(self, caller: str, turn: asyncio.Future[None]) -> None:
        queue = self._queues.get(caller)
        if queue is None:
            return
        try:
            queue.remove(turn)
        except ValueError:
            return
        if not queue:
            del self._queues[caller]
