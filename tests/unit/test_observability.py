"""Observability: log records name their generation; metrics count what the pipeline reports."""

from __future__ import annotations

import asyncio
import logging

import pytest

from imagegen_server.gemini.errors import ErrorKind, UpstreamError
from imagegen_server.lifecycle import GenerationObserver, ObserverGroup
from imagegen_server.logs import ContextFilter, bind_generation
from imagegen_server.observability import Metrics
from imagegen_server.retry import RetryDecision


async def test_generation_id_follows_the_rpc_task_and_its_children(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("test.observability")
    caplog.handler.addFilter(ContextFilter())
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


def _sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_metrics_count_what_the_pipeline_reports() -> None:
    metrics = Metrics()
    unavailable = UpstreamError(ErrorKind.UNAVAILABLE, "overloaded")
    model = "gemini-3.1-flash-image"
    # One request: a failed attempt, a wait, then success.
    metrics.attempt_started(model, 1, 3)
    metrics.attempt_failed(model, 1, unavailable, RetryDecision(will_retry=True, delay=1.5, reason="retryable"))
    metrics.retry_waiting(model, 1, 1.5)
    metrics.attempt_started(model, 2, 3)
    metrics.attempt_succeeded(model, 2)
    metrics.generation_done(model, 2, 2.0)
    # Another: fails for good.
    stop = RetryDecision(will_retry=False, delay=0.0, reason="not_retryable")
    blocked = UpstreamError(ErrorKind.CONTENT_BLOCKED, "blocked")
    metrics.attempt_failed(model, 1, blocked, stop)
    metrics.generation_failed(model, 1, blocked, "not_retryable", 0.5)

    assert _sample(metrics, "imagegen_upstream_attempts_total", model=model, outcome="UNAVAILABLE") == 1
    assert _sample(metrics, "imagegen_upstream_attempts_total", model=model, outcome="CONTENT_BLOCKED") == 1
    assert _sample(metrics, "imagegen_upstream_attempts_total", model=model, outcome="ok") == 1
    assert _sample(metrics, "imagegen_retry_wait_seconds_total") == 1.5
    assert _sample(metrics, "imagegen_generations_total", model=model, outcome="ok") == 1
    assert _sample(metrics, "imagegen_generations_total", model=model, outcome="CONTENT_BLOCKED") == 1
    assert b"imagegen_generations_total" in metrics.exposition()


def test_observer_group_reports_to_each_in_order() -> None:
    calls: list[tuple[str, str]] = []

    class Recorder(GenerationObserver):
        def __init__(self, name: str) -> None:
            self.name = name

        def attempt_started(self, model: str, attempt: int, max_attempts: int) -> None:
            calls.append((self.name, f"started {model} {attempt}/{max_attempts}"))

        def generation_done(self, model: str, attempts: int, elapsed: float) -> None:
            calls.append((self.name, f"done {attempts}"))

    group = ObserverGroup([Recorder("a"), Recorder("b"), GenerationObserver()])
    group.attempt_started("m", 1, 3)
    group.retry_waiting("m", 1, 0.5)  # nobody overrides it: the default does nothing
    group.generation_done("m", 1, 0.1)
    assert calls == [("a", "started m 1/3"), ("b", "started m 1/3"), ("a", "done 1"), ("b", "done 1")]
