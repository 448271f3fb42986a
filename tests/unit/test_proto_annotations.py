"""The protos' machine-readable contract: REST routes (google.api.http) and field behavior on every request field."""

from __future__ import annotations

from google.api import annotations_pb2, field_behavior_pb2
from google.protobuf.descriptor import FieldDescriptor

from imagegen.v1 import image_generation_service_pb2 as pb
from imagegen.v1 import image_pb2

SERVICE = pb.DESCRIPTOR.services_by_name["ImageGenerationService"]

ROUTES = {
    "Generate": ("post", "/v1/images:generate"),
    "GenerateStream": ("post", "/v1/images:generateStream"),
    "Refine": ("post", "/v1/images:refine"),
    "RefineStream": ("post", "/v1/images:refineStream"),
    "ListModels": ("get", "/v1/models"),
}


def _behavior(field: FieldDescriptor) -> set[str]:
    values = field.GetOptions().Extensions[field_behavior_pb2.field_behavior]
    return {field_behavior_pb2.FieldBehavior.Name(v) for v in values}


def test_every_rpc_has_its_rest_route() -> None:
    assert {m.name for m in SERVICE.methods} == set(ROUTES)
    for method in SERVICE.methods:
        rule = method.GetOptions().Extensions[annotations_pb2.http]
        verb, path = ROUTES[method.name]
        assert rule.WhichOneof("pattern") == verb and getattr(rule, verb) == path, method.name
        # POST bodies are the whole request message; GET has none.
        assert rule.body == ("*" if verb == "post" else ""), method.name


def test_every_request_field_declares_its_behavior() -> None:
    requests = [m.input_type for m in SERVICE.methods] + [pb.GenerationOptions.DESCRIPTOR]
    for message in requests:
        for field in message.fields:
            assert _behavior(field) & {"REQUIRED", "OPTIONAL"}, f"{message.name}.{field.name}"
    for name in ("GenerateRequest", "GenerateStreamRequest", "RefineRequest", "RefineStreamRequest"):
        assert _behavior(pb.DESCRIPTOR.message_types_by_name[name].fields_by_name["prompt"]) == {"REQUIRED"}
    assert _behavior(pb.RefineRequest.DESCRIPTOR.fields_by_name["history"]) == {"REQUIRED"}


def test_image_size_is_output_only() -> None:
    for name in ("width", "height"):
        assert _behavior(image_pb2.Image.DESCRIPTOR.fields_by_name[name]) == {"OUTPUT_ONLY"}
