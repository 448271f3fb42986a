"""The transport-independent half of a conversation: history, settings, turn options and JSON persistence.

:class:`imagegen.Conversation` and :class:`imagegen.AsyncConversation` add the calls.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, Generic, Self, TypeVar

from google.protobuf import json_format

from imagegen._convert import GenerationKwargs, TurnInput, to_image_proto, to_turn_proto, user_turn
from imagegen.types import GenerationResult, Turn
from imagegen.v1 import image_pb2

__all__ = ["FORMAT", "ConversationState"]

#: The ``format`` tag of :meth:`Conversation.to_json` documents.
FORMAT = "imagegen.conversation.v1"

_SIZE_KEYS = ("width", "height", "aspect_ratio", "image_size")
_SETTING_KEYS = ("model", *_SIZE_KEYS)
_JSON_KEYS = {"model": "model", "width": "width", "height": "height"}
_JSON_KEYS.update({"aspect_ratio": "aspectRatio", "image_size": "imageSize"})

# The client is only stored here; the conversation classes call it.
_ClientT = TypeVar("_ClientT")


class ConversationState(Generic[_ClientT]):
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
