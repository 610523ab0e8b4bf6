"""A real Prometheus scrapes the e2e Ray node: after a few requests, PromQL sees the image
pool's histograms and outcome counters, Serve's request counts by status and vLLM's own
engine metrics move."""

from __future__ import annotations

import pytest

from metrics_support import send_mixed_traffic, wait_for

APP = 'application="pixtral"'
# Chat completions are the app's only POST route. Not route="/v1/chat/completions": Serve's Python
# proxy labels the request's path, its HAProxy ingress the application's route prefix ("/").
CHAT = 'method="POST"'
EXPORT_TIMEOUT_S = 90  # Ray pushes worker metrics to its agent every few seconds

# name -> (PromQL, the least it must grow by after send_mixed_traffic)
MOVES = {
    "fetch histogram": (f"sum(ray_pixtral_image_fetch_seconds_count{{{APP}}})", 3),
    "fetch histogram +Inf bucket": (f'sum(ray_pixtral_image_fetch_seconds_bucket{{{APP},le="+Inf"}})', 3),
    "decode histogram": (f"sum(ray_pixtral_image_decode_seconds_count{{{APP}}})", 3),
    "decode seconds": (f"sum(ray_pixtral_image_decode_seconds_sum{{{APP}}})", 0),  # 0: must grow
    "images prepared": (f'sum(ray_pixtral_images_total{{{APP},outcome="prepared"}})', 3),
    "images from cache": (f'sum(ray_pixtral_images_total{{{APP},outcome="cache_hit"}})', 2),
    "images refused as invalid": (f'sum(ray_pixtral_images_total{{{APP},outcome="invalid_image"}})', 1),
    "first-token stages": (f'sum(ray_pixtral_request_stage_seconds_count{{{APP},stage="engine"}})', 7),
    "requests 200": (f'sum(ray_serve_num_http_requests_total{{{APP},{CHAT},status_code="200"}})', 7),
    "requests 400": (f'sum(ray_serve_num_http_requests_total{{{APP},{CHAT},status_code="400"}})', 1),
    "requests 401": (f'sum(ray_serve_num_http_requests_total{{{APP},{CHAT},status_code="401"}})', 1),
    "errors 401": (f'sum(ray_serve_num_http_error_requests_total{{{APP},{CHAT},error_code="401"}})', 1),
    "vLLM time to first token": ("sum(ray_vllm_time_to_first_token_seconds_count)", 7),
    "vLLM successful requests": ("sum(ray_vllm_request_success_total)", 7),
    "vLLM generated tokens": ("sum(ray_vllm_generation_tokens_total)", 7 * 4),
    "vLLM prompt tokens": ("sum(ray_vllm_prompt_tokens_total)", 7 * 10),
}
# Gauges that exist once the engine reports: queue depth and KV-cache use.
ENGINE_GAUGES = ["ray_vllm_num_requests_waiting", "ray_vllm_num_requests_running", "ray_vllm_kv_cache_usage_perc"]


def test_prometheus_sees_every_stage_move(prometheus, client, served, image_server):
    before = {name: prometheus.scalar(expr) for name, (expr, _) in MOVES.items()}
    send_mixed_traffic(client, served, image_server)

    def lagging() -> dict:
        now = {name: prometheus.scalar(expr) for name, (expr, _) in MOVES.items()}
        return {n: (before[n], now[n]) for n, (_, grow) in MOVES.items() if not now[n] >= before[n] + max(grow, 1e-9)}

    try:
        wait_for(lambda: not lagging(), timeout_s=EXPORT_TIMEOUT_S, what="metrics to move")
    except AssertionError:
        pytest.fail(f"metrics that did not move as expected (before, now): {lagging()}")

    for name in ENGINE_GAUGES:
        series = prometheus.query(name)
        assert series, f"{name} is not exported"
        assert {s["metric"]["ReplicaId"] for s in series}, name
    assert 0.0 <= prometheus.scalar("max(ray_vllm_kv_cache_usage_perc)") <= 1.0
    # Latency histograms carry real observations: the fetch p99 is a number, not NaN.
    p99 = prometheus.scalar(f"histogram_quantile(0.99, sum by (le) (ray_pixtral_image_fetch_seconds_bucket{{{APP}}}))")
    assert 0.0 < p99 < 30.0
