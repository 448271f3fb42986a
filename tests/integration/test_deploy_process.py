"""The Kubernetes pod's server, started as a real process the way the manifests start it.

Same args as deploy/k8s/deployment.yaml (only the bind address and ports swapped for free
loopback ones) and the ConfigMap's IMAGEGEN_* values in the environment; no API key, so it
runs the embedded emulator. Then the image's HEALTHCHECK command, the readiness probe's
health check, /metrics and SIGTERM are exercised against it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def manifests() -> tuple[dict[str, Any], dict[str, str]]:
    """The Deployment's container and the ConfigMap's data."""
    docs = [d for p in sorted((DEPLOY / "k8s").glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]
    [deployment] = [d for d in docs if d["kind"] == "Deployment"]
    [configmap] = [d for d in docs if d["kind"] == "ConfigMap"]
    return deployment["spec"]["template"]["spec"]["containers"][0], {k: str(v) for k, v in configmap["data"].items()}


def on_loopback(args: list[str]) -> list[str]:
    """The container's args with the bind address and both ports replaced (free ports, loopback)."""
    swapped = {"--host": "127.0.0.1", "--port": "0", "--metrics-host": "127.0.0.1", "--metrics-port": "0"}
    out = list(args)
    for i, arg in enumerate(out[:-1]):
        if arg in swapped:
            out[i + 1] = swapped[arg]
    assert set(swapped) <= set(out), f"the Deployment's args no longer set {set(swapped) - set(out)}"
    return out


def healthcheck_argv(target: str) -> list[str]:
    """The Dockerfile's HEALTHCHECK command, pointed at ``target``."""
    line = next(ln for ln in (DEPLOY / "Dockerfile").read_text().splitlines() if 'CMD ["imagegen", "health"' in ln)
    argv: list[str] = json.loads(line.split("CMD", 1)[1])
    argv[argv.index("--target") + 1] = target
    return [str(Path(sys.executable).with_name(argv[0])), *argv[1:]]


async def test_the_pod_command_serves_passes_its_healthcheck_and_drains_on_sigterm() -> None:
    container, config = manifests()
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEGEN_") and not k.endswith("_API_KEY")}
    env.update(config)
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("imagegen")),
        "serve",
        *on_loopback(container["args"]),
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    assert proc.stderr is not None
    try:
        target = metrics_url = ""
        while not (target and metrics_url):
            line = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()
            assert line, "server exited before listening"
            if match := re.search(r"listening on (\S+)", line):
                target = match.group(1)
            if match := re.search(r"metrics on (http://\S+/metrics)", line):
                metrics_url = match.group(1)

        check = await asyncio.create_subprocess_exec(*healthcheck_argv(target), stdout=asyncio.subprocess.PIPE)
        out, _ = await asyncio.wait_for(check.communicate(), 60)
        assert check.returncode == 0 and out.decode().strip() == "SERVING"

        readiness = container["readinessProbe"]["grpc"]["service"]
        async with grpc.aio.insecure_channel(target) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=readiness), timeout=5
            )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING

        async with aiohttp.ClientSession() as session, session.get(metrics_url) as response:
            assert response.status == 200 and "imagegen_" in await response.text()

        proc.send_signal(signal.SIGTERM)
        # No call in flight: the drain ends at once, well inside the 60 s grace the ConfigMap sets.
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
