"""How an ``imagegen`` command ends: one exit code per outcome, and one line of text per failure.

:data:`EXIT_CODES` is the single table: ``imagegen --help`` prints it and a test
holds the README's list to it.
"""

from __future__ import annotations

import grpc

from imagegen import (
    AuthenticationError,
    ContentPolicyError,
    DeadlineExceededError,
    ImagegenError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    UnavailableError,
)

EXIT_OK = 0
EXIT_OTHER = 1
EXIT_USAGE = 2
EXIT_CONTENT_BLOCKED = 3
EXIT_RATE_LIMITED = 4
EXIT_UNAVAILABLE = 5
EXIT_NOT_FOUND = 6
#: ``imagegen serve`` could not listen (``imagegen_server.cli.EXIT_CANNOT_LISTEN``, the same number).
EXIT_CANNOT_LISTEN = 7
EXIT_NOT_AUTHORIZED = 8
EXIT_INTERRUPTED = 130

#: Every exit code and what it means, in order.
EXIT_CODES: tuple[tuple[int, str], ...] = (
    (EXIT_OK, "success"),
    (EXIT_OTHER, "any other error (no image in the answer, an internal error, a missing extra)"),
    (
        EXIT_USAGE,
        "invalid input: a flag, --target, a local file or a request field; "
        "serve: a flag combination it refuses (e.g. a public --host without TLS and auth)",
    ),
    (EXIT_CONTENT_BLOCKED, "content blocked by the model's safety filters"),
    (EXIT_RATE_LIMITED, "rate limited or quota exhausted"),
    (EXIT_UNAVAILABLE, "server unreachable or unavailable, or the deadline passed"),
    (EXIT_NOT_FOUND, "not found (an unknown model or health service)"),
    (EXIT_CANNOT_LISTEN, "serve: the port is already in use, or the address cannot be bound"),
    (EXIT_NOT_AUTHORIZED, "no valid credentials (token or client certificate), or the method is not allowed"),
    (EXIT_INTERRUPTED, "interrupted (Ctrl-C)"),
)

#: Exit code per SDK error class; the first matching class wins, anything else exits 1.
_ERROR_EXIT_CODES: tuple[tuple[type[ImagegenError], int], ...] = (
    (InvalidRequestError, EXIT_USAGE),
    (ContentPolicyError, EXIT_CONTENT_BLOCKED),
    (RateLimitError, EXIT_RATE_LIMITED),
    (UnavailableError, EXIT_UNAVAILABLE),
    (DeadlineExceededError, EXIT_UNAVAILABLE),
    (NotFoundError, EXIT_NOT_FOUND),
    (AuthenticationError, EXIT_NOT_AUTHORIZED),
    (PermissionDeniedError, EXIT_NOT_AUTHORIZED),
)


def exit_code_for(error: ImagegenError) -> int:
    """The exit code for an SDK error."""
    for cls, code in _ERROR_EXIT_CODES:
        if isinstance(error, cls):
            return code
    return EXIT_OTHER


def exit_codes_help() -> str:
    """The exit-code table as help text."""
    return "exit codes:\n" + "\n".join(f"  {code:<4} {meaning}" for code, meaning in EXIT_CODES)


def _from_server(error: ImagegenError) -> bool:
    """True when the server answered: every error it sends carries an ErrorInfo reason."""
    return bool(error.reason)


def describe_error(error: ImagegenError, target: str) -> str:
    """One line for a failed call to ``target``, with a hint when the server was never reached."""
    if isinstance(error, UnavailableError) and not _from_server(error):
        lowered = error.message.lower()
        detail, hint = next(
            ((d, h) for needles, d, h in _CONNECTION_FAILURES if any(n in lowered for n in needles)),
            ("no connection", _NOT_RUNNING),
        )
        if not detail:
            return f"cannot resolve the host of {target}; {hint}"
        return f"cannot reach an imagegen server at {target} ({detail}); {hint}"
    if error.code == grpc.StatusCode.DEADLINE_EXCEEDED and not _from_server(error):
        return f"deadline exceeded: no answer from {target} in time (raise --timeout; is the server reachable?)"
    label = {
        EXIT_USAGE: "invalid request",
        EXIT_CONTENT_BLOCKED: "content blocked",
        EXIT_RATE_LIMITED: "rate limited",
        EXIT_UNAVAILABLE: "unavailable" if isinstance(error, UnavailableError) else "deadline exceeded",
        EXIT_NOT_FOUND: "not found",
        EXIT_NOT_AUTHORIZED: "not authorized",
    }.get(exit_code_for(error), type(error).__name__)
    text = f"{label}: {error}"
    if isinstance(error, ContentPolicyError):
        side = f"{error.block_side} side" if error.block_side else ""
        why = ", ".join(x for x in (side, error.block_reason or "") if x)
        if why:
            text += f" [{why}]"
    return text


_NOT_RUNNING = "is `imagegen serve` running there? Pass --target or set IMAGEGEN_TARGET"

#: gRPC's connection error text is long and meant for gRPC developers: (words in it, a few words for
#: the user, what to try). The first match wins; an empty detail means the host name did not resolve.
_CONNECTION_FAILURES: tuple[tuple[tuple[str, ...], str, str], ...] = (
    (("connection refused",), "connection refused", _NOT_RUNNING),
    (("resolv", "lookup", "domain name"), "", "check --target or IMAGEGEN_TARGET"),
    (
        ("wrong_version_number",),
        "TLS handshake failed",
        "the server does not speak TLS: drop --tls and --ca-cert",
    ),
    (
        ("certificate_verify_failed",),
        "TLS handshake failed: its certificate is not trusted",
        "pass the CA that signed it with --ca-cert",
    ),
    (("handshake",), "TLS handshake failed", "check --ca-cert, --client-cert and --client-key"),
    (
        ("socket closed", "connection reset"),
        "the server closed the connection",
        "does it require TLS (--tls or --ca-cert)?",
    ),
    (("timed out", "timeout"), "connection timed out", _NOT_RUNNING),
)


class UsageError(Exception):
    """A problem with the command line or local files (exit 2)."""
