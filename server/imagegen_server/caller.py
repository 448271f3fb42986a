"""Who is calling: the authenticated caller of the current RPC, for logs, metrics, quotas and idempotency.

The access interceptor binds the caller once per RPC (:func:`bind_caller`);
everything below it (the pipeline, the access log) reads it with
:func:`current_caller`. Each RPC runs in its own task, so the binding never
leaks between calls, and tasks the RPC starts inherit it.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated (or anonymous) caller."""

    #: The caller's name: a tokens-file entry's name, a client certificate's identity, or ``anonymous``.
    name: str
    #: The name as a metric label: only names from the tokens file, ``anonymous`` or ``other``,
    #: so a certificate authority issuing many names cannot grow the metrics without bound.
    label: str


#: The caller of a server that checks no credentials.
ANONYMOUS = Caller("anonymous", "anonymous")

_CALLER: ContextVar[Caller] = ContextVar("imagegen_caller", default=ANONYMOUS)


def bind_caller(caller: Caller) -> None:
    """Make ``caller`` the caller of the current RPC (and the tasks it starts)."""
    _CALLER.set(caller)


def current_caller() -> Caller:
    """The caller of the current RPC; :data:`ANONYMOUS` outside an authenticated call."""
    return _CALLER.get()
