"""The flags the client commands share, and the SDK client they configure."""

from __future__ import annotations

import argparse
import os

import grpc

from imagegen import DEFAULT_TARGET, DEFAULT_TIMEOUT, Client, ClientRetry, tls_credentials
from imagegen_cli.exit_codes import UsageError
from imagegen_cli.targets import parse_target

TARGET_ENV = "IMAGEGEN_TARGET"
#: The bearer token, from the environment only (a flag value would show in ``ps``).
TOKEN_ENV = "IMAGEGEN_TOKEN"

#: How the server turns --width/--height into what Gemini can make (said in help, README and the result line).
SIZE_ROUNDING = (
    "Gemini makes a fixed set of aspect ratios and size tiers, so --width/--height pick the nearest ratio and "
    "the smallest tier whose long side covers the request: 1920x1080 gives 16:9 at 2K, 2752x1536 pixels. "
    "The result line shows what was asked and what was delivered."
)


def add_client_args(parser: argparse.ArgumentParser) -> None:
    """``--target``, ``--timeout``, ``--tls`` and the certificate flags."""
    parser.add_argument(
        "--target",
        type=parse_target,
        default=os.environ.get(TARGET_ENV, DEFAULT_TARGET),
        help=f"server host:port (default: ${TARGET_ENV}, else {DEFAULT_TARGET})",
    )
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT, help="deadline in seconds (default: %(default)s)"
    )
    parser.add_argument("--tls", action="store_true", help="use TLS with the system's root certificates")
    parser.add_argument(
        "--ca-cert", metavar="PEM", help="use TLS, trusting this CA for the server's certificate (implies --tls)"
    )
    parser.add_argument(
        "--client-cert", metavar="PEM", help="client certificate for servers that require one (mutual TLS)"
    )
    parser.add_argument("--client-key", metavar="PEM", help="private key of --client-cert")
    parser.add_argument(
        "--token-file",
        metavar="PATH",
        help=f"send the bearer token in this file (default: ${TOKEN_ENV}, if set)",
    )


def add_generation_args(parser: argparse.ArgumentParser) -> None:
    """The flags of ``generate`` and ``refine``."""
    parser.add_argument("-o", "--output", help="where to write the image (default: named after the prompt)")
    parser.add_argument("--model", help="model id (default: the server's; see imagegen models)")
    parser.add_argument("--width", type=int, help="desired width in pixels (rounded, see below)")
    parser.add_argument("--height", type=int, help="desired height in pixels (rounded, see below)")
    parser.add_argument("--aspect-ratio", help="explicit aspect ratio, e.g. 16:9 (overrides --width/--height)")
    parser.add_argument("--image-size", help="explicit size tier: 512, 1K, 2K or 4K (overrides --width/--height)")
    parser.add_argument("--seed", type=int, help="seed (default: the server picks one and reports it)")
    parser.add_argument("--input", action="append", default=[], metavar="PATH", help="input image (repeat for several)")
    parser.add_argument("--request-id", help="idempotency key; lets --retries retry any retryable error")
    parser.add_argument("--retries", type=int, default=0, help="client-side retries where safe (default: %(default)s)")
    parser.add_argument("--stream", action="store_true", help="show live progress and save previews")
    parser.add_argument("--json", action="store_true", help="print JSON (one object per event with --stream)")
    add_client_args(parser)


def channel_credentials(args: argparse.Namespace) -> grpc.ChannelCredentials | None:
    """TLS credentials from ``--tls``/``--ca-cert``/``--client-cert``/``--client-key``, or None for plaintext."""
    if (args.client_cert is None) != (args.client_key is None):
        raise UsageError("--client-cert and --client-key go together: give both or neither")
    if not (args.tls or args.ca_cert or args.client_cert):
        return None
    try:
        return tls_credentials(ca_cert=args.ca_cert, client_cert=args.client_cert, client_key=args.client_key)
    except OSError as exc:
        raise UsageError(f"cannot read {exc.filename}: {exc.strerror}") from exc


def bearer_token(args: argparse.Namespace) -> str | None:
    """The token of ``--token-file``, else ``$IMAGEGEN_TOKEN``, else None."""
    if args.token_file is None:
        return os.environ.get(TOKEN_ENV) or None
    try:
        with open(args.token_file, encoding="utf-8") as f:
            token = f.read().strip()
    except OSError as exc:
        raise UsageError(f"cannot read the token file {args.token_file}: {exc.strerror}") from exc
    if not token:
        raise UsageError(f"the token file {args.token_file} is empty")
    return token


def make_client(args: argparse.Namespace) -> Client:
    """The SDK client the parsed flags describe."""
    credentials = channel_credentials(args)
    retries = getattr(args, "retries", 0)
    retry = ClientRetry(max_attempts=retries + 1) if retries > 0 else None
    return Client(
        args.target, timeout=args.timeout, credentials=credentials, bearer_token=bearer_token(args), retry=retry
    )
