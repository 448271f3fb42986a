"""Incremental parser for Gemini's ``streamGenerateContent?alt=sse`` bodies.

Gemini sends one ``data: <JSON>`` line per event followed by a blank line, with
no ``event:`` field and no ``[DONE]`` sentinel. The parser follows the
google-genai SDK so that anything the SDK reads, we read too:

* the ``data:`` prefix is stripped (with one optional space, as the SSE spec says);
* consecutive ``data:`` lines are joined with ``\\n`` and a blank line ends the event;
* ``\\n`` and ``\\r\\n`` line endings are both accepted;
* lines that are not SSE fields are collected into a brace-balanced raw JSON
  buffer, which is how an error body written line by line arrives.

It only splits bytes into JSON texts; decoding and classifying them is the
caller's job. No I/O.
"""

from __future__ import annotations

import re

__all__ = ["DEFAULT_MAX_EVENT_BYTES", "SSEError", "SSEParser"]

#: Upper bound on one event. A 4K PNG is ~30 MB of base64; this leaves room for
#: a few while still stopping a runaway stream from eating all memory.
DEFAULT_MAX_EVENT_BYTES = 256 * 1024 * 1024

_IGNORED_FIELDS = ("event:", "id:", "retry:")
_JSON_STRING_RE = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')


class SSEError(ValueError):
    """The byte stream cannot be split into events (bad UTF-8, oversized, cut-off JSON)."""


class SSEParser:
    """Feed bytes in, get complete JSON payload strings out.

    >>> p = SSEParser()
    >>> p.feed(b'data: {"a": 1}\\r\\n\\r\\ndata: {"b"')
    ['{"a": 1}']
    >>> p.feed(b": 2}\\n\\n")
    ['{"b": 2}']
    >>> p.close()
    []
    """

    def __init__(self, *, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self._max = max_event_bytes
        # The pieces of a line not finished yet, and their size: a 30 MB line
        # arriving in 64 KB pieces is joined once, when its newline comes.
        self._pending: list[bytes | memoryview] = []
        self._pending_size = 0
        self._data: list[str] = []
        self._data_size = 0
        self._raw: list[str] = []
        self._raw_size = 0
        self._depth = 0

    def feed(self, chunk: bytes) -> list[str]:
        """Consume ``chunk`` and return the payloads it completed, in order."""
        out: list[str] = []
        if not isinstance(chunk, bytes):
            chunk = bytes(chunk)
        start = 0
        while (newline := chunk.find(b"\n", start)) >= 0:
            if self._pending:
                self._pending.append(memoryview(chunk)[start:newline])
                self._take_pending(out)
            else:
                end = newline - 1 if newline > start and chunk[newline - 1] == 0x0D else newline
                self._take(chunk, start, end, out)
            start = newline + 1
        if start < len(chunk):
            self._pending.append(memoryview(chunk)[start:] if start else chunk)
            self._pending_size += len(chunk) - start
            if self._pending_size > self._max:
                raise SSEError(f"SSE line longer than {self._max} bytes")
        return out

    def close(self) -> list[str]:
        """Flush at end of stream: a final event needs no trailing blank line.

        Raises :class:`SSEError` if a raw JSON body was cut off mid-object.
        """
        out: list[str] = []
        if self._pending:
            self._take_pending(out)
        self._flush_data(out)
        if self._raw:
            raise SSEError("stream ended inside a JSON body (unbalanced braces)")
        return out

    def _take_pending(self, out: list[str]) -> None:
        line = b"".join(self._pending)
        self._pending.clear()
        self._pending_size = 0
        self._take(line, 0, len(line) - 1 if line.endswith(b"\r") else len(line), out)

    def _take(self, buf: bytes, start: int, end: int, out: list[str]) -> None:
        """Handle the line ``buf[start:end]`` (its end of line removed)."""
        if not self._raw and buf.startswith(b"data:", start, end):
            # The common case, an event's data: decoded once, without the prefix.
            begin = start + 5
            if begin < end and buf[begin] == 0x20:
                begin += 1
            self._data_line(self._decode(buf, begin, end))
            return
        self._line(self._decode(buf, start, end), out)

    @staticmethod
    def _decode(buf: bytes, start: int, end: int) -> str:
        try:
            return str(memoryview(buf)[start:end], "utf-8")
        except UnicodeDecodeError as exc:
            raise SSEError(f"SSE line is not UTF-8: {exc.reason}") from None

    def _line(self, line: str, out: list[str]) -> None:
        """Any line but an event's ``data:`` (see :meth:`_take`)."""
        if self._raw:
            # Inside a raw JSON body every line belongs to it, even a blank one
            # or one that happens to start with "data:".
            self._raw_line(line, out)
            return
        if line == "":
            self._flush_data(out)
            return
        if line.startswith(":") or line.startswith(_IGNORED_FIELDS):
            return
        if line.strip() == "":
            return
        # A raw line starts a brace-balanced body; one without braces (stray
        # text such as a proxy's error page) is handed on as is, so the caller
        # can report it as malformed rather than it being silently dropped.
        self._flush_data(out)
        self._raw_line(line, out)

    def _data_line(self, value: str) -> None:
        self._data_size += len(value)
        if self._data_size > self._max:
            raise SSEError(f"SSE event larger than {self._max} bytes")
        self._data.append(value)

    def _raw_line(self, line: str, out: list[str]) -> None:
        self._raw.append(line)
        self._raw_size += len(line)
        if self._raw_size > self._max:
            raise SSEError(f"raw JSON body larger than {self._max} bytes")
        self._track_braces(line)
        if self._depth <= 0:
            out.append("\n".join(self._raw))
            self._raw.clear()
            self._raw_size = 0
            self._depth = 0

    def _track_braces(self, line: str) -> None:
        # Braces inside JSON strings (a message quoting "{x}") must not count.
        # JSON strings cannot span lines, so each line's strings are removed
        # on their own; a regex keeps this fast on a 30 MB one-line body.
        bare = _JSON_STRING_RE.sub("", line)
        self._depth += bare.count("{") + bare.count("[") - bare.count("}") - bare.count("]")

    def _flush_data(self, out: list[str]) -> None:
        if self._data:
            out.append("\n".join(self._data))
            self._data.clear()
            self._data_size = 0
