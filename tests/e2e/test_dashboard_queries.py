"""Every query of the Grafana dashboard (k8s/components/monitoring) runs against the real
Prometheus that scrapes the e2e cluster: none may error, read a metric that does not exist,
or come back empty after traffic. With PIXTRAL_DASHBOARD_PNG=path set, the same queries over
the test's time window are drawn into that picture (docs/dashboard-e2e.png)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from metrics_support import PromQLError, metric_names_in, send_concurrent_burst, send_mixed_traffic, wait_for

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "k8s" / "components" / "monitoring" / "grafana-dashboard.json"
# What Grafana substitutes before a query leaves it (1 s scrapes: 1 minute holds enough samples).
GRAFANA_MACROS = {"$__rate_interval": "1m"}
QUERY_TIMEOUT_S = 90


def panel_queries() -> list[tuple[str, str, str]]:
    """(panel title, legend, PromQL as Prometheus receives it) for every target."""
    queries = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for macro, value in GRAFANA_MACROS.items():
                expr = expr.replace(macro, value)
            assert "$" not in expr, f"{panel['title']}: unsubstituted variable in {expr}"
            queries.append((panel["title"], target["legendFormat"], expr))
    return queries


def test_the_checks_catch_bad_queries(prometheus):
    with pytest.raises(PromQLError):
        prometheus.query("sum(rate(ray_pixtral_images_total[1m])")
    assert metric_names_in("rate(ray_pixtral_imagez_total[1m])") - prometheus.metric_names()


def test_every_dashboard_query_runs_on_existing_metrics(prometheus, client, served, image_server):
    started = time.time()
    send_mixed_traffic(client, served, image_server)
    queries = panel_queries()
    needed = set().union(*(metric_names_in(expr) for _, _, expr in queries))
    try:
        wait_for(lambda: needed <= prometheus.metric_names(), timeout_s=QUERY_TIMEOUT_S, what="dashboard metrics")
    except AssertionError:
        pytest.fail(f"dashboard queries read metrics Prometheus does not have: {sorted(needed - prometheus.metric_names())}")

    for title, legend, expr in queries:
        result = wait_for(lambda: prometheus.query(expr), timeout_s=QUERY_TIMEOUT_S, what=f"{title}: {expr}")
        assert all(len(series["value"]) == 2 for series in result), (title, legend)

    out = os.environ.get("PIXTRAL_DASHBOARD_PNG")
    if out:
        from dashboard_picture import draw_dashboard

        for _ in range(4):  # a few more minutes of traffic, so the lines have a shape
            time.sleep(10)
            send_mixed_traffic(client, served, image_server)
            send_concurrent_burst(client, image_server, requests=12, max_tokens=48)
        time.sleep(20)
        draw_dashboard(json.loads(DASHBOARD.read_text()), queries, prometheus, started - 60, time.time(), Path(out))
