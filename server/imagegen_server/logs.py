"""Log lines: one JSON object per line (or plain text), each tagged with the RPC it belongs to.

The RPC being served is described by an :class:`RpcLogContext` bound for its
task (:func:`bind_rpc`, by the observability layer, whichever transport
carries the call); tasks it starts inherit it. :class:`ContextFilter` copies
it onto every record, so the retry loop's lines name their request too.
:class:`JsonFormatter` writes the fixed field set operators query (time,
level, logger, message, caller, method, code, duration, attempts,
generation_id, request_id, trace_id); prompts only when the server was told to
(``--log-prompts``), images never (nothing logs them), and :class:`SafeLogFilter`
escapes control characters and blanks the API key should any message ever contain it.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from contextvars import ContextVar, Token
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, TextIO

import orjson

from imagegen_server.caller import current_caller
from imagegen_server.quoting import escape_controls

#: The text format (``--log-format text``): the generation id in brackets.
TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s [%(generation)s] %(message)s"

#: Fields a JSON line carries when its record (or the RPC it belongs to) has them, in this order.
JSON_FIELDS: Final = (
    "caller",
    "method",
    "code",
    "duration",
    "attempts",
    "generation_id",
    "request_id",
    "trace_id",
    "span_id",
    "prompt",
)


@dataclass(slots=True)
class RpcLogContext:
    """What the log lines of one RPC say about it; filled in as the RPC goes."""

    #: Full method name, ``imagegen.v1.ImageGenerationService/Generate``.
    method: str
    request_id: str = ""
    #: W3C trace id (32 hex digits) of the caller's or our span, when there is one.
    trace_id: str = ""
    span_id: str = ""
    caller: str = ""
    #: Upstream attempts the request made (set by :class:`AttemptsRecorder`).
    attempts: int | None = None


#: The RPC the current task serves; tasks it starts inherit a copy of the
#: reference (not of the object), so what they record reaches the RPC's line.
_RPC: ContextVar[RpcLogContext | None] = ContextVar("imagegen_rpc", default=None)
#: The generation the current task works on.
_GENERATION: ContextVar[str] = ContextVar("imagegen_generation", default="-")


def bind_rpc(context: RpcLogContext) -> Token[RpcLogContext | None]:
    """Make ``context`` the current task's RPC; returns the token to :func:`unbind_rpc` with."""
    return _RPC.set(context)


def unbind_rpc(token: Token[RpcLogContext | None]) -> None:
    """Undo :func:`bind_rpc`."""
    _RPC.reset(token)


def current_rpc() -> RpcLogContext | None:
    """The RPC the current task serves, if any."""
    return _RPC.get()


def bind_generation(generation_id: str) -> None:
    """Tag log records of the current RPC (and tasks it starts) with ``generation_id``."""
    _GENERATION.set(generation_id)


def current_generation() -> str:
    """The generation id of the current RPC, or ``-``."""
    return _GENERATION.get()


class ContextFilter(logging.Filter):
    """Adds the current RPC's fields to every record (``%(generation)s`` is ``-`` outside one).

    Fields the record already has (the access line passes its own) win.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Annotate the record; never drops it."""
        generation = _GENERATION.get()
        record.generation = generation
        if generation != "-" and not hasattr(record, "generation_id"):
            record.generation_id = generation
        rpc = _RPC.get()
        if rpc is not None:
            for name in ("method", "request_id", "trace_id", "span_id"):
                value = getattr(rpc, name)
                if value and not hasattr(record, name):
                    setattr(record, name, value)
            if not hasattr(record, "caller"):
                # Bound by the access checks once the RPC is admitted (anonymous until then).
                record.caller = escape_controls(current_caller().name)
        return True


class SafeLogFilter(logging.Filter):
    """Makes every record safe to write: control characters escaped, so one record is one line
    (a caller's newline cannot forge a log line), and the given secrets redacted (defence in depth:
    the API key is scrubbed where upstream text enters, this catches whatever slips past).

    Tracebacks keep their lines; only secrets are taken out of them.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        # Short values are test placeholders; redacting them would mangle ordinary words.
        self._secrets = tuple(secret for secret in secrets if len(secret) >= 8)

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "[REDACTED]")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record's message (and traceback text) in place; never drops it."""
        record.msg, record.args = escape_controls(self._redact(record.getMessage())), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self._redact(record.stack_info)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, RFC 3339), level, logger, message, then :data:`JSON_FIELDS`."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in JSON_FIELDS:
            value = getattr(record, name, None)
            if value is not None and value != "":
                line[name] = value
        if record.exc_text:  # SafeLogFilter's, with secrets taken out
            line["exception"] = record.exc_text
        elif record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


def resolve_format(log_format: str | None, stream: TextIO) -> str:
    """``json`` or ``text``: as asked, else JSON unless ``stream`` is a terminal."""
    if log_format:
        return log_format
    isatty = getattr(stream, "isatty", None)
    return "text" if isatty is not None and isatty() else "json"


def log_handler(
    log_format: str | None, stream: TextIO | None = None, *, secrets: Iterable[str | None] = ()
) -> logging.Handler:
    """A handler writing to ``stream`` (stderr) in ``log_format`` (None: JSON unless a terminal)."""
    stream = sys.stderr if stream is None else stream
    handler = logging.StreamHandler(stream)
    # One record, one line, and never the API key (its main scrub is where upstream text enters).
    handler.addFilter(SafeLogFilter(s for s in secrets if s))
    handler.addFilter(ContextFilter())
    if resolve_format(log_format, stream) == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    return handler
