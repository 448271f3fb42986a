"""Read google.rpc details off a real gRPC error, as any client would."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from imagegen.v1 import image_pb2


@dataclass
class Details:
    """The parts of a status tests assert on."""

    code: grpc.StatusCode
    message: str
    reason: str = ""
    domain: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    retry_delay: float | None = None
    fields: dict[str, str] = field(default_factory=dict)
    quota_subjects: list[str] = field(default_factory=list)
    error_infos: int = 0


def details_of(err: grpc.aio.AioRpcError) -> Details:
    """Decode ``grpc-status-details-bin`` from a caught AioRpcError."""
    out = Details(code=err.code(), message=err.details() or "")
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    if status is None:
        return out
    for any_ in status.details:
        info = error_details_pb2.ErrorInfo()
        retry = error_details_pb2.RetryInfo()
        bad = error_details_pb2.BadRequest()
        quota = error_details_pb2.QuotaFailure()
        if any_.Unpack(info):
            out.error_infos += 1
            out.reason, out.domain, out.metadata = info.reason, info.domain, dict(info.metadata)
        elif any_.Unpack(retry):
            out.retry_delay = retry.retry_delay.ToNanoseconds() / 1e9
        elif any_.Unpack(bad):
            out.fields = {v.field: v.description for v in bad.field_violations}
        elif any_.Unpack(quota):
            out.quota_subjects = [v.subject for v in quota.violations]
    return out


def history_turn(generation: image_pb2.Generation) -> image_pb2.Turn:
    """``generation.model_turn`` with the final image's bytes filled in: one of the two
    ways a raw-proto caller may pass it back (the other is ``RefineRequest.history_images``)."""
    turn = image_pb2.Turn()
    turn.CopyFrom(generation.model_turn)
    for part in turn.parts:
        if part.WhichOneof("data") == "image" and not part.image.data and not part.thought:
            part.image.data = generation.image.data
    return turn


async def access_lines(
    records: Callable[[], list[logging.LogRecord]], until: Callable[[list[str]], bool], timeout: float = 5.0
) -> list[str]:
    """The access-log lines so far, waiting (bounded) until ``until`` holds.

    A call aborted with a status has that status sent at once (grpc.aio's
    ``abort``), and its access line is written as its handler unwinds, which
    on a busy machine can be just after the caller read the status.
    """
    lines: list[str] = []
    for _ in range(int(timeout / 0.01)):
        lines = [r.getMessage() for r in records() if r.name == "imagegen_server.access"]
        if until(lines):
            break
        await asyncio.sleep(0.01)
    return lines
