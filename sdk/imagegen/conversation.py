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
from typing import TYPE_CHECKING, Any

from google.protobuf import json_format

from imagegen._convert import MetadataInput, TurnInput, to_image_proto, to_turn_proto, user_turn
from imagegen.types import GenerationResult, ImageInput, Turn
from imagegen.v1 import image_pb2

if TYPE_CHECKING:
    from imagegen.client import AsyncClient, AsyncEventStream, Client, EventStream

__all__ = ["FORMAT", "AsyncConversation", "Conversation"]

#: The ``format`` tag of :meth:`Conversation.to_json` documents.
FORMAT = "imagegen.conversation.v1"

_SIZE_KEYS = ("width", "height", "aspect_ratio", "image_size")
_JSON_KEYS = {"model": "model", "width": "width", "height": "height"}
_JSON_KEYS.update({"aspect_ratio": "aspectRatio", "image_size": "imageSize"})


class _ConversationState:
    """History, settings and JSON persistence shared by both conversation classes."""

    def __init__(
        self,
        history: Iterable[TurnInput] = (),
        *,
        model: str | None = None,
        width: int | None = None,
        height: int | None = None,
        aspect_ratio: str | None = None,
        image_size: str | None = None,
        last: GenerationResult | None = None,
    ) -> None:
        self._history: list[Turn] = [Turn.from_proto(to_turn_proto(turn), default_role="user") for turn in history]
        self._settings: dict[str, Any] = {
            "model": model,
            "width": width,
            "height": height,
            "aspect_ratio": aspect_ratio,
            "image_size": image_size,
        }
        self._last = last

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
        value = self._settings["model"]
        return str(value) if value else None

    def __len__(self) -> int:
        return len(self._history)

    def _options(self, overrides: dict[str, Any]) -> dict[str, Any]:
        """Per-turn options: the turn's own size options replace the stored ones as a group."""
        sizes = {k: overrides[k] for k in _SIZE_KEYS if overrides.get(k) is not None}
        if not sizes:
            sizes = {k: self._settings[k] for k in _SIZE_KEYS}
        options: dict[str, Any] = dict.fromkeys(_SIZE_KEYS)
        options.update(sizes)
        options["model"] = overrides.get("model") or self._settings["model"]
        return options

    def _record(self, prompt: str, images: tuple[image_pb2.Image, ...], result: GenerationResult) -> None:
        self._history.append(user_turn(prompt, images))
        self._history.append(result.model_turn)
        self._last = result
        if not self._settings["model"]:
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


class Conversation(_ConversationState):
    """A multi-turn editing session on a sync :class:`imagegen.Client`.

    Start one with :meth:`start` (or ``client.conversation(prompt)``), or build an
    empty one and call :meth:`refine`: the first turn uses ``Generate``, later
    turns ``Refine`` with the accumulated history. A failed turn leaves the
    history unchanged.
    """

    def __init__(
        self,
        client: Client,
        history: Iterable[TurnInput] = (),
        *,
        model: str | None = None,
        width: int | None = None,
        height: int | None = None,
        aspect_ratio: str | None = None,
        image_size: str | None = None,
        last: GenerationResult | None = None,
    ) -> None:
        super().__init__(
            history,
            model=model,
            width=width,
            height=height,
            aspect_ratio=aspect_ratio,
            image_size=image_size,
            last=last,
        )
        self.client = client

    @classmethod
    def start(
        cls,
        client: Client,
        prompt: str,
        *,
        input_images: Iterable[ImageInput] = (),
        model: str | None = None,
        width: int | None = None,
        height: int | None = None,
        aspect_ratio: str | None = None,
        image_size: str | None = None,
        seed: int | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
        metadata: MetadataInput | None = None,
    ) -> Conversation:
        """Generate the first image and return the conversation holding it."""
        conversation = cls(
            client, model=model, width=width, height=height, aspect_ratio=aspect_ratio, image_size=image_size
        )
        conversation.refine(
            prompt, input_images=input_images, seed=seed, request_id=request_id, timeout=timeout, metadata=metadata
        )
        return conversation

    @classmethod
    def from_json(cls, data: str | bytes | Mapping[str, Any], client: Client) -> Conversation:
        """Restore a conversation saved with :meth:`to_json` (or :meth:`to_dict`), bound to ``client``."""
        history, settings, last = cls._parse(data)
        return cls(client, history, last=last, **settings)

    def refine(
        self,
        prompt: str,
        *,
        input_images: Iterable[ImageInput] = (),
        model: str | None = None,
        width: int | None = None,
        height: int | None = None,
        aspect_ratio: str | None = None,
        image_size: str | None = None,
        seed: int | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
        metadata: MetadataInput | None = None,
    ) -> GenerationResult:
        """Run the next turn (``Generate`` when the history is empty, else ``Refine``) and record it."""
        images = tuple(to_image_proto(image) for image in input_images)
        options = self._options(
            {"model": model, "width": width, "height": height, "aspect_ratio": aspect_ratio, "image_size": image_size}
        )
        if self._history:
            result = self.client.refine(
                prompt,
                history=self._history,
                input_images=images,
                seed=seed,
                request_id=request_id,
                timeout=timeout,
                metadata=metadata,
                **options,
            )
        else:
            result = self.client.generate(
                prompt,
                input_images=images,
                seed=seed,
                request_id=request_id,
                timeout=timeout,
                metadata=metadata,
                **options,
            )
        self._record(prompt, images, result)
        return result

    def refine_stream(
        self,
        prompt: str,
        *,
        input_images: Iterable[ImageInput] = (),
        model: str | None = None,
        width: int | None = None,
        height: int | None = None,
        aspect_ratio: str | None = None,
        image_size: str | None = None,
        seed: int | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
        metadata: MetadataInput | None = None,
    ) -> EventStream:
        """Like :meth:`refine`, streaming progress events; the turn is recorded when ``Completed`` arrives."""
        from imagegen.client import EventStream

        images = tuple(to_image_proto(image) for image in input_images)
        options = self._options(
            {"model": model, "width": width, "height": height, "aspect_ratio": aspect_ratio, "image_size": image_size}
        )
        if self._history:
            stream = self.client.refine_stream(
                prompt,
                history=tuple(self._history),
                input_images=images,
                seed=seed,
                request_id=request_id,
                timeout=timeout,
                metadata=metadata,
                **options,
            )
        else:
            stream = self.client.generate_stream(
                prompt,
                input_images=images,
                seed=seed,
                request_id=request_id,
                timeout=timeout,
                metadata=metadata,
                **options,
            )
        return EventStream(stream._events, on_completed=lambda result: self._record(prompt, images, result))

    def __repr__(self) -> str:
        return f"Conversation(turns={len(self._history)}, model={self.model!r})"


class AsyncConversation(_ConversationState):
    """A multi-turn editing session on an :class:`imagegen.AsyncClient`; see :class:`Conversation`."""

    def __init__(
        self,
        client: AsyncClient,
        history: Iterable[TurnInput] = (),
        *,
        model: str | None = None,
        width: int | None = None,
        height: int | None = None,
        aspect_ratio: str | None = None,
        image_size: str | None = None,
        last: GenerationResult | None = None,
    ) -> None:
        super().__init__(
            history,
            model=model,
            width=width,
            height=height,
            aspect_ratio=aspect_ratio,
            image_size=image_size,
            last=last,
        )
        self.client = client

    @classmethod
    async def start(
        cls,
        client: AsyncClient,
        prompt: str,
        *,
        input_images: Iterable[ImageInput] = (),
        model: str | None = None,
        width: int | None = None,
        height: int | None = None,
        aspect_ratio: str | None = None,
        image_size: str | None = None,
        seed: int | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
        metadata: MetadataInput | None = None,
    ) -> AsyncConversation:
        """Generate the first image and return the conversation holding it."""
        conversation = cls(
            client, model=model, width=width, height=height, aspect_ratio=aspect_ratio, image_size=image_size
        )
        await conversation.refine(
            prompt, input_images=input_images, seed=seed, request_id=request_id, timeout=timeout, metadata=metadata
        )
        return conversation

    @classmethod
    def from_json(cls, data: str | bytes | Mapping[str, Any], client: AsyncClient) -> AsyncConversation:
        """Restore a conversation saved with :meth:`to_json` (or :meth:`to_dict`), bound to ``client``."""
        history, settings, last = cls._parse(data)
        return cls(client, history, last=last, **settings)

    async def refine(
        self,
        prompt: str,
        *,
        input_images: Iterable[ImageInput] = (),
        model: str | None = None,
        width: int | None = None,
        height: int | None = None,
        aspect_ratio: str | None = None,
        image_size: str | None = None,
        seed: int | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
        metadata: MetadataInput | None = None,
    ) -> GenerationResult:
        """Run the next turn (``Generate`` when the history is empty, else ``Refine``) and record it."""
        images = tuple(to_image_proto(image) for image in input_images)
        options = self._options(
            {"model": model, "width": width, "height": height, "aspect_ratio": aspect_ratio, "image_size": image_size}
        )
        if self._history:
            result = await self.client.refine(
                prompt,
                history=self._history,
                input_images=images,
                seed=seed,
                request_id=request_id,
                timeout=timeout,
                metadata=metadata,
                **options,
            )
        else:
            result = await self.client.generate(
                prompt,
                input_images=images,
                seed=seed,
                request_id=request_id,
                timeout=timeout,
                metadata=metadata,
                **options,
            )
        self._record(prompt, images, result)
        return result

    def refine_stream(
        self,
        prompt: str,
        *,
        input_images: Iterable[ImageInput] = (),
        model: str | None = None,
        width: int | None = None,
        height: int | None = None,
        aspect_ratio: str | None = None,
        image_size: str | None = None,
        seed: int | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
        metadata: MetadataInput | None = None,
    ) -> AsyncEventStream:
        """Like :meth:`refine`, streaming progress events; the turn is recorded when ``Completed`` arrives."""
        from imagegen.client import AsyncEventStream

        images = tuple(to_image_proto(image) for image in input_images)
        options = self._options(
            {"model": model, "width": width, "height": height, "aspect_ratio": aspect_ratio, "image_size": image_size}
        )
        if self._history:
            stream = self.client.refine_stream(
                prompt,
                history=tuple(self._history),
                input_images=images,
                seed=seed,
                request_id=request_id,
                timeout=timeout,
                metadata=metadata,
                **options,
            )
        else:
            stream = self.client.generate_stream(
                prompt,
                input_images=images,
                seed=seed,
                request_id=request_id,
                timeout=timeout,
                metadata=metadata,
                **options,
            )
        return AsyncEventStream(stream._events, on_completed=lambda result: self._record(prompt, images, result))

    def __repr__(self) -> str:
        return f"AsyncConversation(turns={len(self._history)}, model={self.model!r})"
