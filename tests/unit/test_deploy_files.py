"""The deployment files, validated offline: the Compose file against the Compose Specification schema,
the Kubernetes manifests against the API schemas of the versions we claim, and both against this
project (every XDM_* variable is a config key with a valid value, every command line parses with the
real `xdm` CLI, names referenced between resources exist).

Validators: kubernetes-validate (bundles the Kubernetes JSON schemas) and check-jsonschema (bundles the
Compose Specification schema); each test skips, saying which package is missing, when one is absent.
No Docker engine or cluster is needed. Where a Compose CLI is installed (`docker compose` v2, or Debian's
docker-compose 1.29) its `config -q` runs too; `kubectl apply --dry-run=server -k infra/k8s` is the
cluster-side equivalent for the manifests.
"""

from __future__ import annotations

import copy
import json
import re
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any, Iterator

import click
import pytest

from xdm.cli import cli
from xdm.config import load_config

yaml = pytest.importorskip("yaml", reason="PyYAML is not installed; it comes with the dev extra's validators "
                          "(pip install -e '.[dev]')")

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = ROOT / "infra" / "compose"
K8S_DIR = ROOT / "infra" / "k8s"
K8S_VERSIONS = ("1.30.0", "1.37.0")  # native gRPC probes are GA from 1.27; test the oldest we claim and the newest
WORKLOADS = {"Deployment", "StatefulSet", "Job"}


def _kubernetes_validate():
    return pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed "
                               "(pip install -e '.[dev]'); it validates infra/k8s offline")


def _compose_schema() -> dict:
    pytest.importorskip("check_jsonschema", reason="check-jsonschema is not installed (pip install -e '.[dev]'); "
                        "it ships the Compose Specification schema")
    path = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    return json.loads(path.read_text())


# ---- Compose

def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable substitution: ${VAR}, ${VAR:-default}, ${VAR-default}, $$ for a literal $."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, default = match.group(1), match.group(2), match.group(3) or ""
        if op == ":-":
            return env.get(name) or default
        if op == "-":
            return env.get(name, default)
        if name not in env:
            raise KeyError(f"${{{name}}} has no default and is not set")
        return env[name]

    return re.sub(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:-|-)([^}]*))?\}", substitute, value)


def load_compose(*names: str, env: dict[str, str] | None = None) -> dict:
    """Load, interpolate and merge Compose files the way `docker compose -f a -f b config` does (the parts used here)."""
    merged: dict = {}
    for name in names:
        doc = interpolate(yaml.safe_load((COMPOSE_DIR / name).read_text()), env or {})
        merged = _merge(merged, doc)
    return merged


def _merge(base: Any, override: Any) -> Any:
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for key, value in override.items():
            out[key] = _merge(base.get(key), value) if key in base else copy.deepcopy(value)
        return out
    return copy.deepcopy(override)


def _xdm_services(compose: dict) -> Iterator[tuple[str, dict]]:
    for name, service in compose["services"].items():
        if str(service.get("image", "")).startswith("${XDM_IMAGE") or "build" in service:
            yield name, service


def parse_xdm_argv(argv: list[str]) -> tuple[str, dict]:
    """Parse a command line with the real `xdm` click group, without running it: (subcommand, its params)."""
    ctx = cli.make_context("xdm", list(argv))
    rest = [*(getattr(ctx, "_protected_args", None) or ctx.protected_args), *ctx.args]
    name, command, rest = cli.resolve_command(ctx, rest)
    sub = command.make_context(name, rest, parent=ctx)
    return name, sub.params


def _profile(argv: list[str]) -> str:
    return argv[argv.index("--profile") + 1] if "--profile" in argv else "local"


def test_compose_files_follow_the_compose_specification():
    import jsonschema

    schema = _compose_schema()
    for files in (("compose.yaml",), ("compose.yaml", "compose.gpu.yaml")):
        doc = load_compose(*files)
        jsonschema.validate(doc, schema, cls=jsonschema.Draft7Validator)


def test_the_compose_validator_rejects_a_typo():
    import jsonschema

    doc = load_compose("compose.yaml")
    doc["services"]["worker"]["dependz_on"] = doc["services"]["worker"].pop("depends_on")
    with pytest.raises(jsonschema.ValidationError, match="dependz_on"):
        jsonschema.validate(doc, _compose_schema(), cls=jsonschema.Draft7Validator)



def test_compose_files_pass_the_compose_cli_where_one_is_installed(tmp_path):
    """`docker compose config` (v2) when present, else Debian's docker-compose 1.29; skipped without either."""
    import shutil
    import subprocess

    files = [COMPOSE_DIR / "compose.yaml", COMPOSE_DIR / "compose.gpu.yaml"]
    v2 = shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0
    if v2:
        argv = ["docker", "compose"]
    elif shutil.which("docker-compose"):
        argv = ["docker-compose"]
        # 1.29 predates the top-level `name` key; everything else is checked as written.
        copies = []
        for path in files:
            copy_path = tmp_path / path.name
            copy_path.write_text("".join(line for line in path.read_text().splitlines(True)
                                         if not line.startswith("name:")))
            copies.append(copy_path)
        files = copies
    else:
        pytest.skip("neither `docker compose` (v2) nor docker-compose is installed")
    for chosen in (files[:1], files):
        command = [*argv, *(a for f in chosen for a in ("-f", str(f))), "config", "-q"]
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr

def test_compose_stack_has_every_part_of_the_system():
    compose = load_compose("compose.yaml")
    services = compose["services"]
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert "broker,controller" in services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]  # KRaft, no ZooKeeper
    assert {"etcd", "minio", "milvus"} <= set(services)
    commands = {name: parse_xdm_argv(s["command"]) for name, s in _xdm_services(compose) if "entrypoint" not in s}
    assert commands["topics"][0] == "topics" and services["topics"]["restart"] == "no"
    assert commands["worker"][0] == "worker" and int(services["worker"]["deploy"]["replicas"]) >= 2
    assert {p["arm"] for c, p in commands.values() if c == "learn"} == {"xdm", "sdm"}
    servers = [name for name, (command, _) in commands.items() if command == "serve"]
    assert len(servers) >= 2
    host_ports = {s["ports"][0] for s in (services[n] for n in servers)}
    assert host_ports == {"50051:50051", "50052:50051"}  # the README's ipv4:127.0.0.1:50051,127.0.0.1:50052
    for name in servers:
        assert "recall" in services[name]["networks"]["default"]["aliases"]  # dns:///recall:50051 inside
        assert "grpc_health" in " ".join(services[name]["healthcheck"]["test"])


def test_compose_xdm_services_are_configured_by_valid_environment_and_valid_command_lines():
    compose = load_compose("compose.yaml", "compose.gpu.yaml", env={"XDM_WORKERS": "3"})
    assert compose["services"]["worker"]["deploy"]["replicas"] == "3"
    checked = 0
    for name, service in _xdm_services(compose):
        env = {k: str(v) for k, v in service["environment"].items()}
        assert all(k.startswith("XDM_") for k in env), name
        argv = service["command"] if "entrypoint" not in service else ["--profile", "cluster", "topics"]
        cfg = load_config(_profile(argv), env=env)  # unknown keys and bad values raise, naming the key
        assert cfg.kafka.bootstrap == "kafka:9092" and cfg.milvus.uri == "http://milvus:19530"
        assert cfg.kafka.compaction and cfg.kafka.replication == 1  # one broker: one replica
        assert cfg.serving.host == "0.0.0.0"
        parse_xdm_argv(argv)
        for dependency in service.get("depends_on", {}):
            assert dependency in compose["services"], f"{name} depends on unknown {dependency}"
        checked += 1
    assert checked >= 7
    volumes = set(compose["volumes"])
    for name, service in compose["services"].items():
        for mount in service.get("volumes", []):
            if isinstance(mount, str) and not mount.startswith(("/", ".")):
                assert mount.split(":")[0] in volumes, f"{name} mounts undeclared volume {mount}"


def test_compose_gpu_override_reserves_a_gpu_for_each_learner_only():
    compose = load_compose("compose.yaml", "compose.gpu.yaml")
    for name, service in compose["services"].items():
        devices = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
        if name.startswith("learner-"):
            assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}], name
            assert service["build"]["args"]["TORCH_INDEX"] == "https://pypi.org/simple"
        else:
            assert not devices, name


def test_dockerfile_installs_the_pinned_torch_and_every_package():
    dockerfile = (COMPOSE_DIR / "Dockerfile").read_text()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    torch_pin = next(d for d in project["project"]["dependencies"] if d.startswith("torch=="))
    assert f"ARG TORCH_VERSION={torch_pin.split('==')[1]}" in dockerfile
    assert "ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu" in dockerfile  # CPU wheel by default
    copied = set(re.findall(r"^COPY (\S+) ", dockerfile, flags=re.M))
    for source in copied:
        assert (ROOT / source).exists(), f"COPY {source}: no such path in the build context"
    top_level = {p.split(".")[0] for p in project["tool"]["setuptools"]["packages"]}
    assert top_level <= {c.strip("./") for c in copied}, "the image misses a package"
    ignored = (COMPOSE_DIR / "Dockerfile.dockerignore").read_text().split()
    assert not top_level & set(ignored)


# ---- Kubernetes

def k8s_documents() -> list[tuple[str, dict]]:
    docs = []
    for path in sorted(K8S_DIR.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs += [(path.name, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_k8s_manifests_are_valid_against_the_api_schemas(version):
    kv = _kubernetes_validate()
    docs = k8s_documents()
    assert docs
    for name, doc in docs:
        try:
            kv.validate(doc, version, strict=True)  # strict: unknown fields (typos) fail too
        except kv.ValidationError as exc:
            pytest.fail(f"{name} {doc['kind']}/{doc['metadata']['name']} is invalid for Kubernetes {version}: {exc}")


def test_the_k8s_validator_rejects_a_typo():
    kv = _kubernetes_validate()
    server = next(d for _, d in k8s_documents() if d["kind"] == "Deployment" and d["metadata"]["name"] == "xdm-server")
    broken = copy.deepcopy(server)
    container = broken["spec"]["template"]["spec"]["containers"][0]
    container["readinessProbe"]["grpcc"] = container["readinessProbe"].pop("grpc")
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, K8S_VERSIONS[-1], strict=True)


def test_kustomization_lists_every_manifest_and_every_image():
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in K8S_DIR.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed <= on_disk, f"missing files: {listed - on_disk}"
    assert on_disk - listed <= {"learner-distributed.yaml"}, f"not in kustomization: {on_disk - listed}"
    images = {i["name"] for i in kustomization["images"]}
    for _, doc in k8s_documents():
        for container in _pod_spec(doc).get("containers", []) if doc["kind"] in WORKLOADS else []:
            assert container["image"] in images, container["image"]


def test_k8s_references_between_resources_resolve():
    docs = [d for _, d in k8s_documents()]
    by_kind: dict[str, dict[str, dict]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    templates = [d for d in docs if d["kind"] in WORKLOADS]
    claims = set(by_kind.get("PersistentVolumeClaim", {}))
    for workload in templates:
        pod = _pod_spec(workload)
        labels = workload["spec"]["template"]["metadata"]["labels"]
        if workload["kind"] != "Job":
            selector = workload["spec"]["selector"]["matchLabels"]
            assert selector.items() <= labels.items(), f"{workload['metadata']['name']}: selector misses its pods"
        for volume in pod.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, volume
        for container in pod["containers"]:
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] in by_kind["ConfigMap"]
    for service in by_kind["Service"].values():
        selected = [w for w in templates if service["spec"]["selector"].items()
                    <= w["spec"]["template"]["metadata"]["labels"].items()]
        assert selected, f"Service {service['metadata']['name']} selects no pods"
        ports = {p.get("name") for w in selected for c in _pod_spec(w)["containers"] for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert not isinstance(target, str) or target in ports, f"{service['metadata']['name']}: {target}"
    for kind, key in (("HorizontalPodAutoscaler", "scaleTargetRef"),):
        for hpa in by_kind.get(kind, {}).values():
            assert hpa["spec"][key]["name"] in by_kind[hpa["spec"][key]["kind"]]
    for pdb in by_kind.get("PodDisruptionBudget", {}).values():
        assert any(pdb["spec"]["selector"]["matchLabels"].items() <= w["spec"]["template"]["metadata"]["labels"].items()
                   for w in templates)


def test_k8s_shapes_the_issue_asks_for():
    docs = {(d["kind"], d["metadata"]["name"]): d for _, d in k8s_documents()}
    worker = docs[("StatefulSet", "xdm-worker")]
    assert worker["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "rocksdb"
    mounts = worker["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    assert {"name": "rocksdb", "mountPath": "/var/lib/xdm/stream"} in mounts
    server = docs[("Deployment", "xdm-server")]["spec"]["template"]["spec"]["containers"][0]
    health_port = int(next(e["value"] for e in server["env"] if e["name"] == "XDM_SERVING__HEALTH_PORT"))
    assert {"name": "health", "containerPort": health_port} in server["ports"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):  # kubelet probes speak no TLS: the health port
        assert server[probe]["grpc"]["port"] == health_port, probe
    assert docs[("Service", "xdm-recall-headless")]["spec"]["clusterIP"] == "None"
    for arm in ("xdm", "sdm"):
        learner = docs[("Deployment", f"xdm-learner-{arm}")]
        assert learner["spec"]["strategy"]["type"] == "Recreate"
        container = learner["spec"]["template"]["spec"]["containers"][0]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert {"name": "XDM_LEARNER__DEVICE", "value": "auto"} in container["env"]
        name, params = parse_xdm_argv(container["args"])
        assert name == "learn" and params["arm"] == arm and params["variant"] == arm
        assert params["world_size"] == 1 and params["warm_start"] is None and params["max_steps"] is None


def test_k8s_config_is_valid_for_every_container():
    docs = [d for _, d in k8s_documents()]
    config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    for workload in (d for d in docs if d["kind"] in WORKLOADS):
        for container in _pod_spec(workload)["containers"]:
            env = {**config, **{e["name"]: str(e["value"]) for e in container.get("env", []) if "value" in e}}
            argv = k8s_args(container)
            cfg = load_config(_profile(argv), env=env)
            assert cfg.kafka.replication == 3 and cfg.kafka.compaction and cfg.serving.host == "0.0.0.0"
            if "--world-size" in argv and not _cli_has_distributed_learn():
                continue  # test_distributed_learner_manifest_parses_with_the_cli says so
            try:
                parse_xdm_argv(argv)
            except click.UsageError as exc:
                pytest.fail(f"{workload['metadata']['name']}: {' '.join(argv)}: {exc}")


# What each command reads: every workload talks to Kafka; learners and servers to Milvus; servers serve Recall.
READS_MILVUS = {"learn", "serve"}


def test_k8s_pods_reach_kafka_and_milvus_with_tls_and_a_login_from_mounted_files():
    docs = [d for _, d in k8s_documents()]
    config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    for workload in (d for d in docs if d["kind"] in WORKLOADS):
        pod = _pod_spec(workload)
        for container in pod["containers"]:
            where = f"{workload['metadata']['name']}/{container['name']}"
            cfg = load_config(_profile(k8s_args(container)), env=_container_env(config, container))
            command, _ = parse_xdm_argv(k8s_args(container)) if "--world-size" not in container["args"] else ("learn", {})
            files = _mounted_files(pod, container)
            k = cfg.kafka
            assert (k.security_protocol, k.sasl_mechanism, k.sasl_username) == ("SASL_SSL", "SCRAM-SHA-512", "xdm"), where
            assert {k.sasl_password_file, k.ssl_cafile} <= files, where
            if command in READS_MILVUS:
                assert cfg.milvus.token_file in files and cfg.milvus.tls_ca in files, where
            else:  # least privilege: a pod that never calls Milvus does not hold its login
                assert not any(path.startswith("/var/run/secrets/xdm/milvus/") for path in files), where


def test_k8s_recall_servers_ask_for_tls_and_the_token_and_hide_reflection():
    docs = {(d["kind"], d["metadata"]["name"]): d for _, d in k8s_documents()}
    config = docs[("ConfigMap", "xdm-config")]["data"]
    pod = _pod_spec(docs[("Deployment", "xdm-server")])
    container = pod["containers"][0]
    serving = load_config(_profile(container["args"]), env=_container_env(config, container)).serving
    assert {serving.tls_cert, serving.tls_key, serving.auth_token_file} <= _mounted_files(pod, container)
    assert not serving.reflection and serving.max_request_bytes == 65_536
    assert serving.health_port and serving.health_port != serving.port
    for service in (d for (kind, _), d in docs.items() if kind == "Service" and d["metadata"]["name"].startswith("xdm-recall")):
        for port in service["spec"]["ports"]:
            assert port.get("appProtocol") != "kubernetes.io/h2c", "the Recall port speaks TLS, not cleartext HTTP/2"
    secret_settings = ("PASSWORD", "TOKEN", "KEY")  # their values live in files, named by *_FILE / TLS_KEY settings
    assert not [name for name in config if name.endswith(secret_settings)], "a secret value in the ConfigMap"


def test_every_secret_the_pods_mount_is_listed_for_the_operator():
    listed = (K8S_DIR / "kustomization.yaml").read_text()
    names = {source["secret"]["name"] for _, d in k8s_documents() if d["kind"] in WORKLOADS
             for volume in _pod_spec(d).get("volumes", []) for source in volume.get("projected", {}).get("sources", [])
             if "secret" in source}
    assert names >= {"xdm", "xdm-kafka-cluster-ca-cert", "xdm-milvus", "xdm-recall-tls", "xdm-recall-token"}
    for name in names:
        assert re.search(rf"^#\s+{re.escape(name)}\s", listed, flags=re.M), f"Secret {name} is not in kustomization.yaml"


def _container_env(config: dict, container: dict) -> dict[str, str]:
    return {**config, **{e["name"]: str(e["value"]) for e in container.get("env", []) if "value" in e}}


def _mounted_files(pod: dict, container: dict) -> set[str]:
    """Paths of the files that the container's projected and secret volume mounts put in place."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    files = set()
    for mount in container.get("volumeMounts", []):
        volume = volumes.get(mount["name"], {})
        secrets = [s["secret"] for s in volume.get("projected", {}).get("sources", []) if "secret" in s]
        secrets += [volume["secret"]] if "secret" in volume else []
        files |= {f"{mount['mountPath']}/{item['path']}" for secret in secrets for item in secret.get("items", [])}
    return files


def _cli_has_distributed_learn() -> bool:
    return any("--world-size" in param.opts for param in cli.commands["learn"].params)


def test_distributed_learner_manifest_parses_with_the_cli():
    if not _cli_has_distributed_learn():
        pytest.skip("`xdm learn` has no --world-size/--rank/--master-addr/--master-port yet (learner/distributed.py "
                    "is ready; the CLI options come with the lead's cli.py change)")
    doc = next(d for name, d in k8s_documents() if name == "learner-distributed.yaml" and d["kind"] == "StatefulSet")
    name, params = parse_xdm_argv(k8s_args(_pod_spec(doc)["containers"][0]))
    assert name == "learn" and params["world_size"] == doc["spec"]["replicas"]


def k8s_args(container: dict) -> list[str]:
    """Container args with $(VAR) expanded from the container's env, as the kubelet does (fieldRefs read as 0)."""
    env = {e["name"]: e.get("value", "0") for e in container.get("env", [])}
    return [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in container["args"]]


def _pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]



# ---- Kubernetes, sharded Recall servers (infra/k8s-sharded: a kustomize overlay of infra/k8s)

K8S_SHARDED_DIR = ROOT / "infra" / "k8s-sharded"


def sharded_documents() -> list[dict]:
    """infra/k8s-sharded as `kubectl apply -k` would send it (kubectl's own kustomize, or kustomize)."""
    import shutil
    import subprocess

    if shutil.which("kubectl"):
        argv = ["kubectl", "kustomize", str(K8S_SHARDED_DIR)]
    elif shutil.which("kustomize"):
        argv = ["kustomize", "build", str(K8S_SHARDED_DIR)]
    else:
        pytest.skip("neither kubectl nor kustomize is installed to render infra/k8s-sharded")
    rendered = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert rendered.returncode == 0, rendered.stderr
    return [d for d in yaml.safe_load_all(rendered.stdout) if d]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_sharded_k8s_manifests_are_valid_against_the_api_schemas(version):
    kv = _kubernetes_validate()
    for doc in sharded_documents():
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as exc:
            pytest.fail(f"infra/k8s-sharded {doc['kind']}/{doc['metadata']['name']} is invalid for {version}: {exc}")


def test_sharded_k8s_has_one_service_a_shard_that_selects_only_that_shards_servers():
    docs = {(d["kind"], d["metadata"]["name"]): d for d in sharded_documents()}
    config = docs[("ConfigMap", "xdm-config")]["data"]
    servers = {name: d for (kind, name), d in docs.items() if kind == "Deployment" and name.startswith("xdm-server")}
    shards = int(config["XDM_SERVING__SHARDS"])
    assert sorted(servers) == [f"xdm-server-shard-{s}" for s in range(shards)] and shards >= 2  # no unsharded one
    assert not [name for kind, name in docs if kind == "Service" and name in ("xdm-recall", "xdm-recall-headless")]
    client = load_config("cluster", env=config)
    from serving.client import shard_targets
    from xdm.shards import shard_layout

    targets = shard_targets(client)
    for s in range(shards):
        server = servers[f"xdm-server-shard-{s}"]
        container = _pod_spec(server)["containers"][0]
        cfg = load_config(_profile(k8s_args(container)), env=_container_env(config, container))
        assert cfg.serving.shard == s and cfg.serving.shards == shards
        assert shard_layout(cfg).partitions_of(s) == list(range(s, cfg.kafka.partitions, shards))
        service = docs[("Service", f"xdm-recall-shard-{s}")]
        assert service["spec"]["clusterIP"] == "None"  # headless: DNS lists each ready pod for round robin
        assert targets[s] == f"dns:///{service['metadata']['name']}.xdm.svc.cluster.local:50051"
        selected = [name for name, d in servers.items()
                    if service["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert selected == [f"xdm-server-shard-{s}"], (service["metadata"]["name"], selected)
        pdb = docs[("PodDisruptionBudget", f"xdm-server-shard-{s}")]
        assert pdb["spec"]["selector"]["matchLabels"] == server["spec"]["selector"]["matchLabels"]
        assert docs[("HorizontalPodAutoscaler", f"xdm-server-shard-{s}")]["spec"]["scaleTargetRef"]["name"] == server["metadata"]["name"]
        assert server["spec"]["replicas"] >= 2


def test_a_shards_server_pods_are_the_unsharded_servers_plus_their_shard():
    """The shard template's pod spec may not drift from infra/k8s/server.yaml's: only XDM_SERVING__SHARD is added."""
    def pod(path: Path, name: str) -> dict:
        return next(_pod_spec(d) for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] == "Deployment"
                    and d["metadata"]["name"] == name)

    unsharded = pod(K8S_DIR / "server.yaml", "xdm-server")
    shard = copy.deepcopy(pod(K8S_SHARDED_DIR / "shard" / "server.yaml", "xdm-server-shard"))
    container = shard["containers"][0]
    container["env"] = [e for e in container["env"] if e["name"] != "XDM_SERVING__SHARD"]
    assert shard == unsharded
