"""Multi-turn image editing without handling thought signatures.

A :class:`Conversation` (sync) or :class:`AsyncConversation` keeps the history
the server needs for ``Refine``: each user turn (prompt and input images) and
each model turn exactly as the server returned it, thought signatures byte for
byte. Example::

    with imagegen.Client() as client:
        chat = client.conversation("a red fox in the snow", seed=7)
        chat.refine("make it night")
        chat.refine("add a full moon").save("fox-moon.png")
        open("fox.json", "w").write(chat.to_json())       # resume later with Conversation.from_json

Model and size options given when the conversation starts are reused by every
turn unless a turn passes its own.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, Generic, Protocol, Self, TypeVar, Unpack

from google.protobuf import json_format

from imagegen._convert import GenerationKwargs, TurnInput, to_image_proto, to_turn_proto, user_turn
from imagegen._stream import AsyncEventStream, EventStream
from imagegen.types import GenerationResult, Turn
from imagegen.v1 import image_pb2

__all__ = ["FORMAT", "AsyncConversation", "AsyncGenerationClient", "Conversation", "GenerationClient"]

#: The ``format`` tag of :meth:`Conversation.to_json` documents.
FORMAT = "imagegen.conversation.v1"

_SIZE_KEYS = ("width", "height", "aspect_ratio", "image_size")
_SETTING_KEYS = ("model", *_SIZE_KEYS)
_JSON_KEYS = {"model": "model", "width": "width", "height": "height"}
_JSON_KEYS.update({"aspect_ratio": "aspectRatio", "image_size": "imageSize"})


class GenerationClient(Protocol):
    """What a :class:`Conversation` needs of its client: the methods of :class:`imagegen.Client`."""

    def generate(self, prompt: str, **options: Unpack[GenerationKwargs]) -> GenerationResult:
        """See :meth:`imagegen.Client.generate`."""
        ...

    def refine(
        self, prompt: str, *, history: Iterable[TurnInput], **options: Unpack[GenerationKwargs]
    ) -> GenerationResult:
        """See :meth:`imagegen.Client.refine`."""
        ...

    def generate_stream(self, prompt: str, **options: Unpack[GenerationKwargs]) -> EventStream:
        """See :meth:`imagegen.Client.generate_stream`."""
        ...

    def refine_stream(
        self, prompt: str, *, history: Iterable[TurnInput], **options: Unpack[GenerationKwargs]
    ) -> EventStream:
        """See :meth:`imagegen.Client.refine_stream`."""
        ...


class AsyncGenerationClient(Protocol):
    """What an :class:`AsyncConversation` needs of its client: the methods of :class:`imagegen.AsyncClient`."""

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


_ClientT = TypeVar("_ClientT", bound=GenerationClient | AsyncGenerationClient)


class _ConversationState(Generic[_ClientT]):
    """History, settings, turn options and JSON persistence shared by both conversation classes."""

    def __init__(
        self,
        client: _ClientT,
        history: Iterable[TurnInput] = (),
        *,
        model: str | None = None,
        width: int | None = None,
        height: int | None = None,
        aspect_ratio: str | None = None,
        image_size: str | None = None,
        last: GenerationResult | None = None,
    ) -> None:
        self.client = client
        self._history: list[Turn] = [Turn.from_proto(to_turn_proto(turn), default_role="user") for turn in history]
        # The model and size keys only.
        self._settings: GenerationKwargs = {
            "model": model,
            "width": width,
            "height": height,
            "aspect_ratio": aspect_ratio,
            "image_size": image_size,
        }
        self._last = last

    @classmethod
    def from_json(cls, data: str | bytes | Mapping[str, Any], client: _ClientT) -> Self:
        """Restore a conversation saved with :meth:`to_json` (or :meth:`to_dict`), bound to ``client``."""
        history, settings, last = cls._parse(data)
        return cls(client, history, last=last, **settings)

    @property
    def history(self) -> tuple[Turn, ...]:
        """The turns so far, oldest first: user turns and the model turns as returned."""
        return tuple(self._history)

    @property
    def last(self) -> GenerationResult | None:
        """The latest result (``None`` before the first turn)."""
        return self._last

    @property
    def model(self) -> str | None:
        """The model every turn uses: the one given, or the one that served the first turn."""
        value = self._settings.get("model")
        return str(value) if value else None

    def __len__(self) -> int:
        return len(self._history)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(turns={len(self._history)}, model={self.model!r})"

    @staticmethod
    def _settings_of(options: GenerationKwargs) -> dict[str, Any]:
        """The model and size options of ``start``, to keep for later turns."""
        return {key: options.get(key) for key in _SETTING_KEYS}

    def _turn(self, options: GenerationKwargs) -> tuple[tuple[image_pb2.Image, ...], GenerationKwargs]:
        """The turn's input images as messages, and the client call's options with the settings applied.

        The turn's own size options replace the stored ones as a group; its model replaces the stored one.
        """
        images = tuple(to_image_proto(image) for image in options.get("input_images", ()))
        own_size = any(options.get(key) is not None for key in _SIZE_KEYS)
        size = options if own_size else self._settings
        return images, {
            **options,
            "input_images": images,
            "model": options.get("model") or self._settings.get("model"),
            "width": size.get("width"),
            "height": size.get("height"),
            "aspect_ratio": size.get("aspect_ratio"),
            "image_size": size.get("image_size"),
        }

    def _record(self, prompt: str, images: tuple[image_pb2.Image, ...], result: GenerationResult) -> None:
        self._history.append(user_turn(prompt, images))
        self._history.append(result.model_turn)
        self._last = result
        if not self._settings.get("model"):
            self._settings["model"] = result.model

    # ------------------------------------------------------------------------------------------- json

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: settings, history (bytes as base64) and the last result without its image bytes.

        The image bytes and signature of the last result are not duplicated: they
        are in the last model turn, and :meth:`from_dict` restores them from there.
        """
        settings = {_JSON_KEYS[k]: v for k, v in self._settings.items() if v is not None}
        data: dict[str, Any] = {
            "format": FORMAT,
            "settings": settings,
            "history": [json_format.MessageToDict(turn.to_proto()) for turn in self._history],
        }
        if self._last is not None:
            generation = image_pb2.Generation()
            generation.CopyFrom(self._last.raw)
            generation.image.ClearField("data")
            generation.ClearField("model_turn")
            generation.ClearField("thought_signature")
            data["last"] = json_format.MessageToDict(generation)
        return data

    def to_json(self, *, indent: int | None = 2) -> str:
        """Serialize to JSON (see :meth:`to_dict`); bytes are base64, signatures kept exactly."""
        return json.dumps(self.to_dict(), indent=indent)

    @staticmethod
    def _parse(data: str | bytes | Mapping[str, Any]) -> tuple[list[Turn], dict[str, Any], GenerationResult | None]:
        doc: Any = json.loads(data) if isinstance(data, str | bytes) else data
        if not isinstance(doc, Mapping) or doc.get("format") != FORMAT:
            raise ValueError(f"not an imagegen conversation (expected format {FORMAT!r})")
        history = [
            Turn.from_proto(json_format.ParseDict(turn, image_pb2.Turn()), default_role="user")
            for turn in doc.get("history", [])
        ]
        stored = doc.get("settings", {})
        settings = {key: stored.get(json_key) for key, json_key in _JSON_KEYS.items()}
        last = None
        if "last" in doc:
            generation = json_format.ParseDict(doc["last"], image_pb2.Generation())
            if history and history[-1].role == "model":
                model_turn = history[-1]
                generation.model_turn.CopyFrom(model_turn.to_proto())
                for part in model_turn.parts:
                    if part.image is not None and not part.thought:
                        generation.image.data = part.image.data
                        generation.thought_signature = part.thought_signature
                        break
            last = GenerationResult.from_proto(generation)
        return history, settings, last


class Conversation(_ConversationState[GenerationClient]):
    """A multi-turn editing session on a sync :class:`imagegen.Client`.

    Start one with :meth:`start` (or ``client.conversation(prompt)``), or build an
    empty one and call :meth:`refine`: the first turn uses ``Generate``, later
    turns ``Refine`` with the accumulated history. A failed turn leaves the
    history unchanged.
    """

    @classmethod
    def start(cls, client: GenerationClient, prompt: str, **options: Unpack[GenerationKwargs]) -> Conversation:
        """Generate the first image and return the conversation holding it.

        Options: :class:`imagegen.GenerationKwargs`; the model and size options are kept for later turns.
        """
        conversation = cls(client, **cls._settings_of(options))
        conversation.refine(prompt, **options)
        return conversation

    def refine(self, prompt: str, **options: Unpack[GenerationKwargs]) -> GenerationResult:
        """Run the next turn (``Generate`` when the history is empty, else ``Refine``) and record it.

        Options: :class:`imagegen.GenerationKwargs`; model and size options left out are the conversation's.
        """
        images, turn = self._turn(options)
        if self._history:
            result = self.client.refine(prompt, history=self._history, **turn)
        else:
            result = self.client.generate(prompt, **turn)
        self._record(prompt, images, result)
        return result

    def refine_stream(self, prompt: str, **options: Unpack[GenerationKwargs]) -> EventStream:
        """Like :meth:`refine`, streaming progress events; the turn is recorded when ``Completed`` arrives."""
        images, turn = self._turn(options)
        if self._history:
            stream = self.client.refine_stream(prompt, history=tuple(self._history), **turn)
        else:
            stream = self.client.generate_stream(prompt, **turn)
        stream.add_result_callback(lambda result: self._record(prompt, images, result))
        return stream


class AsyncConversation(_ConversationState[AsyncGenerationClient]):
    """A multi-turn editing session on an :class:`imagegen.AsyncClient`; see :class:`Conversation`."""

    @classmethod
    async def start(
        cls, client: AsyncGenerationClient, prompt: str, **options: Unpack[GenerationKwargs]
    ) -> AsyncConversation:
        """Generate the first image and return the conversation holding it; see :meth:`Conversation.start`."""
        conversation = cls(client, **cls._settings_of(options))
        await conversation.refine(prompt, **options)
        return conversation

    async def refine(self, prompt: str, **options: Unpack[GenerationKwargs]) -> GenerationResult:
        """Run the next turn and record it; see :meth:`Conversation.refine`."""
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
