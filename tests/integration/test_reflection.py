"""Server reflection over v1 (what grpcurl and buf curl try first) and v1alpha, against the real server.

grpc.reflection.v1 and v1alpha are the same messages under two package names, so a v1 client is the
v1alpha message classes on the v1 method path (byte-identical on the wire).
"""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2

from imagegen_server.app import RunningServer

Request = reflection_pb2.ServerReflectionRequest
Response = reflection_pb2.ServerReflectionResponse
PATHS = {
    "v1": "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "v1alpha": "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
}


async def _ask(server: RunningServer, version: str, *requests: Request) -> list[Response]:
    async with grpc.aio.insecure_channel(server.target) as channel:
        call = channel.stream_stream(
            PATHS[version], request_serializer=Request.SerializeToString, response_deserializer=Response.FromString
        )
        return [response async for response in call(iter(requests))]


def _files(response: Response) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    out = {}
    for raw in response.file_descriptor_response.file_descriptor_proto:
        proto = descriptor_pb2.FileDescriptorProto.FromString(raw)
        out[proto.name] = proto
    return out


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
async def test_reflection_lists_and_describes_the_service(server: RunningServer, version: str) -> None:
    listed, described = await _ask(
        server,
        version,
        Request(list_services=""),
        Request(file_containing_symbol="imagegen.v1.ImageGenerationService"),
    )
    names = {s.name for s in listed.list_services_response.service}
    assert {
        "imagegen.v1.ImageGenerationService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= names
    files = _files(described)
    service = files["imagegen/v1/image_generation_service.proto"]
    assert [m.name for m in service.service[0].method] == [
        "Generate",
        "GenerateStream",
        "Refine",
        "RefineStream",
        "ListModels",
    ]
    # Dependencies come along: the googleapis annotations the protos import.
    assert {"imagegen/v1/image.proto", "google/api/annotations.proto", "google/api/field_behavior.proto"} <= set(files)


async def test_v1_describes_the_error_details_and_itself(server: RunningServer) -> None:
    # The API protos do not import google.rpc, yet a client decoding grpc-status-details-bin can get
    # ErrorInfo, BadRequest, ... (and our ErrorReason) from reflection by symbol.
    details, reasons, itself = await _ask(
        server,
        "v1",
        Request(file_containing_symbol="google.rpc.ErrorInfo"),
        Request(file_containing_symbol="imagegen.v1.ErrorReason"),
        Request(file_containing_symbol="grpc.reflection.v1.ServerReflection"),
    )
    rpc = _files(details)["google/rpc/error_details.proto"]
    assert {"ErrorInfo", "RetryInfo", "BadRequest", "QuotaFailure"} <= {m.name for m in rpc.message_type}
    assert "imagegen/v1/error_reason.proto" in _files(reasons)
    v1 = _files(itself)["grpc/reflection/v1/reflection.proto"]
    assert v1.package == "grpc.reflection.v1"
    assert v1.service[0].method[0].input_type == ".grpc.reflection.v1.ServerReflectionRequest"
