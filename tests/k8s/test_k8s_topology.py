"""The cluster shape fits the Serve config: GPUs per pod = tensor_parallel_size, the CPU
pool fits the CPU group, nothing model-related on the head, secrets only by reference."""

from __future__ import annotations

import re
from pathlib import Path

import ray

from manifest_checks import (
    REPO_ROOT,
    kustomize_build,
    only,
    pod_templates,
    rendered,
    serve_config,
    worker_group,
)
from serve_app.config import AppConfig

SECRET_ENV = {"PIXTRAL_SERVE_API_KEYS", "HF_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
_MEM = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def cpus(quantity: str | int) -> float:
    q = str(quantity)
    return float(q[:-1]) / 1000 if q.endswith("m") else float(q)


def _app(overlay: str) -> AppConfig:
    rs = only(rendered(overlay), "RayService")
    return AppConfig.model_validate(serve_config(rs)["applications"][0]["args"])


def _container(template: dict) -> dict:
    (container,) = template["spec"]["containers"]
    return container


def _ray_cpus(group: dict) -> float:
    """CPUs Ray advertises on a pod: num-cpus if set, else the container's CPU limit."""
    if "num-cpus" in group["rayStartParams"]:
        return float(group["rayStartParams"]["num-cpus"])
    return cpus(_container(group["template"])["resources"]["limits"]["cpu"])


def test_ray_version_pinned_in_step(overlay: str) -> None:
    rs = only(rendered(overlay), "RayService")
    version = rs["spec"]["rayClusterConfig"]["rayVersion"]
    assert version == ray.__version__
    assert f'"ray[serve]=={version}"' in (REPO_ROOT / "pyproject.toml").read_text()
    for _, template in pod_templates(rs):
        assert re.search(rf":[^/]*-ray{re.escape(version)}-", _container(template)["image"])
    dockerfile = (REPO_ROOT / "k8s" / "image" / "Dockerfile").read_text()
    assert re.search(rf"^FROM rayproject/ray:{re.escape(version)}-py3\d+-gpu$", dockerfile, re.M)
    assert '".[gpu]"' in dockerfile


def test_head_runs_no_model(overlay: str) -> None:
    head = only(rendered(overlay), "RayService")["spec"]["rayClusterConfig"]["headGroupSpec"]
    assert head["rayStartParams"]["num-gpus"] == "0"
    assert head["rayStartParams"]["num-cpus"] == "0", "no Serve replica on the head"
    resources = _container(head["template"])["resources"]
    assert not any("gpu" in k for part in resources.values() for k in part)


def test_autoscaling_on_and_groups_bounded(overlay: str) -> None:
    cluster = only(rendered(overlay), "RayService")["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert [g["groupName"] for g in cluster["workerGroupSpecs"]] == ["cpu", "gpu"]
    for group in cluster["workerGroupSpecs"]:
        assert 1 <= group["minReplicas"] <= group.get("replicas", group["minReplicas"]) <= group["maxReplicas"]


def test_requests_equal_limits(overlay: str) -> None:
    for name, template in pod_templates(only(rendered(overlay), "RayService")):
        resources = _container(template)["resources"]
        assert resources["requests"] == resources["limits"], name


def test_gpu_pod_holds_exactly_one_replica(overlay: str) -> None:
    """One placement group of tensor_parallel_size {CPU, GPU} bundles (STRICT_PACK) per pod."""
    app = _app(overlay)
    gpu = worker_group(only(rendered(overlay), "RayService"), "gpu")
    tp = app.engine.tensor_parallel_size
    limits = _container(gpu["template"])["resources"]["limits"]
    assert int(limits["nvidia.com/gpu"]) == tp
    assert app.llm.placement_strategy == "STRICT_PACK"
    replica_cpus = sum(b["CPU"] for b in app.llm.placement_bundles(tp))
    ray_cpus = _ray_cpus(gpu)
    assert replica_cpus <= ray_cpus <= cpus(limits["cpu"])
    # What is left cannot host an ingress or image-pool replica: those stay on the CPU group.
    assert ray_cpus - replica_cpus < min(app.ingress.num_cpus, app.image_pool.num_cpus)
    # The group can reach the LLM deployment's bounds (one replica per pod).
    assert gpu["minReplicas"] >= app.llm.autoscaling.min_replicas
    assert gpu["maxReplicas"] == app.llm.autoscaling.max_replicas


def test_cpu_group_fits_the_cpu_deployments(overlay: str) -> None:
    app = _app(overlay)
    group = worker_group(only(rendered(overlay), "RayService"), "cpu")
    per_pod = _ray_cpus(group)
    deployments = (app.ingress, app.image_pool)
    assert all(d.num_cpus <= per_pod for d in deployments)
    need_min = sum(d.num_cpus * d.autoscaling.min_replicas for d in deployments)
    need_max = sum(d.num_cpus * d.autoscaling.max_replicas for d in deployments)
    assert group["minReplicas"] * per_pod >= need_min
    assert group["maxReplicas"] * per_pod >= need_max
    assert "nvidia.com/gpu" not in _container(group["template"])["resources"]["limits"]


def test_gpu_scheduling_comes_from_the_overlay(overlay: str) -> None:
    rs = only(rendered(overlay), "RayService")
    gpu = worker_group(rs, "gpu")["template"]["spec"]
    assert gpu["nodeSelector"]["node.kubernetes.io/instance-type"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in gpu["tolerations"]
    for name, template in pod_templates(rs):
        if name != "gpu":
            assert "tolerations" not in template["spec"] and "nodeSelector" not in template["spec"]
    base = only(kustomize_build(REPO_ROOT / "k8s" / "base"), "RayService")
    assert not {"nodeSelector", "tolerations"} & set(worker_group(base, "gpu")["template"]["spec"])


def test_secrets_only_by_reference(overlay: str) -> None:
    objs = rendered(overlay)
    for name, template in pod_templates(only(objs, "RayService")):
        spec = template["spec"]
        assert spec["serviceAccountName"] == "pixtral-serve"
        env = {e["name"]: e for e in _container(template).get("env", [])}
        assert SECRET_ENV <= set(env), name
        for var in SECRET_ENV:
            assert "value" not in env[var]
            ref = env[var]["valueFrom"]["secretKeyRef"]
            assert ref["optional"] is (var != "PIXTRAL_SERVE_API_KEYS"), var
    text = "\n".join(p.read_text() for p in Path(REPO_ROOT / "k8s").rglob("*.yaml"))
    assert not re.search(r"(AKIA|ASIA)[A-Z0-9]{16}|hf_[A-Za-z0-9]{30,}", text)


COMPILE_CACHE_ENV = ("VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "FLASHINFER_WORKSPACE_BASE")


def test_compile_cache_is_one_volume_shared_by_every_gpu_pod() -> None:
    """components/compile-cache: vLLM's, Inductor's, Triton's and FlashInfer's caches on one ReadWriteMany claim."""
    objs = rendered("pixtral-12b-eks")
    rs = only(objs, "RayService")
    gpu = worker_group(rs, "gpu")["template"]
    env = {e["name"]: e.get("value") for e in _container(gpu)["env"]}
    mounts = {m["name"]: m["mountPath"] for m in _container(gpu)["volumeMounts"]}
    volumes = {v["name"]: v for v in gpu["spec"]["volumes"]}
    claim = volumes["compile-cache"]["persistentVolumeClaim"]["claimName"]
    for var in COMPILE_CACHE_ENV:
        assert env[var].startswith(mounts["compile-cache"] + "/"), var
    assert len({env[var] for var in COMPILE_CACHE_ENV}) == len(COMPILE_CACHE_ENV)
    pvc = only(objs, "PersistentVolumeClaim")
    assert pvc["metadata"]["name"] == claim
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"], "GPU pods on different nodes mount it at once"
    for name, template in pod_templates(rs):
        if name != "gpu":  # the head and the CPU group run no engine
            names = {e["name"] for e in _container(template)["env"]}
            assert not names & set(COMPILE_CACHE_ENV), name


def test_compile_cache_env_always_points_into_a_mounted_volume(overlay: str) -> None:
    rs = only(rendered(overlay), "RayService")
    for _, template in pod_templates(rs):
        env = {e["name"]: e.get("value") for e in _container(template).get("env", [])}
        mounts = [m["mountPath"] for m in _container(template).get("volumeMounts", [])]
        for var in set(COMPILE_CACHE_ENV) & set(env):
            assert any(env[var].startswith(path + "/") for path in mounts), var


def test_irsa_overlay_annotates_the_service_account() -> None:
    sa = only(rendered("pixtral-12b-eks"), "ServiceAccount")
    assert re.fullmatch(r"arn:aws:iam::\d{12}:role/.+", sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"])
    assert "annotations" not in only(rendered("pixtral-12b"), "ServiceAccount")["metadata"]


def test_probes_left_to_kuberay(overlay: str) -> None:
    """KubeRay injects Serve-aware readiness/liveness probes into RayService pods; ours would replace them.
    On workers its readiness probe also checks port 8000: HAProxy (the image's) answers there on every pod;
    with Serve's Python proxy on the head only, the failing probe is what keeps workers out of the serve
    Service (docs/deploy.md)."""
    for _, template in pod_templates(only(rendered(overlay), "RayService")):
        container = _container(template)
        assert not {"readinessProbe", "livenessProbe", "startupProbe"} & set(container)


def test_zero_downtime_upgrade(overlay: str) -> None:
    rs = only(rendered(overlay), "RayService")
    assert rs["spec"]["upgradeStrategy"] == {"type": "NewCluster"}
    timeout = serve_config(rs)["http_options"]["request_timeout_s"]
    assert rs["spec"]["rayClusterDeletionDelaySeconds"] >= timeout, "old cluster outlives in-flight requests"


def test_serve_port_matches_serve_config(overlay: str) -> None:
    rs = only(rendered(overlay), "RayService")
    head = _container(rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"])
    ports = {p["name"]: p["containerPort"] for p in head["ports"]}
    assert ports["serve"] == serve_config(rs)["http_options"]["port"]
    for _, template in pod_templates(rs):
        assert {"name": "metrics", "containerPort": 8080} in _container(template)["ports"]
