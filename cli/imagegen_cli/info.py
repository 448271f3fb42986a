"""``imagegen health`` and ``imagegen models``: ask a running server about itself."""

from __future__ import annotations

import argparse
import json
from typing import TextIO

import grpc
from grpc_health.v1 import health_pb2

from imagegen import from_grpc_error
from imagegen_cli.exit_codes import EXIT_OK, EXIT_OTHER
from imagegen_cli.options import make_client


def health(args: argparse.Namespace, out: TextIO) -> int:
    """Print the server's ``grpc.health.v1`` status; exit 0 only when SERVING."""
    with make_client(args) as client:
        check = client.channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        try:
            response: health_pb2.HealthCheckResponse = check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
        except grpc.RpcError as exc:
            raise from_grpc_error(exc) from exc
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    print(status, file=out)
    return EXIT_OK if response.status == health_pb2.HealthCheckResponse.SERVING else EXIT_OTHER


def models(args: argparse.Namespace, out: TextIO) -> int:
    """Print the models the server accepts, with their ratios and size tiers."""
    with make_client(args) as client:
        listed = client.list_models()
    if args.json:
        rows = [
            {
                "name": m.name,
                "aspect_ratios": list(m.aspect_ratios),
                "image_sizes": list(m.image_sizes),
                "max_input_images": m.max_input_images,
                "requires_thought_signatures": m.requires_thought_signatures,
                "is_default": m.is_default,
            }
            for m in listed
        ]
        print(json.dumps(rows), file=out)
        return EXIT_OK
    for m in listed:
        default = " (default)" if m.is_default else ""
        sizes = ", ".join(m.image_sizes) or "fixed"
        print(f"{m.name}{default}", file=out)
        print(f"  aspect ratios: {', '.join(m.aspect_ratios)}", file=out)
        print(f"  sizes: {sizes}; up to {m.max_input_images} input images", file=out)
    return EXIT_OK
