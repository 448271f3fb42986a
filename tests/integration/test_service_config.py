"""deploy/grpc-service-config.json loaded into a real grpc channel, against real servers.

The service config is what generated clients get: per-method timeouts, retries on
UNAVAILABLE only, retry throttling and round_robin. These tests load the shipped
file as is (``grpc.service_config`` channel option) and check that it parses, that
the calls work against the real server, and that a replica answering UNAVAILABLE
(a draining imagegen server, or a dead one) is retried onto a healthy replica.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from imagegen.v1 import image_generation_service_pb2 as pb
from imagegen.v1 import image_generation_service_pb2_grpc as pb_grpc
from imagegen_server.app import RunningServer
from tests.conftest import ServerFactory
from tests.integration.status_helpers import details_of

SERVICE_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "grpc-service-config.json"
#: What every client needs anyway: images are larger than gRPC's default 4 MiB receive limit.
SIZE_OPTIONS = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]


def shipped_config() -> str:
    return SERVICE_CONFIG.read_text(encoding="utf-8")


def channel(target: str, service_config: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(
        target, options=[*SIZE_OPTIONS, ("grpc.service_config", service_config), ("grpc.enable_retries", 1)]
    )


def without_retries() -> str:
    """The shipped config minus retryPolicy: the control that shows the retries matter."""
    config = json.loads(shipped_config())
    for method in config["methodConfig"]:
        method.pop("retryPolicy", None)
    return json.dumps(config)


def two_replicas(a: str, b: str) -> str:
    """One channel over two loopback replicas; the service config's round_robin alternates them."""
    return f"ipv4:{a},{b}"


class DeadReplica(grpc.GenericRpcHandler):
    """A replica that answers every call with UNAVAILABLE (a crashed or partitioned gateway)."""

    def __init__(self) -> None:
        self.calls = 0

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any]:
        async def refuse(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            self.calls += 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "replica down")
            raise AssertionError("abort returned")

        return grpc.unary_unary_rpc_method_handler(refuse)


@pytest.fixture
async def dead_replica() -> AsyncIterator[tuple[str, DeadReplica]]:
    handler = DeadReplica()
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}", handler
    finally:
        await server.stop(None)


async def test_the_shipped_config_parses_and_every_rpc_works_against_the_real_server(server: RunningServer) -> None:
    async with channel(server.target, shipped_config()) as ch:
        stub = pb_grpc.ImageGenerationServiceStub(ch)
        models = await stub.ListModels(pb.ListModelsRequest())
        assert models.models
        generated = await stub.Generate(pb.GenerateRequest(prompt="a fox", options=pb.GenerationOptions(seed=1)))
        assert generated.generation.image.data
        events = [e async for e in stub.GenerateStream(pb.GenerateStreamRequest(prompt="a fox"))]
        assert events[-1].WhichOneof("event") == "completed"


async def test_an_invalid_service_config_is_refused_by_grpc_so_the_check_above_means_something(
    server: RunningServer,
) -> None:
    # grpc validates the whole config when the channel is built and refuses a bad one,
    # so the shipped file passing the test above means grpc accepted every field of it.
    async with channel(server.target, '{"methodConfig": [{"name": "not-a-list"}]}') as ch:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await pb_grpc.ImageGenerationServiceStub(ch).ListModels(pb.ListModelsRequest(), timeout=5)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "service config" in (caught.value.details() or "")


async def test_list_models_is_retried_on_unavailable_onto_the_healthy_replica(
    server: RunningServer, dead_replica: tuple[str, DeadReplica]
) -> None:
    dead_target, dead = dead_replica
    async with channel(two_replicas(dead_target, server.target), shipped_config()) as ch:
        stub = pb_grpc.ImageGenerationServiceStub(ch)
        # round_robin only picks connected replicas: until both are, every retry may meet the dead one
        # (on a loaded machine the healthy one can connect late). Warm up until both have answered.
        answered_ok = answered(server, "OK")
        for _ in range(50):
            with contextlib.suppress(grpc.aio.AioRpcError):
                await stub.ListModels(pb.ListModelsRequest(), timeout=10)
            if dead.calls and answered(server, "OK") > answered_ok:
                break
        before = dead.calls
        # Then call until the dead one has been tried twice more.
        for _ in range(20):
            reply = await stub.ListModels(pb.ListModelsRequest(), timeout=10)
            assert reply.models  # every call succeeds: a refused attempt went to the real server
            if dead.calls >= before + 2:
                break
    assert dead.calls >= before + 2


async def test_without_the_retry_policy_the_dead_replica_fails_calls(
    server: RunningServer, dead_replica: tuple[str, DeadReplica]
) -> None:
    dead_target, dead = dead_replica
    failures = 0
    async with channel(two_replicas(dead_target, server.target), without_retries()) as ch:
        stub = pb_grpc.ImageGenerationServiceStub(ch)
        for _ in range(20):
            try:
                await stub.ListModels(pb.ListModelsRequest())
            except grpc.aio.AioRpcError as err:
                assert err.code() == grpc.StatusCode.UNAVAILABLE
                failures += 1
            if failures >= 2:
                break
    assert failures >= 2 and dead.calls == failures


Call = Callable[[pb_grpc.ImageGenerationServiceStub, int], Awaitable[object]]


async def unary_generate(stub: pb_grpc.ImageGenerationServiceStub, i: int) -> object:
    reply = await stub.Generate(pb.GenerateRequest(prompt=f"fox {i}", options=pb.GenerationOptions(request_id=f"r{i}")))
    assert reply.generation.image.data
    return reply


async def streamed_generate(stub: pb_grpc.ImageGenerationServiceStub, i: int) -> object:
    events = [e async for e in stub.GenerateStream(pb.GenerateStreamRequest(prompt=f"fox {i}"))]
    assert events[-1].WhichOneof("event") == "completed"
    return events


def answered(replica: RunningServer, code: str) -> int:
    """RPCs the replica finished with ``code``, read from its own Prometheus counter."""
    return int(
        sum(
            sample.value
            for metric in replica.metrics.registry.collect()
            for sample in metric.samples
            if sample.name == "imagegen_rpcs_total" and code in sample.labels.values()
        )
    )


def refusals(replica: RunningServer) -> int:
    return answered(replica, "UNAVAILABLE")


async def connect_both(stub: pb_grpc.ImageGenerationServiceStub, *replicas: RunningServer) -> None:
    """Until both replicas have answered, round_robin may know only one of them, and a retry would
    land on the same replica again. ListModels is served even while draining."""
    before = [answered(r, "OK") for r in replicas]
    for _ in range(50):
        await stub.ListModels(pb.ListModelsRequest(), timeout=10)
        if all(answered(r, "OK") > b for r, b in zip(replicas, before, strict=True)):
            return
    raise AssertionError("round_robin never used both replicas")


@pytest.mark.parametrize("call", [unary_generate, streamed_generate], ids=["Generate", "GenerateStream"])
async def test_a_draining_replica_is_retried_for_generation(make_server: ServerFactory, call: Call) -> None:
    async with make_server() as draining, make_server() as healthy:
        # What SIGTERM does first: new generations get UNAVAILABLE (reason SHUTTING_DOWN) before any work.
        draining.pipeline.draining = True
        target = two_replicas(draining.target, healthy.target)
        failed_without_retries = 0
        async with channel(target, without_retries()) as ch:
            stub = pb_grpc.ImageGenerationServiceStub(ch)
            # round_robin only picks connected replicas: call until the draining one has refused twice.
            for i in range(20):
                try:
                    await call(stub, i)
                except grpc.aio.AioRpcError as err:
                    assert (err.code(), details_of(err).reason) == (grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN")
                    failed_without_retries += 1
                if failed_without_retries >= 2:
                    break
        assert failed_without_retries == refusals(draining) >= 2  # without retries, each refusal is an error

        async with channel(target, shipped_config()) as ch:
            stub = pb_grpc.ImageGenerationServiceStub(ch)
            await connect_both(stub, draining, healthy)
            for i in range(20):
                await call(stub, 100 + i)  # none fails: each refused attempt was retried on the healthy replica
                if refusals(draining) >= failed_without_retries + 2:
                    break
        assert refusals(draining) >= failed_without_retries + 2
