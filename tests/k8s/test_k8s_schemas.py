"""Every overlay renders with Kustomize and every object passes a strict schema check."""

from __future__ import annotations

import copy

import jsonschema
import kubernetes_validate
import pytest

from manifest_checks import (
    KUBERAY_KINDS,
    OVERLAYS,
    REPO_ROOT,
    k8s_definition_validator,
    kustomize_build,
    only,
    pod_templates,
    rendered,
    validate_core,
    validate_kuberay,
)


def test_every_overlay_folder_is_tested() -> None:
    folders = {p.parent.name for p in (REPO_ROOT / "k8s" / "overlays").glob("*/kustomization.yaml")}
    assert folders == set(OVERLAYS)


def test_overlay_renders_expected_objects(overlay: str) -> None:
    kinds = sorted(o["kind"] for o in rendered(overlay))
    eks = ["ConfigMap", "PodMonitor", "PersistentVolumeClaim"] if overlay.endswith("-eks") else []
    expected = ["RayService", "ServiceAccount"] + eks
    assert kinds == sorted(expected)
    assert not [o for o in rendered(overlay) if o["kind"] == "Secret"], "secrets are created out of band"


def test_objects_pass_strict_schemas(overlay: str) -> None:
    for obj in rendered(overlay):
        if obj["kind"] in KUBERAY_KINDS:
            validate_kuberay(obj)
        elif obj["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # no CRD here: test_k8s_monitoring.py checks it
        else:
            validate_core(obj)


def test_rayclusterconfig_is_a_valid_raycluster(overlay: str) -> None:
    """RayService.spec.rayClusterConfig must also be a valid RayCluster spec (KubeRay creates one)."""
    rs = only(rendered(overlay), "RayService")
    validate_kuberay(
        {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": "x"}, "spec": rs["spec"]["rayClusterConfig"]}
    )


def test_pod_templates_pass_core_pod_schema(overlay: str) -> None:
    """The CRD copies PodTemplateSpec; check it against Kubernetes' own strict definition too."""
    validator = k8s_definition_validator("io.k8s.api.core.v1.PodTemplateSpec")
    for _, template in pod_templates(only(rendered(overlay), "RayService")):
        validator.validate(template)


def test_base_alone_renders_but_has_no_serve_config() -> None:
    rs = only(kustomize_build(REPO_ROOT / "k8s" / "base"), "RayService")
    validate_kuberay(rs)
    assert "serveConfigV2" not in rs["spec"], "the serve config belongs to the overlays"


# --- the checks are strict: a misspelled field fails ----------------------------------------


def test_strict_core_check_rejects_misspelled_field() -> None:
    sa = copy.deepcopy(only(rendered("pixtral-12b"), "ServiceAccount"))
    validate_core(sa)
    sa["automountServiceAcountToken"] = sa.pop("automountServiceAccountToken")
    with pytest.raises(kubernetes_validate.ValidationError, match="automountServiceAcountToken"):
        validate_core(sa)


def test_strict_core_check_rejects_misspelled_nested_field() -> None:
    svc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "pixtral-serve"},
        "spec": {"selector": {"a": "b"}, "ports": [{"port": 8000, "targetPrt": 8000}]},
    }
    with pytest.raises(kubernetes_validate.ValidationError, match="targetPrt"):
        validate_core(svc)


@pytest.mark.parametrize(
    "path, typo",
    [
        (("spec",), "upgradeStrategyy"),
        (("spec", "rayClusterConfig"), "enableInTreeAutoscalling"),
        (("spec", "rayClusterConfig", "headGroupSpec"), "rayStartParam"),
        (("spec", "rayClusterConfig", "workerGroupSpecs", 1, "template", "spec"), "nodeSelectr"),
        (("spec", "rayClusterConfig", "workerGroupSpecs", 1, "template", "spec", "containers", 0), "resource"),
        (("metadata",), "label"),
    ],
)
def test_strict_crd_check_rejects_misspelled_field(path: tuple, typo: str) -> None:
    rs = copy.deepcopy(only(rendered("pixtral-12b"), "RayService"))
    node = rs
    for key in path:
        node = node[key]
    node[typo] = {}
    with pytest.raises(jsonschema.ValidationError, match=typo):
        validate_kuberay(rs)


def test_strict_crd_check_rejects_bad_enum() -> None:
    rs = copy.deepcopy(only(rendered("pixtral-12b"), "RayService"))
    rs["spec"]["rayClusterConfig"]["autoscalerOptions"]["upscalingMode"] = "Fast"
    with pytest.raises(jsonschema.ValidationError, match="Fast"):
        validate_kuberay(rs)


def test_core_pod_template_check_rejects_misspelled_field() -> None:
    rs = only(rendered("pixtral-12b"), "RayService")
    template = copy.deepcopy(rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"])
    template["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(jsonschema.ValidationError, match="imagePullPolicyy"):
        k8s_definition_validator("io.k8s.api.core.v1.PodTemplateSpec").validate(template)
