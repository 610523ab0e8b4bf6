"""The optional PodMonitor (monitoring.coreos.com/v1). Its CRD is not in shared/, so it is
checked against a strict schema of the prometheus-operator v1 fields it uses."""

from __future__ import annotations

import copy
import json

import jsonschema
import pytest

from manifest_checks import REPO_ROOT, only, pod_templates, rendered, validate_core

DASHBOARD = REPO_ROOT / "k8s" / "components" / "monitoring" / "grafana-dashboard.json"

_LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
_RELABEL = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "sourceLabels": {"type": "array", "items": {"type": "string", "pattern": "^[a-zA-Z_][a-zA-Z0-9_]*$"}},
        "separator": {"type": "string"},
        "targetLabel": {"type": "string"},
        "regex": {"type": "string"},
        "modulus": {"type": "integer"},
        "replacement": {"type": "string"},
        "action": {"enum": ["replace", "keep", "drop", "hashmod", "labelmap", "labeldrop", "labelkeep"]},
    },
}
PODMONITOR_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PodMonitor"},
        "metadata": {
            "type": "object",
            "additionalProperties": False,
            "required": ["name"],
            "properties": {"name": {"type": "string"}, "namespace": {"type": "string"}, "labels": _LABELS, "annotations": _LABELS},
        },
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "podMetricsEndpoints"],
            "properties": {
                "jobLabel": {"type": "string"},
                "podTargetLabels": {"type": "array", "items": {"type": "string"}},
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"any": {"type": "boolean"}, "matchNames": {"type": "array", "items": {"type": "string"}}},
                },
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"matchLabels": _LABELS, "matchExpressions": {"type": "array"}},
                },
                "podMetricsEndpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string", "pattern": "^/"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": {"type": "string", "pattern": "^(0|(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
                            "scrapeTimeout": {"type": "string"},
                            "honorLabels": {"type": "boolean"},
                            "relabelings": {"type": "array", "items": _RELABEL},
                            "metricRelabelings": {"type": "array", "items": _RELABEL},
                        },
                    },
                },
            },
        },
    },
}


def _podmonitor() -> dict:
    return only(rendered("pixtral-12b-eks"), "PodMonitor")


def test_podmonitor_matches_schema() -> None:
    pm = _podmonitor()
    jsonschema.Draft202012Validator(PODMONITOR_SCHEMA).validate(pm)
    validate_core({"apiVersion": "v1", "kind": "ConfigMap", "metadata": pm["metadata"]})  # ObjectMeta, strictly


def test_podmonitor_schema_is_strict() -> None:
    pm = copy.deepcopy(_podmonitor())
    pm["spec"]["podMetricsEndpoints"][0]["intervall"] = "15s"
    with pytest.raises(jsonschema.ValidationError, match="intervall"):
        jsonschema.Draft202012Validator(PODMONITOR_SCHEMA).validate(pm)


def test_podmonitor_selects_every_ray_pod_on_a_declared_port() -> None:
    pm = _podmonitor()
    selector = pm["spec"]["selector"]["matchLabels"]
    port = pm["spec"]["podMetricsEndpoints"][0]["port"]
    for name, template in pod_templates(only(rendered("pixtral-12b-eks"), "RayService")):
        assert selector.items() <= template["metadata"]["labels"].items(), name
        assert port in {p["name"] for p in template["spec"]["containers"][0]["ports"]}, name


def test_monitoring_is_optional() -> None:
    kinds = {o["kind"] for o in rendered("pixtral-12b") + rendered("pixtral-large")}
    assert not kinds & {"PodMonitor", "ConfigMap"}


def test_grafana_dashboard_is_provisioned_for_the_sidecar() -> None:
    """kube-prometheus-stack's Grafana sidecar loads ConfigMaps labelled grafana_dashboard=1."""
    config_map = only(rendered("pixtral-12b-eks"), "ConfigMap")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    (name, text), = config_map["data"].items()
    assert name.endswith(".json")
    assert json.loads(text) == json.loads(DASHBOARD.read_text())
    validate_core(config_map)


def test_grafana_dashboard_panels_query_the_prometheus_datasource() -> None:
    """Offline shape checks; tests/e2e/test_dashboard_queries.py runs every query for real."""
    dashboard = json.loads(DASHBOARD.read_text())
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert "ray_" in target["expr"], (panel["title"], target["expr"])


def test_grafana_dashboard_covers_an_operators_questions() -> None:
    """Request rate and errors by code, TTFT and end-to-end latency, image pool stages and
    cache, engine queue and KV cache, replicas per deployment, a first token's stages."""
    exprs = " ".join(t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p["targets"])
    for metric in [
        "ray_serve_num_http_requests_total",
        "ray_serve_num_http_error_requests_total",
        "ray_vllm_time_to_first_token_seconds_bucket",
        "ray_serve_http_request_latency_ms_bucket",
        "ray_pixtral_image_fetch_seconds_bucket",
        "ray_pixtral_image_decode_seconds_bucket",
        'ray_pixtral_images_total{outcome="cache_hit"}',
        "ray_vllm_num_requests_waiting",
        "ray_vllm_kv_cache_usage_perc",
        "ray_serve_deployment_replica_healthy",
        "ray_pixtral_request_stage_seconds_bucket",
    ]:
        assert metric in exprs, metric
