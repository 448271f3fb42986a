"""The shared stores of one server, made from its config: what ``run_server`` plugs into the pipeline."""

from __future__ import annotations

from dataclasses import dataclass

from imagegen.v1 import image_pb2
from imagegen_server.config import ServerConfig
from imagegen_server.idempotency import MemoryIdempotencyStore
from imagegen_server.quotas import LocalCallerLimiter
from imagegen_server.retry import MONOTONIC_CLOCK
from imagegen_server.sharedstate.breaker import RedisBreakerStore
from imagegen_server.sharedstate.connection import ErrorListener, SharedState
from imagegen_server.sharedstate.idempotency import Codec, RedisIdempotencyStore
from imagegen_server.sharedstate.quotas import RedisCallerLimiter

#: Generations travel through Redis as their protobuf bytes.
GENERATION_CODEC: Codec[image_pb2.Generation] = Codec(
    encode=lambda generation: generation.SerializeToString(), decode=image_pb2.Generation.FromString
)


@dataclass(frozen=True, slots=True)
class SharedStores:
    """The Redis-backed stores of one server (each falls back to its in-process twin when failing open)."""

    state: SharedState
    idempotency: RedisIdempotencyStore[image_pb2.Generation]
    limiter: RedisCallerLimiter
    breaker: RedisBreakerStore

    async def aclose(self) -> None:
        """Stop background work and close the connections."""
        await self.idempotency.aclose()
        await self.limiter.aclose()
        await self.state.aclose()


def open_stores(config: ServerConfig, *, on_error: ErrorListener | None = None) -> SharedStores:
    """The shared stores at ``config.state_url`` (connections are made on first use)."""
    if config.state_url is None:
        raise ValueError("open_stores needs a state_url")
    state = SharedState.from_url(
        config.state_url,
        fail_open=config.state_fail_mode == "open",
        timeout=config.state_timeout,
        bulk_bytes=config.state_max_result_bytes,
        on_error=on_error,
    )
    local: MemoryIdempotencyStore[image_pb2.Generation] = MemoryIdempotencyStore(
        ttl=config.idempotency_ttl,
        max_bytes=config.idempotency_max_bytes,
        sizeof=lambda generation: generation.ByteSize(),
        clock=MONOTONIC_CLOCK.now,
    )
    idempotency = RedisIdempotencyStore(
        state,
        ttl=config.idempotency_ttl,
        max_result_bytes=config.state_max_result_bytes,
        codec=GENERATION_CODEC,
        fallback=local,
    )
    limiter = RedisCallerLimiter(state, fallback=LocalCallerLimiter())
    # Longer than any open circuit plus its probe: a state never expires while it still matters.
    breaker = RedisBreakerStore(state, ttl=config.breaker_max_open_seconds + config.attempt_timeout + 60)
    return SharedStores(state=state, idempotency=idempotency, limiter=limiter, breaker=breaker)
