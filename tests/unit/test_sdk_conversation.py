"""Conversation / AsyncConversation: history, signatures byte for byte, settings, JSON persistence."""

from __future__ import annotations

import json

import grpc
import pytest

import imagegen
from imagegen.testing import FakeError, FakeServer, FakeStream, make_generation, make_png, stream_events
from imagegen.v1 import image_generation_service_pb2 as pb
from imagegen.v1 import image_pb2

SIGS = [b"\x00sig-one\xff", b"\x01sig-two\xfe", b"\x02sig-three\xfd"]


def _push_generations(server: FakeServer, model: str = "gemini-3.1-flash-image") -> None:
    server.servicer.push(
        *[
            make_generation(generation_id=f"g{i}", signature=sig, seed=i, model=model, text=f"turn {i}")
            for i, sig in enumerate(SIGS)
        ]
    )


def test_start_and_refine_keep_history_and_signatures(server: FakeServer, client: imagegen.Client) -> None:
    _push_generations(server)
    reference = make_png(5, 5)
    chat = client.conversation("a red fox", input_images=[reference], width=1024, height=1024, seed=7)
    assert chat.last is not None and chat.last.generation_id == "g0"
    assert len(chat.history) == 2
    chat.refine("make it night")
    chat.refine("add a moon", input_images=[make_png(2, 2)])
    assert len(chat) == 6 and chat.last is not None and chat.last.generation_id == "g2"

    calls = server.servicer.calls
    assert [c.method for c in calls] == ["Generate", "Refine", "Refine"]
    first = calls[0].request
    assert isinstance(first, pb.GenerateRequest) and first.options.seed == 7
    last = calls[2].request
    assert isinstance(last, pb.RefineRequest)
    assert last.prompt == "add a moon" and len(last.input_images) == 1
    assert [t.role for t in last.history] == [1, 2, 1, 2]
    # user turn: prompt text then the input images, as sent
    assert last.history[0].parts[0].text == "a red fox"
    assert last.history[0].parts[1].image.data == reference
    # model turns: exactly the model_turn the server returned, signatures byte for byte
    assert last.history[1] == make_generation(generation_id="g0", signature=SIGS[0], seed=0, text="turn 0").model_turn
    assert last.history[3].parts[-1].thought_signature == SIGS[1]
    assert last.history[3].parts[0].text == "turn 1"
    # size options carried; the model pinned to the one that served the first turn
    assert (last.options.width, last.options.height) == (1024, 1024)
    assert last.options.model == "gemini-3.1-flash-image"
    assert not last.options.HasField("seed")


def test_turn_size_options_replace_stored_ones(server: FakeServer, client: imagegen.Client) -> None:
    chat = imagegen.Conversation(client, width=1024, height=1024)
    chat.refine("a fox")
    chat.refine("wider", aspect_ratio="16:9")
    request = server.servicer.calls[-1].request
    assert isinstance(request, pb.RefineRequest)
    assert request.options.aspect_ratio == "16:9"
    assert (request.options.width, request.options.height) == (0, 0)


def test_failed_turn_leaves_history_unchanged(server: FakeServer, client: imagegen.Client) -> None:
    chat = client.conversation("a fox")
    before = chat.history
    server.servicer.push(FakeError(grpc.StatusCode.INVALID_ARGUMENT, "blocked", "CONTENT_BLOCKED"))
    with pytest.raises(imagegen.ContentPolicyError):
        chat.refine("something bad")
    assert chat.history == before


async def test_unknown_option_raises_before_any_call(server: FakeServer, client: imagegen.Client) -> None:
    chat = client.conversation("a fox")
    with pytest.raises(TypeError, match="unexpected keyword argument 'widht'"):
        chat.refine("night", widht=512)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unexpected keyword argument 'sed'"):
        client.generate_stream("a fox", sed=1)  # type: ignore[call-arg]
    async with imagegen.AsyncClient(server.target, timeout=10) as aclient:
        with pytest.raises(TypeError, match="unexpected keyword argument 'modle'"):
            await aclient.conversation("a fox", modle="m")  # type: ignore[call-arg]
    assert len(chat) == 2
    assert [c.method for c in server.servicer.calls] == ["Generate"]


def test_json_round_trip_is_exact(server: FakeServer, client: imagegen.Client) -> None:
    _push_generations(server)
    chat = imagegen.Conversation.start(client, "a fox", input_images=[make_png(3, 3)], aspect_ratio="1:1")
    chat.refine("night")
    text = chat.to_json()
    doc = json.loads(text)
    assert doc["format"] == "imagegen.conversation.v1"
    assert doc["settings"] == {"model": "gemini-3.1-flash-image", "aspectRatio": "1:1"}
    assert "data" not in doc["last"].get("image", {})  # image bytes are not duplicated

    restored = imagegen.Conversation.from_json(text, client)
    assert restored.history == chat.history
    assert [t.to_proto() for t in restored.history] == [t.to_proto() for t in chat.history]
    assert restored.model == chat.model
    assert restored.last is not None and chat.last is not None
    assert restored.last == chat.last  # image bytes and signature restored from the last model turn
    assert restored.last.thought_signature == SIGS[1]

    restored.refine("add a moon")
    request = server.servicer.calls[-1].request
    assert isinstance(request, pb.RefineRequest)
    assert request.history[3].parts[-1].thought_signature == SIGS[1]
    assert request.options.aspect_ratio == "1:1"


def test_from_json_rejects_other_documents(client: imagegen.Client) -> None:
    with pytest.raises(ValueError):
        imagegen.Conversation.from_json('{"format": "other"}', client)
    with pytest.raises(ValueError):
        imagegen.Conversation.from_json("[]", client)


def test_history_accepts_raw_turns(server: FakeServer, client: imagegen.Client) -> None:
    generation = make_generation(signature=b"raw-sig")
    user = image_pb2.Turn(role=image_pb2.ROLE_USER, parts=[image_pb2.Part(text="a fox")])
    chat = imagegen.Conversation(client, [user, generation.model_turn])
    chat.refine("night")
    request = server.servicer.calls[-1].request
    assert isinstance(request, pb.RefineRequest)
    assert request.history[1] == generation.model_turn


def test_refine_stream_records_on_completion(server: FakeServer, client: imagegen.Client) -> None:
    chat = imagegen.Conversation(client)
    kinds = [e.kind for e in chat.refine_stream("a fox", seed=1)]
    assert kinds[-1] == "completed" and len(chat) == 2
    server.servicer.push(FakeStream(stream_events()[:2], error=FakeError.rate_limited(retry_after=1)))
    with pytest.raises(imagegen.RateLimitError):
        list(chat.refine_stream("night"))
    assert len(chat) == 2
    stream = chat.refine_stream("night")
    result = stream.final_result()
    assert chat.last is result and len(chat) == 4
    assert server.servicer.calls[-1].method == "RefineStream"


async def test_async_conversation(server: FakeServer) -> None:
    _push_generations(server)
    async with imagegen.AsyncClient(server.target, timeout=10) as client:
        chat = await client.conversation("a fox", seed=3)
        await chat.refine("night")
        async with chat.refine_stream("moon") as stream:
            async for _ in stream:
                pass
        assert len(chat) == 6
        restored = imagegen.AsyncConversation.from_json(chat.to_json(), client)
        assert restored.history == chat.history
        started = await imagegen.AsyncConversation.start(client, "another")
        assert len(started) == 2
    methods = [c.method for c in server.servicer.calls]
    assert methods == ["Generate", "Refine", "RefineStream", "Generate"]
    stream_request = server.servicer.calls[2].request
    assert isinstance(stream_request, pb.RefineStreamRequest)
    assert stream_request.history[3].parts[-1].thought_signature == SIGS[1]
