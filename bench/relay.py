"""The relay floor: the least a gRPC front for Gemini can do, to price the gateway's features.

A ``grpc.aio`` server with one generic handler for
``imagegen.v1.ImageGenerationService/Generate``: it reads the request proto,
posts Gemini's JSON (orjson) with aiohttp, parses the answer with orjson,
decodes the image with pybase64 and answers a ``GenerateResponse`` holding the
image. No validation, no retries, no limits, no streaming, no metrics, no
signatures or model turn: whatever the gateway costs beyond this is the price
of its features (and of how it implements them).

Its clients use the raw generated stub, so the SDK's cost is not in the floor either.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import grpc
import orjson
import pybase64

from imagegen.v1 import image_generation_service_pb2 as pb
from imagegen.v1 import image_pb2

SERVICE = "imagegen.v1.ImageGenerationService"
MODEL = "gemini-3.1-flash-image"
#: Large images need more than gRPC's 4 MiB default, both ways.
MESSAGE_OPTIONS = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]


class Relay:
    """Generate, relayed: request proto -> Gemini JSON -> response proto."""

    def __init__(self, upstream_url: str, api_key: str) -> None:
        self._url = f"{upstream_url}/v1beta/models/{MODEL}:generateContent"
        self._headers = {"x-goog-api-key": api_key, "Content-Type": "application/json"}
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    async def close(self) -> None:
        await self._session.close()

    async def generate(self, request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        req = pb.GenerateRequest.FromString(request)
        config: dict[str, Any] = {
            "responseModalities": ["IMAGE"],
            "imageConfig": {
                "aspectRatio": req.options.aspect_ratio or "1:1",
                "imageSize": req.options.image_size or "1K",
            },
        }
        if req.options.HasField("seed"):
            config["seed"] = req.options.seed
        body = {"contents": [{"role": "user", "parts": [{"text": req.prompt}]}], "generationConfig": config}
        async with self._session.post(self._url, data=orjson.dumps(body), headers=self._headers) as response:
            raw = await response.read()
        if response.status != 200:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"upstream HTTP {response.status}")
        answer = orjson.loads(raw)
        for part in answer["candidates"][0]["content"]["parts"]:
            inline = part.get("inlineData")
            if inline and not part.get("thought"):
                image = image_pb2.Image(data=pybase64.b64decode(inline["data"]), mime_type=inline["mimeType"])
                return pb.GenerateResponse(generation=image_pb2.Generation(image=image)).SerializeToString()
        await context.abort(grpc.StatusCode.INTERNAL, "no image in the answer")
        raise AssertionError("unreachable")


def relay_server(relay: Relay) -> grpc.aio.Server:
    """A grpc.aio server serving ``relay`` on the gateway's Generate method (no port yet)."""
    server = grpc.aio.server(options=MESSAGE_OPTIONS)
    handler = grpc.method_handlers_generic_handler(
        SERVICE, {"Generate": grpc.unary_unary_rpc_method_handler(relay.generate)}
    )
    server.add_generic_rpc_handlers((handler,))
    return server
