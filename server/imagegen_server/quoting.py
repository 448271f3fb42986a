"""Untrusted text (a caller's strings, upstream's answers) made safe to show: cut short and control characters escaped.

A caller's model name or request id may be 20 KB long or contain a newline; quoted as is,
the first overflows the 16 KiB status trailer (the client then sees RESOURCE_EXHAUSTED
"Stream removed" instead of the real error) and the second forges a line in the logs.
:func:`shown` is how such a value appears in a message; :func:`escape_controls` is
how any text appears in a log line. Pure functions, no dependencies.
"""

from __future__ import annotations

import re
from typing import Final

#: A caller's value quoted in a message (model, aspect ratio, MIME type...): enough to recognise it.
SHOWN_CHARS: Final = 80

#: C0 and C1 controls, DEL, the Unicode line and paragraph separators, and the bidirectional
#: embedding/override/isolate controls (which can make a log line read backwards on screen).
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_controls(text: str) -> str:
    """``text`` with every control character written as an escape (``\\n``, ``\\x1b``, ``\\u2028``)."""
    return _CONTROLS.sub(_escape, text)


def cut(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, saying how long it was when cut."""
    if len(text) <= limit:
        return text
    suffix = f"…({len(text)} chars)"
    return text[: max(limit - len(suffix), 0)] + suffix


def shown(value: str, limit: int = SHOWN_CHARS) -> str:
    """A caller's string as quoted in a message: in quotes, escaped, at most about ``limit`` characters."""
    return "'" + cut(escape_controls(value), limit) + "'"
