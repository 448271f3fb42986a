"""The API key kept out of everything upstream sends back: one scrub where its answers enter.

A proxy or a misbehaving upstream may echo the key it received anywhere: an error's
message or details (429 quota descriptions, field violations, reasons), or a successful
answer's text, model version, response id, finish reason. :class:`KeyScrubber` replaces
it in every string of an :class:`UpstreamError`, :class:`UpstreamResult` or draft image,
whatever field it is in (new fields included: it walks them all), and refuses an answer
whose binary fields (image bytes, thought signatures) contain it, since rewriting those
would corrupt them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Final, TypeVar, cast

from imagegen_server.gemini.errors import ErrorKind, UpstreamError

__all__ = ["REDACTED", "KeyScrubber"]

#: What replaces the key.
REDACTED: Final = "[REDACTED]"

#: Keys shorter than this are test placeholders; scrubbing them would mangle
#: ordinary words in messages ("test" in "latest").
MIN_SECRET_CHARS: Final = 8

_T = TypeVar("_T")


class _KeyInBytes(Exception):
    """The key turned up inside binary data, which cannot be rewritten."""


class KeyScrubber:
    """Removes one secret (the API key) from upstream's errors and answers."""

    def __init__(self, key: str | None) -> None:
        self._key = key if key and len(key) >= MIN_SECRET_CHARS else None
        self._key_bytes = self._key.encode() if self._key else b""

    def text(self, text: str) -> str:
        """``text`` with the key replaced."""
        return text.replace(self._key, REDACTED) if self._key and self._key in text else text

    def error(self, error: UpstreamError) -> UpstreamError:
        """``error`` with the key taken out of every attribute (in place, also returned)."""
        if self._key is None:
            return error
        for name, value in list(vars(error).items()):
            try:
                setattr(error, name, self._clean(value))
            except _KeyInBytes:
                setattr(error, name, type(value)())
        error.args = (error.message,)
        return error

    def answer(self, value: _T, *, model: str = "") -> _T:
        """A successful answer (an ``UpstreamResult`` or a draft ``InlineImage``) with the key taken out.

        Raises a MALFORMED :class:`UpstreamError` when the key is inside its image bytes or a signature.
        """
        if self._key is None:
            return value
        try:
            return cast(_T, self._clean(value))
        except _KeyInBytes:
            raise UpstreamError(
                ErrorKind.MALFORMED,
                "malformed Gemini answer: its binary data carries the server's API key; dropped",
                model=model,
            ) from None

    def _clean(self, value: Any, searched: set[int] | None = None) -> Any:
        # ``searched``: the bytes objects already searched. An answer's image is in its result
        # and again in its model turn, and searching megabytes twice showed in profiles.
        searched = set() if searched is None else searched
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, bytes):
            if id(value) not in searched:
                if self._key_bytes in value:
                    raise _KeyInBytes
                searched.add(id(value))
            return value
        if isinstance(value, tuple):
            return tuple(self._clean(item, searched) for item in value)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            changes = {f.name: self._clean(getattr(value, f.name), searched) for f in dataclasses.fields(value)}
            return dataclasses.replace(value, **changes)
        return value
