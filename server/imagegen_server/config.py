"""Server configuration: one frozen dataclass, filled from flags and environment.

Precedence: command-line flag, then ``IMAGEGEN_*`` environment variable, then
the default. The API key is read only from the environment
(``GEMINI_API_KEY``, else ``GOOGLE_API_KEY``) so it never shows in ``ps``.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields

from imagegen_server.models import DEFAULT_MODEL, MODELS, find_model

GOOGLE_BASE_URL = "https://generativelanguage.googleapis.com"

#: Methods callable without credentials by default: health checks and server reflection.
DEFAULT_OPEN_METHODS = ("grpc.health.v1.Health/*", "grpc.reflection.*")

#: The seed's constraint text, sent as Gemini's systemInstruction when enabled.
DEFAULT_CONSTRAINT = """STRICT RULES:
- CREATE ORIGINAL ART - Do NOT use screenshots or existing images.
- TEXT RENDERING - Render ALL text EXACTLY as written.
- QUANTITIES - If prompt says "3 items" render EXACTLY 3.
- NO ADDITIONS - Do NOT add elements not mentioned.
"""


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine's loopback interface (``localhost``, 127.0.0.0/8, ``::1``).

    Anything else, a host name included, counts as reachable from the network.
    """
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if bare.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(bare).is_loopback
    except ValueError:
        return False


#: ``--state-fail-mode`` values: serve on this process's own state, or refuse what needs the shared one.
STATE_FAIL_MODES = ("open", "closed")
#: URL schemes redis-py connects to.
STATE_URL_SCHEMES = ("redis://", "rediss://", "unix://")


class ConfigError(ValueError):
    """The configuration cannot be served as given; the message says why in one sentence."""


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Everything the server needs to start. ``ServerConfig(port=0)`` is a
    loopback server on a free port with the embedded emulator."""

    host: str = "127.0.0.1"
    port: int = 50051
    #: Gemini's base URL; None means Google's, or the embedded emulator when
    #: there is no API key either.
    upstream_url: str | None = None
    api_version: str = "v1beta"
    api_key: str | None = field(default=None, repr=False)
    default_model: str = DEFAULT_MODEL
    allowed_models: tuple[str, ...] = tuple(m.name for m in MODELS)
    #: Send the seed's STRICT RULES text as a system instruction.
    strict_constraints: bool = True
    max_attempts: int = 3
    initial_backoff: float = 1.0
    max_backoff: float = 20.0
    max_upstream_delay: float = 60.0
    attempt_timeout: float = 120.0
    #: Retry budget, per model: within ``retry_budget_window`` seconds, retries
    #: that failed may number ``retry_budget_percent`` % of the requests plus
    #: ``retry_budget_min_retries`` (successful retries cost nothing).
    retry_budget_percent: float = 20.0
    retry_budget_min_retries: int = 20
    retry_budget_window: float = 60.0
    #: Longest silence once an upstream answer has begun (headers received):
    #: a body or SSE stream that sends no bytes for this long fails the
    #: attempt as a timeout, which is retried.
    upstream_idle_timeout: float = 60.0
    #: Longest a call may take, whatever deadline the caller sent (or none):
    #: a silent upstream cannot hold a call and its concurrency slot forever.
    max_call_duration: float = 180.0
    #: Circuit breaker, per model: opens after this many requests in a row failed
    #: overloaded (0: off), stays open ``breaker_open_seconds`` (growing per
    #: reopening up to ``breaker_max_open_seconds``), then lets one probe through.
    breaker_failure_threshold: int = 5
    breaker_open_seconds: float = 30.0
    breaker_max_open_seconds: float = 300.0
    #: ``model=fallback`` pairs: when ``model`` is overloaded (503, per-minute 429
    #: after its retries, or its circuit open) the request moves to
    #: ``fallback``; several pairs for one model give its fallbacks in order.
    fallback_models: tuple[str, ...] = ()
    #: Concurrent upstream calls; beyond it, requests queue for up to
    #: ``queue_timeout`` seconds, then get RESOURCE_EXHAUSTED.
    max_concurrency: int = 16
    queue_timeout: float = 5.0
    #: How long a finished result is kept for a repeated request id, and how
    #: many bytes of results are kept at most (oldest evicted first).
    idempotency_ttl: float = 600.0
    idempotency_max_bytes: int = 256 * 1024 * 1024
    #: Seconds between stream heartbeats while waiting.
    heartbeat_interval: float = 5.0
    #: Grace period for in-flight calls on shutdown.
    shutdown_grace: float = 10.0
    #: Server processes sharing the port (``SO_REUSEPORT`` among them), each on
    #: its own core; 1 is one process. See :mod:`imagegen_server.workers`.
    workers: int = 1
    #: Interface of the metrics port: loopback unless told otherwise (metrics need no credentials).
    metrics_host: str = "127.0.0.1"
    #: Serve Prometheus metrics on this port (``GET /metrics``); None = off, 0 = a free port.
    metrics_port: int | None = None
    #: gRPC message size limit (both directions); images are megabytes.
    max_message_bytes: int = 64 * 1024 * 1024
    #: Bound on the request bytes held by calls in flight, all calls together; past it calls get
    #: RESOURCE_EXHAUSTED before being decoded. None: 1/64 of physical memory (at most 1 GiB,
    #: at least max_message_bytes).
    max_request_bytes_in_flight: int | None = None
    #: Images of the embedded emulator: "realistic" (Gemini-sized PNGs) or
    #: "small" (tiny, for fast tests); None: realistic.
    emulator_image_profile: str | None = None
    #: Limits for validation.
    max_prompt_chars: int = 10_000
    max_input_image_bytes: int = 20 * 1024 * 1024
    max_history_turns: int = 64
    #: TLS for the gRPC port: PEM certificate chain and private key (both or neither).
    tls_cert: str | None = None
    tls_key: str | None = None
    #: PEM CA certificates for mutual TLS: clients must present a certificate
    #: signed by one of them, and its identity (CN, else first SAN) becomes the caller.
    tls_client_ca: str | None = None
    #: Listen on a non-loopback host without TLS and caller authentication (behind a
    #: proxy or mesh that provides both); refused otherwise.
    insecure: bool = False
    #: Callers, their token digests, methods and quotas (TOML; see README "Security"); None: no tokens.
    auth_tokens_file: str | None = None
    #: Method globs anyone may call even when credentials are required.
    auth_open_methods: tuple[str, ...] = DEFAULT_OPEN_METHODS
    #: Shared state for several replicas (``redis://host:port/db``): idempotency results and
    #: in-flight dedup, caller quotas, circuit breakers. None: in this process only.
    #: Not in repr: the URL may carry a password.
    state_url: str | None = field(default=None, repr=False)
    #: When the shared state is unreachable: "open" serves with this process's own
    #: state (no cross-replica dedup or quotas), "closed" refuses calls that need it.
    state_fail_mode: str = "open"
    #: Longest wait for one shared-state operation, seconds (a hung Redis never hangs a call); one
    #: that moves a stored result also gets the time to move ``state_max_result_bytes`` at 20 MB/s.
    state_timeout: float = 0.5
    #: Largest result (bytes) kept in the shared state for repeated request ids; larger ones
    #: reach only the duplicates waiting in the same replica.
    state_max_result_bytes: int = 16 * 1024 * 1024
    #: Serve REST/JSON and Server-Sent Events on this port (same host); None = off, 0 = a free port.
    http_port: int | None = None
    #: Origins browsers may call the REST port from (CORS); ``*`` for any; empty: no CORS headers.
    cors_origins: tuple[str, ...] = ()
    #: OpenTelemetry traces (the ``otel`` extra), exported as the ``OTEL_*`` variables say; also on
    #: whenever ``OTEL_TRACES_EXPORTER`` names an exporter.
    otel: bool = False
    #: Log lines as JSON objects or text; None: JSON unless stderr is a terminal.
    log_format: str | None = None
    #: Put each request's prompt in its access line (off: prompts are never logged).
    log_prompts: bool = False

    @property
    def uses_embedded_emulator(self) -> bool:
        """True when the server must start its own emulator (no key, no URL)."""
        return self.api_key is None and self.upstream_url is None

    @property
    def uses_tls(self) -> bool:
        """True when the gRPC port speaks TLS."""
        return self.tls_cert is not None

    @property
    def authenticates_callers(self) -> bool:
        """True when every call must carry credentials (bearer tokens or client certificates)."""
        return self.auth_tokens_file is not None or self.tls_client_ca is not None

    def check(self) -> None:
        """Raise :class:`ConfigError` for the first flag combination the server refuses."""
        found = self.problems()
        if found:
            raise ConfigError(found[0])

    def problems(self) -> list[str]:
        """Flag combinations the server refuses, one sentence each (empty when the config is usable)."""
        found: list[str] = []
        if (self.tls_cert is None) != (self.tls_key is None):
            found.append("--tls-cert and --tls-key go together: give both or neither")
        if self.tls_client_ca is not None and self.tls_cert is None:
            found.append("--tls-client-ca needs --tls-cert and --tls-key (mutual TLS is TLS first)")
        if self.state_fail_mode not in STATE_FAIL_MODES:
            found.append(
                f"--state-fail-mode must be one of {', '.join(STATE_FAIL_MODES)}, not {self.state_fail_mode!r}"
            )
        if self.state_url is not None and not self.state_url.startswith(STATE_URL_SCHEMES):
            found.append("--state-url must be a redis://host:port/db URL (or rediss://, unix://)")
        if self.workers < 1:
            found.append("--workers must be 1 or more")
        if self.state_timeout <= 0:
            found.append("--state-timeout must be more than 0 seconds")
        if not self.insecure and not is_loopback(self.host):
            missing = [
                what
                for what, present in (
                    ("TLS (--tls-cert/--tls-key)", self.uses_tls),
                    ("caller authentication (--auth-tokens-file or --tls-client-ca)", self.authenticates_callers),
                )
                if not present
            ]
            if missing:
                found.append(
                    f"refusing to listen on {self.host} without {' and '.join(missing)}; "
                    "add them, or pass --insecure if a proxy or mesh in front provides both"
                )
        found.extend(self._fallback_problems())
        if self.cors_origins and self.http_port is None:
            found.append("--cors-origins is for the REST port: give --http-port too")
        return found

    def fallback_chains(self) -> dict[str, tuple[str, ...]]:
        """Each model's fallback models, in order, by canonical name (pairs :meth:`problems` refuses are left out)."""
        chains: dict[str, list[str]] = {}
        for entry in self.fallback_models:
            primary, _, fallback = entry.partition("=")
            first, then = find_model(primary.strip()), find_model(fallback.strip())
            if first is None or then is None or first is then:
                continue
            chain = chains.setdefault(first.name, [])
            if then.name not in chain:
                chain.append(then.name)
        return {model: tuple(chain) for model, chain in chains.items()}

    def _fallback_problems(self) -> list[str]:
        found: list[str] = []
        for entry in self.fallback_models:
            primary, sep, fallback = (part.strip() for part in entry.partition("="))
            if not sep or not primary or not fallback:
                found.append(f"--fallback-models: {entry!r} is not MODEL=FALLBACK")
                continue
            for name in (primary, fallback):
                spec = find_model(name)
                if spec is None:
                    found.append(f"--fallback-models: unknown model {name!r} in {entry!r}")
                elif spec.name not in self.allowed_models and name not in self.allowed_models:
                    found.append(f"--fallback-models: {name!r} is not in --allowed-models")
            if find_model(primary) is not None and find_model(primary) is find_model(fallback):
                found.append(f"--fallback-models: {entry!r} falls back to itself")
        return found

    @classmethod
    def from_args(cls, argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> ServerConfig:
        """Build a config from command-line arguments and the environment."""
        env = os.environ if env is None else env
        parser = build_parser()
        args = parser.parse_args(argv)
        values: dict[str, object] = {}
        for f in fields(cls):
            if f.name == "api_key":
                continue
            flag_value = getattr(args, f.name, None)
            env_value = env.get(env_name(f.name))
            if flag_value is not None:
                values[f.name] = flag_value
            elif env_value is not None:
                try:
                    values[f.name] = _coerce(f.name, env_value)
                except ValueError:
                    parser.error(f"{env_name(f.name)}={env_value!r} is not a valid {f.type}")
        values["api_key"] = env.get("GEMINI_API_KEY") or env.get("GOOGLE_API_KEY") or None
        return cls(**values)  # type: ignore[arg-type]


def env_name(name: str) -> str:
    """The environment variable of a setting: ``max_attempts`` -> ``IMAGEGEN_MAX_ATTEMPTS``."""
    return f"IMAGEGEN_{name.upper()}"


def _comma_list(raw: str) -> tuple[str, ...]:
    """A comma-separated flag or variable value as a tuple, blanks dropped."""
    return tuple(x.strip() for x in raw.split(",") if x.strip())


def _coerce(name: str, raw: str) -> object:
    """Parse an environment value by the field's declared type (``int | None`` -> int)."""
    declared = {f.name: str(f.type) for f in fields(ServerConfig)}[name]
    base = declared.split("|", 1)[0].strip()
    if base == "bool":
        return raw.strip().lower() in {"1", "true", "yes", "on"}
    if base == "int":
        return int(raw)
    if base == "float":
        return float(raw)
    if base.startswith("tuple"):
        return _comma_list(raw)
    return raw


#: The default of every setting (all have plain defaults, no factories).
_DEFAULTS: dict[str, object] = {f.name: f.default for f in fields(ServerConfig) if f.default is not MISSING}

#: How help shows a default that is not a plain value.
_DEFAULT_TEXT = {
    "upstream_url": f"{GOOGLE_BASE_URL}, or the embedded emulator when there is no key",
    "metrics_port": "off",
    "http_port": "off",
    "cors_origins": "none",
    "emulator_image_profile": "realistic",
    "tls_cert": "off (plaintext)",
    "tls_key": "none",
    "tls_client_ca": "off (no client certificates)",
    "auth_tokens_file": "off (no bearer tokens)",
    "max_request_bytes_in_flight": "1/64 of the machine's memory, at most 1 GiB, at least --max-message-bytes",
    "state_url": "off (state in this process only)",
    "log_format": "json, or text when stderr is a terminal",
}


def default_text(name: str) -> str:
    """A setting's default as ``imagegen serve --help`` shows it."""
    if name in _DEFAULT_TEXT:
        return _DEFAULT_TEXT[name]
    value = _DEFAULTS[name]
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return ", ".join(str(x) for x in value)
    if isinstance(value, int) and name.endswith("_bytes") and value % 2**20 == 0:
        return f"{value} ({value >> 20} MiB)"
    return str(value)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Ends every setting's help with its default and its ``IMAGEGEN_*`` variable."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.dest in _DEFAULTS:
            # argparse %-formats help strings.
            text += f" (default: {default_text(action.dest)}; env {env_name(action.dest)})".replace("%", "%%")
        return text


def _epilog(flagged: set[str]) -> str:
    env_only = [name for name in _DEFAULTS if name not in flagged and name != "api_key"]
    lines = [
        "Every flag also reads IMAGEGEN_<NAME> from the environment (the flag wins). The Gemini API key is read",
        "only from GEMINI_API_KEY (or GOOGLE_API_KEY), so it never shows in ps.",
        "",
        "settings with no flag (environment only):",
        *(f"  {env_name(name):<40} default {default_text(name)}" for name in env_only),
        "",
        "exit codes: 0 stopped by SIGTERM, 130 stopped by Ctrl-C (both after draining in-flight calls),",
        "  2 a bad flag or IMAGEGEN_* value, 7 the port is already in use or the address cannot be bound.",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The ``imagegen serve`` argument parser (every flag also reads IMAGEGEN_<NAME>)."""
    p = argparse.ArgumentParser(
        prog="imagegen serve",
        description="Run the imagegen gRPC server. With no GEMINI_API_KEY and no --upstream-url\n"
        "it starts an embedded Gemini emulator on loopback (fake images, no network).",
        formatter_class=_HelpFormatter,
    )
    p.add_argument("--host", help="interface to bind")
    p.add_argument("--port", type=int, help="port to bind, 0 for a free one")
    p.add_argument("--upstream-url", dest="upstream_url", help="Gemini base URL")
    p.add_argument("--api-version", dest="api_version", choices=["v1", "v1beta"], help="Gemini API version")
    p.add_argument("--model", dest="default_model", help="default model")
    p.add_argument(
        "--allowed-models",
        dest="allowed_models",
        type=_comma_list,
        help="comma-separated allow-list of models",
    )
    p.add_argument(
        "--strict-constraints",
        dest="strict_constraints",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="send the STRICT RULES system instruction",
    )
    p.add_argument("--max-attempts", dest="max_attempts", type=int, help="upstream attempts per request")
    p.add_argument("--initial-backoff", dest="initial_backoff", type=float, help="first backoff, seconds")
    p.add_argument("--max-backoff", dest="max_backoff", type=float, help="cap on one backoff, seconds")
    p.add_argument(
        "--max-upstream-delay",
        dest="max_upstream_delay",
        type=float,
        help="cap on an honoured RetryInfo delay",
    )
    p.add_argument("--attempt-timeout", dest="attempt_timeout", type=float, help="per-attempt timeout, seconds")
    p.add_argument(
        "--retry-budget-percent",
        dest="retry_budget_percent",
        type=float,
        metavar="PERCENT",
        help="per model: failed retries allowed as a percentage of the window's requests",
    )
    p.add_argument(
        "--retry-budget-min-retries",
        dest="retry_budget_min_retries",
        type=int,
        metavar="N",
        help="per model: failed retries always allowed per window, on top of the percentage",
    )
    p.add_argument(
        "--retry-budget-window",
        dest="retry_budget_window",
        type=float,
        metavar="SECONDS",
        help="the retry budget's sliding window",
    )
    p.add_argument(
        "--upstream-idle-timeout",
        dest="upstream_idle_timeout",
        type=float,
        help="fail an upstream attempt whose answer sends no bytes for this long, seconds",
    )
    p.add_argument(
        "--max-call-duration",
        dest="max_call_duration",
        type=float,
        help="longest a call may take, also when the caller sends no deadline, seconds",
    )
    p.add_argument(
        "--fallback-models",
        dest="fallback_models",
        type=_comma_list,
        metavar="MODEL=FALLBACK,...",
        help="serve an overloaded model's requests with another, e.g. gemini-3-pro-image=gemini-3.1-flash-image; "
        "several pairs for one model give its fallbacks in order",
    )
    p.add_argument(
        "--breaker-failure-threshold",
        dest="breaker_failure_threshold",
        type=int,
        metavar="N",
        help="per model: requests failed overloaded in a row that open its circuit; 0 turns breakers off",
    )
    p.add_argument(
        "--breaker-open-seconds",
        dest="breaker_open_seconds",
        type=float,
        metavar="SECONDS",
        help="how long an open circuit fails calls fast before one probe call (x2, x3... per reopening)",
    )
    p.add_argument(
        "--breaker-max-open-seconds",
        dest="breaker_max_open_seconds",
        type=float,
        metavar="SECONDS",
        help="cap on the open time",
    )
    p.add_argument("--max-concurrency", dest="max_concurrency", type=int, help="concurrent upstream calls")
    p.add_argument("--queue-timeout", dest="queue_timeout", type=float, help="max wait for a free slot, seconds")
    p.add_argument("--idempotency-ttl", dest="idempotency_ttl", type=float, help="request-id result TTL, seconds")
    p.add_argument(
        "--idempotency-max-bytes",
        dest="idempotency_max_bytes",
        type=int,
        help="bytes of finished results kept for repeated request ids; the oldest go first",
    )
    p.add_argument("--heartbeat-interval", dest="heartbeat_interval", type=float, help="stream heartbeat, seconds")
    p.add_argument(
        "--max-message-bytes",
        dest="max_message_bytes",
        type=int,
        help="gRPC message size limit, both directions",
    )
    p.add_argument(
        "--max-request-bytes-in-flight",
        dest="max_request_bytes_in_flight",
        type=int,
        help="bound on request bytes held by all calls in flight; beyond it, RESOURCE_EXHAUSTED",
    )
    p.add_argument(
        "--emulator-image-profile",
        dest="emulator_image_profile",
        choices=["realistic", "small"],
        help="embedded emulator's images: realistic (Gemini-sized) or small",
    )
    p.add_argument("--metrics-port", dest="metrics_port", type=int, help="serve Prometheus /metrics on this port")
    p.add_argument(
        "--metrics-host", dest="metrics_host", help="interface of the metrics port (it has no authentication)"
    )
    p.add_argument(
        "--http-port",
        dest="http_port",
        type=int,
        help="also serve REST/JSON and Server-Sent Events on this port (0 for a free one)",
    )
    p.add_argument(
        "--cors-origins",
        dest="cors_origins",
        type=_comma_list,
        help="comma-separated origins browsers may call the REST port from, or *",
    )
    p.add_argument("--tls-cert", dest="tls_cert", metavar="PEM", help="serve TLS with this certificate chain")
    p.add_argument("--tls-key", dest="tls_key", metavar="PEM", help="private key of --tls-cert")
    p.add_argument(
        "--tls-client-ca",
        dest="tls_client_ca",
        metavar="PEM",
        help="require client certificates signed by this CA (mutual TLS); their CN names the caller",
    )
    p.add_argument(
        "--insecure",
        dest="insecure",
        action="store_true",
        default=None,
        help="allow a non-loopback --host without TLS and caller authentication (only behind a proxy that does both)",
    )
    p.add_argument(
        "--auth-tokens-file",
        dest="auth_tokens_file",
        metavar="TOML",
        help="require bearer tokens: callers, token SHA-256s, methods and quotas (re-read when it changes)",
    )
    p.add_argument(
        "--auth-open-methods",
        dest="auth_open_methods",
        type=_comma_list,
        help="comma-separated method globs callable without credentials",
    )
    p.add_argument(
        "--state-url",
        dest="state_url",
        metavar="URL",
        help="share idempotency, quotas and circuit breakers between replicas through Redis (redis://host:port/db)",
    )
    p.add_argument(
        "--state-fail-mode",
        dest="state_fail_mode",
        choices=STATE_FAIL_MODES,
        help="when Redis is unreachable: open serves with this replica's own state, closed refuses"
        " calls that need the shared state (request ids, quotas) with UNAVAILABLE",
    )
    p.add_argument(
        "--state-timeout", dest="state_timeout", type=float, help="longest wait for one Redis operation, seconds"
    )
    p.add_argument(
        "--state-max-result-bytes",
        dest="state_max_result_bytes",
        type=int,
        help="largest result kept in Redis for repeated request ids",
    )
    p.add_argument(
        "--otel",
        dest="otel",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="OpenTelemetry traces (pip install 'imagegen[otel]'), exported as the OTEL_* variables say"
        " (on also when OTEL_TRACES_EXPORTER names an exporter)",
    )
    p.add_argument(
        "--log-format",
        dest="log_format",
        choices=["json", "text"],
        help="log lines as JSON objects (one per line) or text",
    )
    p.add_argument(
        "--log-prompts",
        dest="log_prompts",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="include each request's prompt in its access log line (prompts are never logged otherwise)",
    )
    p.add_argument("--shutdown-grace", dest="shutdown_grace", type=float, help="grace for in-flight calls, seconds")
    p.add_argument(
        "--workers",
        dest="workers",
        type=int,
        help="server processes sharing the port, one per core (needs an upstream; worker i serves "
        "/metrics on --metrics-port + i)",
    )
    p.epilog = _epilog(set(vars(p.parse_args([]))))
    return p
