"""Gemini-sized images end to end: a realistic 4K PNG through SDK -> gateway -> emulator."""

from __future__ import annotations

import io
from dataclasses import replace

from PIL import Image as PILImage

import imagegen
from imagegen_server.app import run_server
from imagegen_server.emulator import Emulator
from tests.conftest import FAST


async def test_a_realistic_4k_image_through_the_gateway() -> None:
    async with Emulator(image_profile="realistic") as emulator:
        config = replace(FAST, upstream_url=emulator.base_url, api_key=emulator.api_key)
        async with run_server(config) as server, imagegen.AsyncClient(server.target, timeout=60) as client:
            result = await client.generate("a harbour at night", aspect_ratio="1:1", image_size="4K", seed=3)
            streamed = [event async for event in client.generate_stream("a harbour at night", image_size="4K", seed=3)]

    data = result.image.data
    assert len(data) > 18_000_000
    image = PILImage.open(io.BytesIO(data))
    assert (image.format, image.size) == ("PNG", (4096, 4096))
    assert (result.image.width, result.image.height, result.image.mime_type) == (4096, 4096, "image/png")
    assert data.endswith(b"IEND\xaeB`\x82")  # whole: the unit tests decode every pixel of such PNGs
    completed = streamed[-1]
    assert isinstance(completed, imagegen.Completed) and completed.result.image.data == data
