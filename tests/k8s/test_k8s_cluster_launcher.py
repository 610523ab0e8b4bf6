"""cluster/*.yaml pass Ray's own launcher checks offline, and their EC2 node_config keys are
RunInstances parameters (botocore's service model, checked recursively and strictly)."""

from __future__ import annotations

import copy
import re
from typing import Any

import botocore.session
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from manifest_checks import REPO_ROOT
from serve_app.config import AppConfig
from tools.manifests import TARGETS

CLUSTER_FILES = sorted((REPO_ROOT / "cluster").glob("*.yaml"))


def _load(name: str) -> dict[str, Any]:
    return yaml.safe_load((REPO_ROOT / name).read_text())


def _run_instances_shape():
    return botocore.session.get_session().get_service_model("ec2").operation_model("RunInstances").input_shape


def ec2_errors(value: Any, shape, path: str = "node_config") -> list[str]:
    """Keys and JSON types of ``value`` that the botocore shape does not accept."""
    kind = shape.type_name
    if kind == "structure":
        if not isinstance(value, dict):
            return [f"{path}: expected a mapping for {shape.name}"]
        errors = [f"{path}.{k}: not a {shape.name} member" for k in value if k not in shape.members]
        for key, item in value.items():
            if key in shape.members:
                errors += ec2_errors(item, shape.members[key], f"{path}.{key}")
        return errors
    if kind == "list":
        if not isinstance(value, list):
            return [f"{path}: expected a list"]
        return [e for i, item in enumerate(value) for e in ec2_errors(item, shape.member, f"{path}[{i}]")]
    if kind == "map":
        return [e for k, v in value.items() for e in ec2_errors(v, shape.value, f"{path}.{k}")]
    scalar = {"string": str, "integer": int, "long": int, "boolean": bool, "double": (int, float), "float": (int, float)}
    if kind in scalar and (not isinstance(value, scalar[kind]) or (kind in ("integer", "long") and isinstance(value, bool))):
        return [f"{path}: expected {kind}, got {type(value).__name__}"]
    if kind == "string" and shape.enum and value not in shape.enum:
        return [f"{path}: {value!r} not one of {shape.name}"]
    return []


def test_every_target_has_a_cluster_file() -> None:
    assert sorted(REPO_ROOT / t.cluster_file for t in TARGETS) == CLUSTER_FILES


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.name)
def test_ray_accepts_the_cluster_config(target) -> None:
    config = prepare_config(_load(target.cluster_file))
    validate_config(config)
    assert config["provider"]["type"] == "aws"


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.name)
def test_node_configs_are_run_instances_parameters(target) -> None:
    shape = _run_instances_shape()
    for name, node_type in _load(target.cluster_file)["available_node_types"].items():
        assert ec2_errors(node_type["node_config"], shape, f"{name}.node_config") == []


@pytest.mark.parametrize(
    "mutate, needle",
    [
        (lambda nc: nc.__setitem__("InstanceTyp", "m7i.large"), "InstanceTyp"),
        (lambda nc: nc["BlockDeviceMappings"][0]["Ebs"].__setitem__("VolumeSzie", 10), "VolumeSzie"),
        (lambda nc: nc["BlockDeviceMappings"][0]["Ebs"].__setitem__("VolumeSize", "10"), "VolumeSize"),
        (lambda nc: nc["BlockDeviceMappings"][0]["Ebs"].__setitem__("VolumeType", "gp9"), "VolumeType"),
    ],
)
def test_node_config_check_is_strict(mutate, needle: str) -> None:
    node_config = copy.deepcopy(_load(TARGETS[0].cluster_file)["available_node_types"]["gpu_worker"]["node_config"])
    mutate(node_config)
    errors = ec2_errors(node_config, _run_instances_shape())
    assert errors and needle in errors[0]


def test_ray_rejects_an_unknown_top_level_key() -> None:
    config = _load(TARGETS[0].cluster_file)
    config["head_node_typ"] = "head"
    with pytest.raises(Exception, match="head_node_typ"):
        validate_config(prepare_config(config))


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.name)
def test_cluster_matches_its_serve_config(target) -> None:
    cluster = _load(target.cluster_file)
    serve = _load(target.serve_config)
    app = AppConfig.model_validate(serve["applications"][0]["args"])
    types = cluster["available_node_types"]
    head = types[cluster["head_node_type"]]
    assert head["resources"] == {"CPU": 0, "GPU": 0}, "no model and no replica on the head"
    gpu = types["gpu_worker"]["resources"]
    tp = app.engine.tensor_parallel_size
    replica_cpus = sum(b["CPU"] for b in app.llm.placement_bundles(tp))
    assert gpu["GPU"] == tp
    assert replica_cpus <= gpu["CPU"] < replica_cpus + min(app.ingress.num_cpus, app.image_pool.num_cpus)
    assert types["gpu_worker"]["max_workers"] == app.llm.autoscaling.max_replicas
    cpu = types["cpu_worker"]
    deployments = (app.ingress, app.image_pool)
    assert cpu["min_workers"] * cpu["resources"]["CPU"] >= sum(d.num_cpus * d.autoscaling.min_replicas for d in deployments)
    assert cpu["max_workers"] * cpu["resources"]["CPU"] >= sum(d.num_cpus * d.autoscaling.max_replicas for d in deployments)
    assert sum(t.get("min_workers", 0) for t in types.values()) <= cluster["max_workers"]
    assert cluster["max_workers"] >= sum(t.get("max_workers", 0) for n, t in types.items() if n != cluster["head_node_type"])


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.name)
def test_cluster_installs_and_deploys_the_project(target) -> None:
    import ray

    cluster = _load(target.cluster_file)
    assert cluster["docker"]["image"].startswith(f"rayproject/ray:{ray.__version__}-py3")
    assert any("[gpu]" in c and "pip install" in c for c in cluster["setup_commands"])
    assert cluster["file_mounts"] == {"~/pixtral-serve": "."}
    start = " ".join(cluster["head_start_ray_commands"])
    assert f"serve deploy ~/pixtral-serve/{target.serve_config}" in start
    assert "--num-gpus=0" in start
    for commands in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert any("source ~/pixtral-serve/cluster/node-env.sh" in c for c in cluster[commands])


def _ray_serve_env(path: str, pattern: str) -> dict[str, str]:
    text = (REPO_ROOT / path).read_text()
    return {k: v.strip('"') for k, v in re.findall(pattern, text, flags=re.M)}


def test_ray_serve_throughput_mode_is_set_the_same_everywhere_it_runs():
    """Ray reads these at process start, so each way of starting Ray must set them: the image
    (k8s), the cluster launcher's node env, `make run`, and the e2e tests (what CI exercises).
    HAProxy only where the API is served to a network: it binds its stats and metrics ports on
    every interface, and `make run` and the tests serve on loopback only; with it the body for the
    ReplicaPicker (read only by HAProxy)."""
    image = _ray_serve_env("k8s/image/Dockerfile", r"^ENV (RAY_SERVE_\w+)=(\S+)$")
    assert image == {
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH": "134217728",
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_INGRESS_REQUEST_ROUTER_FORWARD_BODY": "1",
        "RAY_SERVE_INGRESS_ROUTER_REPLICAS_PER_NODE": "2",
        "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "serve_app.api.proxy_errors:openai_error_bodies",
    }
    assert _ray_serve_env("cluster/node-env.sh", r"^export (RAY_SERVE_\w+)=(\S+)$") == image
    haproxy = {"RAY_SERVE_ENABLE_HA_PROXY", "RAY_SERVE_INGRESS_REQUEST_ROUTER_FORWARD_BODY",
               "RAY_SERVE_INGRESS_ROUTER_REPLICAS_PER_NODE"}
    loopback = {k: v for k, v in image.items() if k not in haproxy}
    assert _ray_serve_env("Makefile", r"^run: export (RAY_SERVE_\w+) := (\S+)$") == loopback
    assert _ray_serve_env("tests/e2e/conftest.py", r'^\s+"(RAY_SERVE_\w+)": "(\S+)",$') == loopback
    haproxy_run = re.search(r"^test-haproxy:.*\n((?:\t.*\n)+)", (REPO_ROOT / "Makefile").read_text(), flags=re.M)
    assert haproxy_run and "-m pytest -q tests/e2e" in haproxy_run.group(1)
    assert dict(re.findall(r"(RAY_SERVE_\w+)=(\S+)", haproxy_run.group(1))) == {k: image[k] for k in haproxy}
    # gRPC carries request bodies (data: URLs) and prepared pixels between deployments: its
    # per-message cap must sit above the largest body the ingress accepts.
    from serve_app.config import IngressConfig

    assert int(image["RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH"]) > IngressConfig().max_request_bytes
