"""The Refine history contract, with raw generated stubs only (no SDK), against the real server and emulator.

``Generation.model_turn`` goes back into ``RefineRequest.history`` exactly as returned; its final image
travels once per message: in ``Generation.image`` on the way out, in ``history_images`` on the way back.
The emulator checks every thought signature against the bytes of the part it signs, so a Refine that
succeeds proves the server put the right image bytes back into the right part.
"""

from __future__ import annotations

import grpc
import pytest

from imagegen.v1 import image_generation_service_pb2 as pb
from imagegen.v1 import image_generation_service_pb2_grpc as pb_grpc
from imagegen.v1 import image_pb2
from tests.integration.status_helpers import details_of

Stub = pb_grpc.ImageGenerationServiceStub
MODEL = "gemini-3.1-flash-image"  # requires thought signatures on model image parts


def user(text: str) -> image_pb2.Turn:
    return image_pb2.Turn(role=image_pb2.ROLE_USER, parts=[image_pb2.Part(text=text)])


def final_part(generation: image_pb2.Generation) -> image_pb2.Part:
    (part,) = [p for p in generation.model_turn.parts if p.WhichOneof("data") == "image" and not p.thought]
    return part


async def test_response_sends_the_final_image_once_and_names_it(stub: Stub) -> None:
    response = await stub.Generate(pb.GenerateRequest(prompt="a cat", options=pb.GenerationOptions(model=MODEL)))
    g = response.generation
    part = final_part(g)
    assert part.image.data == b"" and part.image_generation_id == g.generation_id
    assert (part.image.width, part.image.height) == (g.image.width, g.image.height)
    assert response.SerializeToString().count(g.image.data) == 1


async def test_model_turns_passed_back_verbatim_refine_over_two_turns(stub: Stub) -> None:
    options = pb.GenerationOptions(model=MODEL)
    first = (await stub.Generate(pb.GenerateRequest(prompt="a cat", options=options))).generation
    history = [user("a cat"), first.model_turn]
    images = {first.generation_id: first.image}

    second = (
        await stub.Refine(
            pb.RefineRequest(prompt="make it blue", history=history, history_images=images, options=options)
        )
    ).generation
    assert second.image.data and second.generation_id != first.generation_id

    # Turn three: both earlier model turns as returned, each image once, by generation id.
    history += [user("make it blue"), second.model_turn]
    images[second.generation_id] = second.image
    request = pb.RefineStreamRequest(prompt="add a hat", history=history, history_images=images, options=options)
    events = [event async for event in stub.RefineStream(request)]
    assert events[-1].WhichOneof("event") == "completed"
    assert events[-1].completed.image.data
    # Nothing was filled in by the caller: the turns went back byte for byte as returned.
    assert request.history[1] == first.model_turn and request.history[3] == second.model_turn
    assert final_part(first).image.data == b"" and final_part(second).image.data == b""


async def test_missing_history_image_names_the_key_to_set(stub: Stub) -> None:
    first = (await stub.Generate(pb.GenerateRequest(prompt="a cat"))).generation
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Refine(pb.RefineRequest(prompt="make it blue", history=[user("a cat"), first.model_turn]))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = details_of(info.value)
    assert details.reason == "INVALID_REQUEST"
    message = details.fields["history[1].parts[1].image.data"]
    assert f"history_images[{first.generation_id!r}]" in message and "Generation.image" in message


async def test_an_image_under_the_wrong_key_is_not_used(stub: Stub) -> None:
    first = (await stub.Generate(pb.GenerateRequest(prompt="a cat"))).generation
    other = (await stub.Generate(pb.GenerateRequest(prompt="a dog"))).generation
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Refine(
            pb.RefineRequest(
                prompt="make it blue",
                history=[user("a cat"), first.model_turn],
                history_images={other.generation_id: other.image},
            )
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "history[1].parts[1].image.data" in details_of(info.value).fields
