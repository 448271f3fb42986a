"""Caller authentication: bearer tokens checked against a tokens file, client certificates, and who may call what.

The tokens file (``--auth-tokens-file``, TOML) lists callers; each has a
name, the SHA-256 of its token(s) (never the token itself), the methods it may
call and its quotas::

    [[callers]]
    name = "render-farm"
    token_sha256 = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"
    methods = ["imagegen.v1.ImageGenerationService/*"]   # globs; default: every method
    requests_per_minute = 60                                  # default: unlimited
    max_concurrent = 4                                        # default: unlimited

:class:`TokensFile` re-reads the file when it changes on disk (a broken edit
keeps the previous version and logs why). :class:`Authenticator` turns a
call's metadata (and, with mutual TLS, its client certificate's identity) into
a :class:`~imagegen_server.caller.Caller` and the entry that governs it, or an
UNAUTHENTICATED / PERMISSION_DENIED status. Tokens are compared as SHA-256
digests with :func:`hmac.compare_digest`, against every entry, so the time
taken says nothing about which entry nearly matched.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import threading
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

import grpc

from imagegen.v1.error_reason_pb2 import ErrorReason
from imagegen_server import errors
from imagegen_server.caller import ANONYMOUS, Caller
from imagegen_server.config import DEFAULT_OPEN_METHODS, ConfigError
from imagegen_server.errors import ServiceError

log = logging.getLogger(__name__)

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@:-]{0,63}")
_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")
_ENTRY_KEYS = {"name", "token_sha256", "methods", "requests_per_minute", "burst", "max_concurrent"}
#: The longest certificate identity kept (names in logs stay short).
_MAX_IDENTITY = 128


class TokensFileError(ConfigError):
    """The tokens file cannot be read or is not valid (said in one line)."""


@dataclass(frozen=True, slots=True)
class Quota:
    """A caller's limits; None means unlimited."""

    #: Sustained rate (a token bucket refilled at this many calls per minute).
    requests_per_minute: float | None = None
    #: How many calls may come at once after a quiet spell; default: a tenth of a minute's worth, at least 1.
    burst: int | None = None
    #: Calls running at the same time.
    max_concurrent: int | None = None


#: No limits at all.
UNLIMITED = Quota()


@dataclass(frozen=True, slots=True)
class CallerEntry:
    """One caller of the tokens file."""

    name: str
    #: SHA-256 digests of the caller's tokens (several while a token is being rotated).
    token_digests: tuple[bytes, ...]
    #: Glob patterns over full method names (``imagegen.v1.ImageGenerationService/Generate``).
    methods: tuple[str, ...]
    quota: Quota

    def allows(self, method: str) -> bool:
        """Whether the caller may call ``method`` (``/package.Service/Method``)."""
        return method_matches(method, self.methods)


def method_matches(method: str, patterns: Iterable[str]) -> bool:
    """Whether the full method name matches one of the glob patterns (leading slashes ignored)."""
    name = method.lstrip("/")
    return any(fnmatchcase(name, pattern.lstrip("/")) for pattern in patterns)


@dataclass(frozen=True, slots=True)
class Tokens:
    """The callers of one read of the tokens file."""

    entries: tuple[CallerEntry, ...]

    def by_token(self, token: str) -> CallerEntry | None:
        """The entry holding ``token``, compared in constant time against every digest of every entry."""
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        found: CallerEntry | None = None
        for entry in self.entries:
            for candidate in entry.token_digests:
                # No early exit: every digest is compared, whichever matches.
                if hmac.compare_digest(candidate, digest) and found is None:
                    found = entry
        return found

    def by_name(self, name: str) -> CallerEntry | None:
        """The entry called ``name`` (a client certificate's identity), if any."""
        return next((entry for entry in self.entries if entry.name == name), None)

    def caller(self, name: str) -> Caller:
        """A caller with a bounded metric label: the name if the file lists it, else ``other``."""
        return Caller(name, name if self.by_name(name) is not None else "other")


def parse_tokens(text: str, source: str) -> Tokens:
    """Parse a tokens file's TOML text; raise :class:`TokensFileError` naming ``source`` and the problem."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TokensFileError(f"{source} is not valid TOML: {exc}") from exc
    unknown = set(document) - {"callers"}
    if unknown:
        raise TokensFileError(f"{source}: unknown top-level key(s) {', '.join(sorted(unknown))}; expected [[callers]]")
    raw_entries = document.get("callers", [])
    if not isinstance(raw_entries, list):
        raise TokensFileError(f"{source}: callers must be an array of tables ([[callers]])")
    entries: list[CallerEntry] = []
    for index, raw in enumerate(raw_entries):
        where = f"{source}: callers[{index}]"
        if not isinstance(raw, dict):
            raise TokensFileError(f"{where} must be a table")
        entries.append(_entry(raw, where))
    names = [e.name for e in entries]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate is not None:
        raise TokensFileError(f"{source}: the name {duplicate!r} appears more than once")
    digests = [d for e in entries for d in e.token_digests]
    if len(set(digests)) != len(digests):
        raise TokensFileError(f"{source}: the same token_sha256 is given to more than one caller")
    return Tokens(tuple(entries))


def _entry(raw: Mapping[str, Any], where: str) -> CallerEntry:
    unknown = set(raw) - _ENTRY_KEYS
    if unknown:
        raise TokensFileError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise TokensFileError(f"{where}: name must be 1-64 characters of letters, digits and ._@:-")
    where = f"{where} ({name})"
    tokens = raw.get("token_sha256", [])
    tokens = [tokens] if isinstance(tokens, str) else tokens
    if not isinstance(tokens, list) or not all(isinstance(t, str) and _HEX_DIGEST.fullmatch(t) for t in tokens):
        raise TokensFileError(
            f"{where}: token_sha256 must be the token's SHA-256 as 64 lowercase hex digits, or a list"
        )
    methods = raw.get("methods", ["*"])
    if not isinstance(methods, list) or not methods or not all(isinstance(m, str) and m for m in methods):
        raise TokensFileError(f"{where}: methods must be a non-empty list of method names or globs")
    return CallerEntry(
        name=name,
        token_digests=tuple(bytes.fromhex(t) for t in tokens),
        methods=tuple(methods),
        quota=Quota(
            requests_per_minute=_positive(raw, "requests_per_minute", where, whole=False),
            burst=_whole(_positive(raw, "burst", where, whole=True)),
            max_concurrent=_whole(_positive(raw, "max_concurrent", where, whole=True)),
        ),
    )


def _positive(raw: Mapping[str, Any], key: str, where: str, *, whole: bool) -> float | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise TokensFileError(f"{where}: {key} must be a positive number")
    if whole and not isinstance(value, int):
        raise TokensFileError(f"{where}: {key} must be a whole number")
    return value


def _whole(value: float | None) -> int | None:
    return None if value is None else int(value)


class TokensFile:
    """The tokens file at ``path``, re-read when its modification time or size changes."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._stamp = self._stat()
        self._tokens = self._read()
        self._rejected: tuple[int, int] | None = None

    @property
    def path(self) -> str:
        """Where the file is."""
        return self._path

    def current(self) -> Tokens:
        """The callers as the file says now (the previous version while the file is broken)."""
        try:
            stamp = self._stat()
        except TokensFileError as exc:
            self._warn_once(None, exc)
            return self._tokens
        if stamp in (self._stamp, self._rejected):
            return self._tokens
        with self._lock:
            if stamp != self._stamp:
                try:
                    tokens = self._read()
                except TokensFileError as exc:
                    self._warn_once(stamp, exc)
                    return self._tokens
                self._tokens, self._stamp = tokens, stamp
                log.info("tokens file %s reloaded: %d caller(s)", self._path, len(tokens.entries))
        return self._tokens

    def _warn_once(self, stamp: tuple[int, int] | None, exc: TokensFileError) -> None:
        if stamp is None or stamp != self._rejected:
            log.warning("tokens file not reloaded, keeping the previous version: %s", exc)
        if stamp is not None:
            self._rejected = stamp

    def _stat(self) -> tuple[int, int]:
        try:
            st = os.stat(self._path)
        except OSError as exc:
            raise TokensFileError(f"cannot read the tokens file {self._path}: {exc.strerror}") from exc
        return st.st_mtime_ns, st.st_size

    def _read(self) -> Tokens:
        try:
            with open(self._path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise TokensFileError(f"cannot read the tokens file {self._path}: {exc}") from exc
        return parse_tokens(text, self._path)


@dataclass(frozen=True, slots=True)
class Verdict:
    """Who is calling and what governs the call."""

    caller: Caller
    #: The caller's quotas.
    quota: Quota


#: The verdict for a server that checks no credentials.
OPEN = Verdict(ANONYMOUS, UNLIMITED)


class Authenticator:
    """Decides who a call comes from, and whether it may go on.

    ``tokens``: the tokens file, or None. ``client_certificates``: the port
    requires client certificates (mutual TLS). With neither, every call is
    ``anonymous`` and nothing is checked. ``open_methods``: globs of methods
    anyone may call (health, reflection).
    """

    def __init__(
        self,
        tokens: TokensFile | None,
        *,
        client_certificates: bool,
        open_methods: Sequence[str] = DEFAULT_OPEN_METHODS,
    ) -> None:
        self._tokens = tokens
        self._client_certificates = client_certificates
        self._open_methods = tuple(open_methods)

    @property
    def enabled(self) -> bool:
        """True when callers must prove who they are."""
        return self._tokens is not None or self._client_certificates

    def is_open(self, method: str) -> bool:
        """Whether ``method`` needs no credentials."""
        return not self.enabled or method_matches(method, self._open_methods)

    def by_metadata(self, method: str, metadata: Iterable[tuple[str, str | bytes]] | None) -> Verdict | None:
        """Decide from the call's metadata alone, before its body is read.

        Returns the verdict, or None when the client certificate decides
        (mutual TLS, no token). Raises the UNAUTHENTICATED/PERMISSION_DENIED
        status otherwise.
        """
        if self.is_open(method):
            return OPEN
        token = _bearer_token(metadata)
        if token is None or self._tokens is None:
            if self._client_certificates:
                return None
            raise _credentials_missing(method)
        tokens = self._tokens.current()
        entry = tokens.by_token(token) if token else None
        if entry is None:
            raise _credentials_invalid(method)
        return _permit(method, Caller(entry.name, entry.name), entry)

    def by_certificate(self, method: str, identity: str | None) -> Verdict:
        """Decide from the verified client certificate's identity (mutual TLS, no token)."""
        if identity is None:
            raise _credentials_missing(method)
        name = _clean_identity(identity)
        if self._tokens is None:
            return Verdict(Caller(name, "other"), UNLIMITED)
        tokens = self._tokens.current()
        entry = tokens.by_name(name)
        if entry is None:
            # Any certificate the client CA signed may call; the tokens file only narrows named callers.
            return Verdict(tokens.caller(name), UNLIMITED)
        return _permit(method, tokens.caller(name), entry)


def _permit(method: str, caller: Caller, entry: CallerEntry) -> Verdict:
    if not entry.allows(method):
        raise errors.build(
            grpc.StatusCode.PERMISSION_DENIED,
            f"caller {caller.name!r} may not call {method}",
            ErrorReason.ERROR_REASON_METHOD_NOT_ALLOWED,
            {"method": method, "caller": caller.name},
        )
    return Verdict(caller, entry.quota)


def _bearer_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The token of ``authorization: Bearer <token>``; ``""`` for any other authorization value; None without one."""
    for key, value in metadata or ():
        if key.lower() != "authorization":
            continue
        text = value.decode("latin-1") if isinstance(value, bytes) else value
        scheme, _, token = text.strip().partition(" ")
        return token.strip() if scheme.lower() == "bearer" else ""
    return None


def _clean_identity(identity: str) -> str:
    """A certificate identity safe for logs: printable, at most 128 characters."""
    cleaned = "".join(ch if ch.isprintable() else "?" for ch in identity)
    return cleaned[:_MAX_IDENTITY]


def _credentials_missing(method: str) -> ServiceError:
    return errors.build(
        grpc.StatusCode.UNAUTHENTICATED,
        "this server requires credentials: send 'authorization: Bearer <token>' metadata"
        " (or a client certificate where mutual TLS is on)",
        ErrorReason.ERROR_REASON_CREDENTIALS_MISSING,
        {"method": method},
    )


def _credentials_invalid(method: str) -> ServiceError:
    return errors.build(
        grpc.StatusCode.UNAUTHENTICATED,
        "the bearer token is not valid for this server",
        ErrorReason.ERROR_REASON_CREDENTIALS_INVALID,
        {"method": method},
    )
