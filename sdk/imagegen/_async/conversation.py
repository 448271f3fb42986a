"""Multi-turn image editing without handling thought signatures: the conversation's calls."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, Unpack

from imagegen._async.stream import AsyncEventStream
from imagegen._conversation_state import ConversationState
from imagegen._convert import GenerationKwargs, TurnInput
from imagegen.types import GenerationResult


class AsyncGenerationClient(Protocol):
    """What a conversation needs of its client: the generation methods of :class:`imagegen.AsyncClient`."""

    async def generate(self, prompt: str, **options: Unpack[GenerationKwargs]) -> GenerationResult:
        """See :meth:`imagegen.AsyncClient.generate`."""
        ...

    async def refine(
        self, prompt: str, *, history: Iterable[TurnInput], **options: Unpack[GenerationKwargs]
    ) -> GenerationResult:
        """See :meth:`imagegen.AsyncClient.refine`."""
        ...

    def generate_stream(self, prompt: str, **options: Unpack[GenerationKwargs]) -> AsyncEventStream:
        """See :meth:`imagegen.AsyncClient.generate_stream`."""
        ...

    def refine_stream(
        self, prompt: str, *, history: Iterable[TurnInput], **options: Unpack[GenerationKwargs]
    ) -> AsyncEventStream:
        """See :meth:`imagegen.AsyncClient.refine_stream`."""
        ...


class AsyncConversation(ConversationState[AsyncGenerationClient]):
    """A multi-turn editing session on a client (:class:`imagegen.AsyncClient`).

    Start one with :meth:`start` (or ``await client.conversation(prompt)``), or build an
    empty one and call :meth:`refine`: the first turn uses ``Generate``, later
    turns ``Refine`` with the accumulated history. A failed turn leaves the
    history unchanged.
    """

    @classmethod
    async def start(
        cls, client: AsyncGenerationClient, prompt: str, **options: Unpack[GenerationKwargs]
    ) -> AsyncConversation:
        """Generate the first image and return the conversation holding it.

        Options: :class:`imagegen.GenerationKwargs`; the model and size options are kept for later turns.
        """
        conversation = cls(client, **cls._settings_of(options))
        await conversation.refine(prompt, **options)
        return conversation

    async def refine(self, prompt: str, **options: Unpack[GenerationKwargs]) -> GenerationResult:
        """Run the next turn (``Generate`` when the history is empty, else ``Refine``) and record it.

        Options: :class:`imagegen.GenerationKwargs`; model and size options left out are the conversation's.
        """
        images, turn = self._turn(options)
        if self._history:
            result = await self.client.refine(prompt, history=self._history, **turn)
        else:
            result = await self.client.generate(prompt, **turn)
        self._record(prompt, images, result)
        return result

    def refine_stream(self, prompt: str, **options: Unpack[GenerationKwargs]) -> AsyncEventStream:
        """Like :meth:`refine`, streaming progress events; the turn is recorded when ``Completed`` arrives."""
        images, turn = self._turn(options)
        if self._history:
            stream = self.client.refine_stream(prompt, history=tuple(self._history), **turn)
        else:
            stream = self.client.generate_stream(prompt, **turn)
        stream.add_result_callback(lambda result: self._record(prompt, images, result))
        return stream
