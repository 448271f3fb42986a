"""Log records name the generation of the task that wrote them, tasks it starts included."""

from __future__ import annotations

import asyncio
import logging

import pytest

from imagegen_server.observability import GenerationLogFilter, bind_generation


async def test_generation_id_follows_the_rpc_task_and_its_children(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("test.observability")
    caplog.handler.addFilter(GenerationLogFilter())
    caplog.set_level(logging.INFO, logger="test.observability")

    async def rpc(generation_id: str) -> None:
        bind_generation(generation_id)
        log.info("in the handler")
        await asyncio.create_task(asyncio.sleep(0, result=None))
        await asyncio.create_task(_child(log))

    await asyncio.gather(asyncio.create_task(rpc("g1")), asyncio.create_task(rpc("g2")))
    log.info("outside any request")
    tags = [(r.getMessage(), r.generation) for r in caplog.records]  # type: ignore[attr-defined]
    assert tags.count(("in the handler", "g1")) == 1 and tags.count(("in a child task", "g2")) == 1
    assert tags[-1] == ("outside any request", "-")


async def _child(log: logging.Logger) -> None:
    log.info("in a child task")
