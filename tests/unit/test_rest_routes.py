"""The REST gateway's static parts: routes from the descriptors, Google's HTTP status per code, JSON parse errors."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2

from imagegen.v1 import image_generation_service_pb2 as pb
from imagegen_server.errors import ServiceError
from imagegen_server.rest import HTTP_STATUS, _parse, routes

SERVICE = pb.DESCRIPTOR.services_by_name["ImageGenerationService"]


def test_every_rpc_has_a_route_read_from_its_http_rule() -> None:
    found = {(r.http_method, r.path, r.body, r.rpc.name) for r in routes(SERVICE)}
    assert found == {
        ("POST", "/v1/images:generate", "*", "Generate"),
        ("POST", "/v1/images:generateStream", "*", "GenerateStream"),
        ("POST", "/v1/images:refine", "*", "Refine"),
        ("POST", "/v1/images:refineStream", "*", "RefineStream"),
        ("GET", "/v1/models", "", "ListModels"),
    }
    assert {r.rpc.name for r in routes(SERVICE)} == {m.name for m in SERVICE.methods}


def test_every_grpc_code_has_googles_http_status() -> None:
    assert set(HTTP_STATUS) == set(grpc.StatusCode)
    assert HTTP_STATUS[grpc.StatusCode.RESOURCE_EXHAUSTED] == 429
    assert HTTP_STATUS[grpc.StatusCode.CANCELLED] == 499
    assert HTTP_STATUS[grpc.StatusCode.DEADLINE_EXCEEDED] == 504


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"prompt": "x", "history": [{"parts": [{"txt": "hi"}]}]}', "history[0].parts[0].txt"),
        (b'{"history": [{"role": "ROLE_SOMEONE"}]}', "history.role"),
        (b'{"options": {"width": -1.5}}', "options.width"),
        (b"42", "body"),
        (b"\xff", "body"),
    ],
)
def test_a_refused_body_names_the_field(body: bytes, field: str) -> None:
    with pytest.raises(ServiceError) as info:
        _parse(body, pb.RefineRequest())
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    bad = error_details_pb2.BadRequest()
    assert any(d.Unpack(bad) for d in info.value.status.details)
    assert bad.field_violations[0].field == field


def test_an_empty_body_is_an_empty_request() -> None:
    assert _parse(b"", pb.RefineRequest()) == pb.RefineRequest()
