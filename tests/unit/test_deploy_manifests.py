"""The deployment files in deploy/ agree with the server they deploy.

No Docker daemon or cluster runs here, so every manifest is parsed and checked
against the real thing: flags against ``imagegen serve``'s own parser, env
names against ``ServerConfig``'s fields (each value goes through the server's
own parsing), ports and probes against the config the server would actually
start with, the Envoy transcoder and the gRPC service config against the
descriptor set built from protos/. Nothing here lists the flags: new ones are
picked up from the parser.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf import descriptor_pb2, json_format, message_factory

from imagegen.v1 import image_generation_service_pb2 as pb
from imagegen_server.config import ServerConfig, build_parser

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
IMAGE_SERVICE = "imagegen.v1.ImageGenerationService"


# ---------------------------------------------------------------- the server's own vocabulary


def serve_flags() -> set[str]:
    """Every ``--flag`` ``imagegen serve`` accepts, read from its parser."""
    return {opt for action in build_parser()._actions for opt in action.option_strings if opt.startswith("--")}


def env_names() -> set[str]:
    """Every ``IMAGEGEN_*`` variable the server reads: one per ServerConfig field (the key has its own)."""
    return {f"IMAGEGEN_{f.name.upper()}" for f in fields(ServerConfig) if f.name != "api_key"}


def flags_in(args: Sequence[str]) -> list[str]:
    return [a.split("=", 1)[0] for a in args if a.startswith("--")]


def effective_config(args: Sequence[str], env: Mapping[str, str], where: str) -> ServerConfig:
    """What ``imagegen serve ARGS`` would run with in ENV, after checking every flag and env name exists."""
    unknown_flags = set(flags_in(args)) - serve_flags()
    assert not unknown_flags, f"{where}: imagegen serve has no {sorted(unknown_flags)}"
    unknown_env = {k for k in env if k.startswith("IMAGEGEN_")} - env_names()
    assert not unknown_env, f"{where}: the server reads no {sorted(unknown_env)} (ServerConfig has no such field)"
    return ServerConfig.from_args(list(args), env=dict(env))


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    """Run a command to completion (bounded), output captured; the caller checks the return code."""
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)


def console_script_help(*argv: str) -> str:
    """``imagegen ARGV --help`` through the installed console script (wherever the CLI lives)."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "imagegen" in scripts, "pyproject.toml has no imagegen console script"
    exe = Path(sys.executable).with_name("imagegen")
    assert exe.exists(), f"{exe} missing: pip install -e '.[dev]'"
    done = run(str(exe), *argv, "--help")
    assert done.returncode == 0, done.stderr
    return done.stdout


# ---------------------------------------------------------------- Dockerfile


@dataclass
class Stage:
    """One FROM ... AS name section of the Dockerfile."""

    image: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [rest for kw, rest in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        assert found, f"stage {self.name} has no {keyword}"
        return found[-1]


def dockerfile_stages() -> list[Stage]:
    text = (DEPLOY / "Dockerfile").read_text()
    # Join continuation lines, drop comments (the parser directive line is a comment too).
    logical = re.sub(r"\\\n", " ", "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#")))
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical.splitlines():
        if not line.strip():
            continue
        keyword, _, rest = line.strip().partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default
        elif keyword == "FROM":
            image, _, name = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], rest).partition(" AS ")
            stages.append(Stage(image.strip(), name.strip()))
        else:
            assert stages, f"{keyword} before FROM"
            stages[-1].instructions.append((keyword, rest))
    return stages


def exec_form(value: str) -> list[str]:
    parsed = json.loads(value)
    assert isinstance(parsed, list) and all(isinstance(x, str) for x in parsed), f"not exec form: {value}"
    return parsed


def env_of(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for rest in stage.all("ENV"):
        for token in shlex.split(rest):
            key, _, value = token.partition("=")
            env[key] = value
    return env


def copies(stage: Stage) -> list[tuple[str | None, list[str], str]]:
    """(from-stage, sources, destination) of every COPY."""
    out = []
    for rest in stage.all("COPY"):
        tokens = rest.split()
        source_stage = next((t.split("=", 1)[1] for t in tokens if t.startswith("--from=")), None)
        paths = [t for t in tokens if not t.startswith("--")]
        out.append((source_stage, paths[:-1], paths[-1]))
    return out


@pytest.fixture(scope="module")
def stages() -> dict[str, Stage]:
    found = dockerfile_stages()
    return {s.name: s for s in found} | {"<default>": found[-1]}


@pytest.fixture(scope="module")
def image_config(stages: dict[str, Stage]) -> ServerConfig:
    """The config the gateway image starts with: ENTRYPOINT + CMD, in the image's ENV."""
    runtime = stages["<default>"]
    entrypoint, cmd = exec_form(runtime.last("ENTRYPOINT")), exec_form(runtime.last("CMD"))
    assert entrypoint == ["imagegen", "serve"]
    return effective_config(cmd, env_of(runtime), "Dockerfile CMD")


def test_the_gateway_image_is_slim_python_and_runs_as_a_numeric_non_root_user(stages: dict[str, Stage]) -> None:
    runtime = stages["<default>"]
    assert runtime.name == "runtime", "the last stage (docker build's default target) must be the gateway"
    assert runtime.image == "python:3.11-slim"
    assert stages["build"].image == "python:3.11-slim"
    user = runtime.last("USER").split(":")
    assert all(part.isdigit() and int(part) != 0 for part in user), f"USER {user} must be numeric and not root"
    assert any("imagegen[server,otel]" in run for run in runtime.all("RUN")), "the image installs imagegen[server,otel]"


def test_the_image_binds_all_interfaces_and_exposes_what_the_server_listens_on(
    stages: dict[str, Stage], image_config: ServerConfig
) -> None:
    exposed = {int(p.split("/")[0]) for rest in stages["<default>"].all("EXPOSE") for p in rest.split()}
    assert image_config.host == "0.0.0.0"
    assert image_config.port in exposed
    assert image_config.metrics_port in exposed
    assert env_names() >= {k for k in env_of(stages["<default>"]) if k.startswith("IMAGEGEN_")}


def test_the_healthcheck_is_imagegen_health_against_the_served_port(
    stages: dict[str, Stage], image_config: ServerConfig
) -> None:
    healthcheck = stages["<default>"].last("HEALTHCHECK")
    options, _, command = healthcheck.partition(" CMD ")
    argv = exec_form(command.strip())
    assert argv[:2] == ["imagegen", "health"]
    health_help = console_script_help("health")
    unknown = {f for f in flags_in(argv[2:]) if not re.search(rf"(^|\s){re.escape(f)}\b", health_help)}
    assert not unknown, f"imagegen health has no {sorted(unknown)}"
    target = argv[argv.index("--target") + 1]
    host, _, port = target.rpartition(":")
    assert host in {"127.0.0.1", "localhost"} and int(port) == image_config.port
    timeout = float(argv[argv.index("--timeout") + 1])
    check_timeout = re.search(r"--timeout=(\d+)s", options)
    assert check_timeout and timeout < int(check_timeout.group(1)), "the RPC deadline must end before Docker's"


def test_the_envoy_stage_ships_the_descriptor_set_and_config_envoy_yaml_points_at(stages: dict[str, Stage]) -> None:
    build, envoy = stages["build"], stages["envoy"]
    assert any("deploy/descriptors.py" in run for run in build.all("RUN"))
    copied = {dest: (src_stage, sources) for src_stage, sources, dest in copies(envoy)}
    descriptor_path = transcoder_config()["proto_descriptor"]
    assert copied[descriptor_path][0] == "build"
    cmd = exec_form(envoy.last("CMD"))
    config_path = cmd[cmd.index("-c") + 1]
    assert copied[config_path] == (None, ["deploy/envoy.yaml"])
    assert (ROOT / "deploy/envoy.yaml").exists()


def test_every_file_the_dockerfile_copies_exists_and_is_not_docker_ignored(stages: dict[str, Stage]) -> None:
    ignored = dockerignored()
    for stage in stages.values():
        for src_stage, sources, _ in copies(stage):
            if src_stage is not None:
                continue
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: no such path"
                assert source.rstrip("/") not in ignored, f"COPY {source} is excluded by the .dockerignore"


def dockerignored() -> list[str]:
    lines = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


def test_the_build_stage_copies_what_pyproject_needs(stages: dict[str, Stage]) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = {"pyproject.toml", project["project"]["readme"], *project["project"].get("license-files", [])}
    needed |= set(project["tool"]["setuptools"]["packages"]["find"]["where"])
    copied = {
        source.rstrip("/")
        for src_stage, sources, _ in copies(stages["build"])
        if src_stage is None
        for source in sources
    }
    assert needed <= copied, f"deploy/Dockerfile's build stage does not COPY {sorted(needed - copied)}"


def test_the_build_stage_context_builds_the_wheel_and_the_descriptor_set(
    stages: dict[str, Stage], tmp_path: Path
) -> None:
    """Lay out /src as the build stage's COPY lines do, then run its two builds there (offline)."""
    src = tmp_path / "src"
    skip = shutil.ignore_patterns(*(Path(p).name for p in dockerignored()))
    for src_stage, sources, dest in copies(stages["build"]):
        assert src_stage is None
        for source in sources:
            target = src / dest / Path(source).name if dest.endswith("/") else src / dest
            if (ROOT / source).is_dir():
                shutil.copytree(ROOT / source, target, ignore=skip)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / source, target)
    wheels = tmp_path / "wheels"
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q"]
    done = run(*pip_wheel, "-w", str(wheels), str(src))
    assert done.returncode == 0, done.stderr
    [wheel] = wheels.glob("imagegen-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        packages = {name.split("/")[0] for name in archive.namelist()}
    expected = {p.parent.name for where in ("sdk", "server", "cli") for p in (ROOT / where).glob("*/__init__.py")}
    assert expected <= packages
    out = tmp_path / "imagegen.pb"
    done = run(sys.executable, str(src / "deploy" / "descriptors.py"), str(out))
    assert done.returncode == 0, done.stderr
    assert any(
        f.name == "imagegen/v1/image_generation_service.proto"
        for f in descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    )


# ---------------------------------------------------------------- compose


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return loaded


def compose_env(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    # ${VAR:-default} interpolation: the default stands in for the operator's value.
    return {k: re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(v)) for k, v in env.items()}


def test_compose_gateway_runs_the_image_with_known_flags_and_env(
    compose: dict[str, Any], stages: dict[str, Stage], image_config: ServerConfig
) -> None:
    gateway = compose["services"]["gateway"]
    assert (
        gateway["build"]["target"] in stages
        and (DEPLOY / gateway["build"]["context"] / gateway["build"]["dockerfile"]).exists()
    )
    args = gateway.get("command") or exec_form(stages[gateway["build"]["target"]].last("CMD"))
    config = effective_config(args, {**env_of(stages["runtime"]), **compose_env(gateway)}, "compose gateway")
    exposed = {int(p) for p in gateway["expose"]}
    assert {config.port, config.metrics_port} <= exposed
    assert gateway["deploy"]["replicas"] >= 2
    assert "GEMINI_API_KEY" in gateway["environment"]
    # docker stop must leave the server its whole drain before SIGKILL.
    assert int(gateway["stop_grace_period"].rstrip("s")) > config.shutdown_grace
    assert gateway["read_only"] is True


def test_compose_has_redis_and_an_envoy_front_built_from_the_dockerfile(
    compose: dict[str, Any], stages: dict[str, Stage]
) -> None:
    services = compose["services"]
    assert services["redis"]["image"].startswith("redis:")
    assert services["envoy"]["build"]["target"] == "envoy" and "envoy" in stages
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown service {dependency}"
    published = {int(p.split(":")[-1]) for p in services["envoy"]["ports"]}
    listeners = envoy_config()["static_resources"]["listeners"]
    assert published == {lis["address"]["socket_address"]["port_value"] for lis in listeners}


def test_envoy_clusters_point_at_compose_services_on_their_grpc_port(compose: dict[str, Any]) -> None:
    services = compose["services"]
    clusters = envoy_config()["static_resources"]["clusters"]
    for cluster in clusters:
        assert (
            "http2_protocol_options"
            in cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"][
                "explicit_http_config"
            ]
        ), f"{cluster['name']}: gRPC needs HTTP/2 to the replicas"
        assert cluster["lb_policy"] == "ROUND_ROBIN"
        for group in cluster["load_assignment"]["endpoints"]:
            for endpoint in group["lb_endpoints"]:
                address = endpoint["endpoint"]["address"]["socket_address"]
                service = services[address["address"]]
                assert str(address["port_value"]) in {str(p) for p in service["expose"]}
                args = service.get("command") or exec_form(dockerfile_stages()[-1].last("CMD"))
                config = effective_config(args, compose_env(service), "compose " + address["address"])
                assert address["port_value"] == config.port
    routed = {
        route["route"]["cluster"]
        for lis in envoy_config()["static_resources"]["listeners"]
        for hcm in http_connection_managers(lis)
        for vhost in hcm["route_config"]["virtual_hosts"]
        for route in vhost["routes"]
    }
    assert routed <= {c["name"] for c in clusters}


# ---------------------------------------------------------------- Envoy and the descriptors


def envoy_config() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "envoy.yaml").read_text())
    return loaded


def http_connection_managers(listener: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    for chain in listener["filter_chains"]:
        for network_filter in chain["filters"]:
            if network_filter["name"] == "envoy.filters.network.http_connection_manager":
                yield network_filter["typed_config"]


def transcoder_config() -> dict[str, Any]:
    found = [
        http_filter["typed_config"]
        for lis in envoy_config()["static_resources"]["listeners"]
        for hcm in http_connection_managers(lis)
        for http_filter in hcm["http_filters"]
        if http_filter["name"] == "envoy.filters.http.grpc_json_transcoder"
    ]
    assert len(found) == 1, "envoy.yaml needs exactly one grpc_json_transcoder"
    return found[0]


@pytest.fixture(scope="module")
def descriptor_set(tmp_path_factory: pytest.TempPathFactory) -> descriptor_pb2.FileDescriptorSet:
    """The descriptor set deploy/descriptors.py builds (as the Dockerfile does), from protos/ now."""
    out = tmp_path_factory.mktemp("descriptors") / "imagegen.pb"
    done = run(sys.executable, str(DEPLOY / "descriptors.py"), str(out))
    assert done.returncode == 0, done.stderr
    return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


def services_in(descriptors: descriptor_pb2.FileDescriptorSet) -> dict[str, descriptor_pb2.ServiceDescriptorProto]:
    return {f"{f.package}.{s.name}": s for f in descriptors.file for s in f.service}


def test_the_transcoder_serves_services_that_are_in_the_descriptor_set(
    descriptor_set: descriptor_pb2.FileDescriptorSet,
) -> None:
    config = transcoder_config()
    assert config["services"] == [IMAGE_SERVICE]
    assert set(config["services"]) <= set(services_in(descriptor_set))
    # convert_grpc_status renders our error details: their types must be in the set.
    messages = {f"{f.package}.{m.name}" for f in descriptor_set.file for m in f.message_type}
    assert {"google.rpc.Status", "google.rpc.ErrorInfo", "google.rpc.BadRequest", "google.rpc.RetryInfo"} <= messages
    assert config["convert_grpc_status"] is True
    assert config["print_options"]["stream_sse_style_delimited"] is True
    # Bodies carry base64 images: at least the gateway's message limit.
    limit = ServerConfig().max_message_bytes
    assert config["max_request_body_size"] >= limit and config["max_response_body_size"] >= limit


def http_rules(descriptors: descriptor_pb2.FileDescriptorSet, service: str) -> dict[str, tuple[str, str]]:
    """RPC name -> (HTTP verb, path) from its ``google.api.http`` option."""
    from google.api import annotations_pb2

    rules = {}
    for method in services_in(descriptors)[service].method:
        # Re-read the options with the google.api extensions known (the set was parsed without them).
        options = descriptor_pb2.MethodOptions.FromString(method.options.SerializeToString())
        rule = options.Extensions[annotations_pb2.http]
        verb = rule.WhichOneof("pattern")
        if verb is not None:
            rules[method.name] = (verb.upper(), getattr(rule, verb))
    return rules


def test_every_transcoded_rpc_has_a_rest_route_and_the_docs_curl_only_those(
    descriptor_set: descriptor_pb2.FileDescriptorSet,
) -> None:
    rules = http_rules(descriptor_set, IMAGE_SERVICE)
    assert set(rules) == {m.name for m in services_in(descriptor_set)[IMAGE_SERVICE].method}
    routes = set(rules.values())
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "docs" / "deploy.md").read_text(), flags=re.DOTALL)
    commands = [line.strip() for block in blocks for line in re.sub(r"\\\n", " ", block).splitlines()]
    curls = [c for c in commands if c.startswith("curl ") and "localhost:8080" in c]
    assert curls, "docs/deploy.md shows curl examples through Envoy"
    for curl in curls:
        path = re.search(r"localhost:8080(/[^\s'\"]+)", curl)
        assert path, curl
        verb = "POST" if re.search(r"\s-d\s", curl) else "GET"
        assert (verb, path.group(1)) in routes, f"docs/deploy.md: {verb} {path.group(1)} is no google.api.http route"
        body = re.search(r"\s-d\s+'([^']*)'", curl)
        if body:  # body "*": the JSON is the whole request message, in protobuf's JSON mapping
            method = next(name for name, route in rules.items() if route == (verb, path.group(1)))
            descriptor = pb.DESCRIPTOR.services_by_name["ImageGenerationService"].methods_by_name[method].input_type
            json_format.Parse(body.group(1), message_factory.GetMessageClass(descriptor)())


def test_the_descriptor_set_holds_every_import_envoy_needs(descriptor_set: descriptor_pb2.FileDescriptorSet) -> None:
    names = {f.name for f in descriptor_set.file}
    for f in descriptor_set.file:
        missing = set(f.dependency) - names
        assert not missing, f"{f.name} imports {missing}, not in the set (--include_imports)"


def test_envoy_health_checks_ask_for_the_service_the_server_reports(
    descriptor_set: descriptor_pb2.FileDescriptorSet,
) -> None:
    from imagegen_server.app import SERVICE_NAME

    for cluster in envoy_config()["static_resources"]["clusters"]:
        for check in cluster["health_checks"]:
            assert check["grpc_health_check"]["service_name"] == SERVICE_NAME
    assert SERVICE_NAME in services_in(descriptor_set)


# ---------------------------------------------------------------- Kubernetes


def k8s_documents() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def one(kind: str) -> dict[str, Any]:
    found = [d for d in k8s_documents() if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def pod() -> dict[str, Any]:
    spec: dict[str, Any] = one("Deployment")["spec"]["template"]
    return spec


@pytest.fixture(scope="module")
def container(pod: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = pod["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


@pytest.fixture(scope="module")
def pod_config(container: dict[str, Any], stages: dict[str, Stage]) -> ServerConfig:
    """The config the pod's server starts with: args, ConfigMap (envFrom) and env."""
    configmap = one("ConfigMap")
    names = [ref["configMapRef"]["name"] for ref in container["envFrom"]]
    assert names == [configmap["metadata"]["name"]]
    env = {k: str(v) for k, v in configmap["data"].items()}
    env.update({e["name"]: str(e.get("value", "")) for e in container.get("env", []) if "value" in e})
    args = container.get("args") or exec_form(stages["runtime"].last("CMD"))
    assert "command" not in container, "keep the image's ENTRYPOINT (imagegen serve)"
    return effective_config(args, {**env_of(stages["runtime"]), **env}, "k8s Deployment")


def named_ports(container: Mapping[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container["ports"]}


def test_the_pod_listens_where_its_ports_say(container: dict[str, Any], pod_config: ServerConfig) -> None:
    assert pod_config.host == "0.0.0.0"
    assert named_ports(container) == {"grpc": pod_config.port, "metrics": pod_config.metrics_port}


def test_probes_are_native_grpc_health_checks_on_the_grpc_port(
    container: dict[str, Any], descriptor_set: descriptor_pb2.FileDescriptorSet
) -> None:
    grpc_port = named_ports(container)["grpc"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == grpc_port, probe
    # Readiness follows the image service, which turns NOT_SERVING when draining starts.
    assert container["readinessProbe"]["grpc"]["service"] in services_in(descriptor_set)


def test_the_key_comes_from_a_secret_and_config_from_the_configmap(container: dict[str, Any]) -> None:
    env = {e["name"]: e for e in container["env"]}
    assert set(env["GEMINI_API_KEY"]["valueFrom"]) == {"secretKeyRef"}
    assert all(k.startswith("IMAGEGEN_") for k in one("ConfigMap")["data"])
    assert not any("value" in e and "KEY" in e["name"] for e in container["env"]), "no secret in plain env"


def test_the_pod_runs_non_root_on_a_read_only_root(
    pod: dict[str, Any], container: dict[str, Any], stages: dict[str, Stage]
) -> None:
    pod_security = pod["spec"]["securityContext"]
    security = container["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    assert str(pod_security["runAsUser"]) == stages["runtime"].last("USER").split(":")[0]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/tmp"}
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]


def test_termination_grace_covers_the_pause_and_the_servers_drain(
    pod: dict[str, Any], container: dict[str, Any], pod_config: ServerConfig
) -> None:
    pause = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pause[0] == "sleep"
    assert pod["spec"]["terminationGracePeriodSeconds"] >= float(pause[1]) + pod_config.shutdown_grace + 5


def test_services_target_named_ports_of_the_pod(pod: dict[str, Any], container: dict[str, Any]) -> None:
    labels = pod["metadata"]["labels"]
    services = [d for d in k8s_documents() if d["kind"] == "Service"]
    assert services
    for service in services:
        assert service["spec"]["selector"].items() <= labels.items()
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in named_ports(container), f"{service['metadata']['name']}: {port}"
            assert port["port"] == named_ports(container)[port["targetPort"]]


def test_hpa_and_pdb_select_the_deployment() -> None:
    deployment, hpa, pdb = one("Deployment"), one("HorizontalPodAutoscaler"), one("PodDisruptionBudget")
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["maxReplicas"] >= hpa["spec"]["minReplicas"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    # With the HPA's minimum, the budget always leaves a replica serving.
    assert pdb["spec"]["maxUnavailable"] < hpa["spec"]["minReplicas"]


def test_kustomization_lists_every_manifest_and_the_image() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    manifests = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == manifests
    images = {i["name"] for i in kustomization["images"]}
    container_image = one("Deployment")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert container_image.split(":")[0] in images


# ---------------------------------------------------------------- gRPC service config


@pytest.fixture(scope="module")
def service_config() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((DEPLOY / "grpc-service-config.json").read_text())
    return loaded


def test_service_config_names_methods_that_exist_and_covers_them_all(
    service_config: dict[str, Any], descriptor_set: descriptor_pb2.FileDescriptorSet
) -> None:
    services = services_in(descriptor_set)
    named: list[tuple[str, str]] = []
    for method_config in service_config["methodConfig"]:
        for name in method_config["name"]:
            assert name["service"] in services, name
            assert name["method"] in {m.name for m in services[name["service"]].method}, name
            named.append((name["service"], name["method"]))
        assert method_config["timeout"].endswith("s")
    assert len(named) == len(set(named)), "a method is configured twice"
    assert set(named) == {(IMAGE_SERVICE, m.name) for m in services[IMAGE_SERVICE].method}


def test_service_config_retries_only_unavailable_and_throttles(
    service_config: dict[str, Any], descriptor_set: descriptor_pb2.FileDescriptorSet
) -> None:
    methods = {m.name: m for m in services_in(descriptor_set)[IMAGE_SERVICE].method}
    for method_config in service_config["methodConfig"]:
        policy = method_config["retryPolicy"]
        assert policy["retryableStatusCodes"] == ["UNAVAILABLE"]
        assert 2 <= policy["maxAttempts"] <= 5  # gRPC caps attempts at 5
        for name in method_config["name"]:
            method = methods[name["method"]]
            if not method.server_streaming and name["method"] != "ListModels":
                # A unary generation can fail after the server did paid work: one retry at most.
                assert policy["maxAttempts"] == 2, name
    assert service_config["retryThrottling"]["maxTokens"] > 0
    assert 0 < service_config["retryThrottling"]["tokenRatio"] <= 1


class Throttle:
    """gRFC A6 retry throttling, per channel: a failure takes a token, a success gives back
    ``tokenRatio``; retries are allowed while more than half the tokens are left."""

    def __init__(self, max_tokens: float, ratio: float) -> None:
        self.max_tokens, self.ratio, self.tokens = max_tokens, ratio, max_tokens

    def failed(self) -> bool:
        """Record a failed attempt; whether a retry may follow."""
        self.tokens = max(0.0, self.tokens - 1)
        return self.tokens > self.max_tokens / 2

    def succeeded(self) -> None:
        self.tokens = min(self.max_tokens, self.tokens + self.ratio)


def test_throttling_stops_retries_in_an_outage_but_not_for_one_bad_replica_and_recovers_quickly(
    service_config: dict[str, Any],
) -> None:
    settings = service_config["retryThrottling"]
    # A total outage (Gemini down: every replica answers UNAVAILABLE): retries stop after a handful.
    outage = Throttle(settings["maxTokens"], settings["tokenRatio"])
    retries = 0
    while outage.failed():
        retries += 1
    assert retries <= settings["maxTokens"] / 2
    # A low-traffic caller gets retries back after a dozen good calls, not the ~50 of tokenRatio 0.1.
    successes = 0
    while outage.tokens <= outage.max_tokens / 2:
        outage.succeeded()
        successes += 1
    assert successes <= 12
    # One replica of three refusing everything (stuck draining, crashed app): round robin sends it
    # every third attempt; its refusals are retried on the others and retries never switch off.
    bad_replica = Throttle(settings["maxTokens"], settings["tokenRatio"])
    pick = 0
    for _ in range(300):
        while pick % 3 == 0:  # this attempt lands on the bad replica
            pick += 1
            assert bad_replica.failed(), "throttling switched retries off for one bad replica"
        pick += 1
        bad_replica.succeeded()
