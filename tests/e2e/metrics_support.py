"""A real Prometheus server (Debian's ``prometheus`` package), PromQL over its HTTP API, and
the mixed traffic the metrics tests send."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable, TypeVar

import httpx
import pytest
from openai import BadRequestError

from chat_payloads import data_url, jpeg_bytes, user_message

SCRAPE_INTERVAL_S = 1
START_TIMEOUT_S = 60
T = TypeVar("T")
MODEL = "tiny-pixtral"


class PromQLError(RuntimeError):
    """Prometheus refused a query (bad syntax, unknown function, ...)."""


def start_prometheus(binary: str, target: str, workdir: Path, port: int) -> subprocess.Popen:
    """Prometheus on loopback scraping ``target`` (host:port of a /metrics endpoint) every second."""
    config = workdir / "prometheus.yml"
    config.write_text(
        "global:\n"
        f"  scrape_interval: {SCRAPE_INTERVAL_S}s\n"
        f"  evaluation_interval: {SCRAPE_INTERVAL_S}s\n"
        "scrape_configs:\n"
        "  - job_name: ray\n"
        f"    static_configs: [{{targets: ['{target}']}}]\n"
    )
    # The child keeps its own descriptor; ours closes when the block ends.
    with (workdir / "prometheus.log").open("wb") as log:
        return subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )


class PromQL:
    """Instant and range queries against one Prometheus; errors raise ``PromQLError``."""

    def __init__(self, base_url: str):
        self.base_url = base_url.rstrip("/")

    def _get(self, path: str, **params) -> dict:
        url = f"{self.base_url}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.load(response)
        except urllib.error.HTTPError as exc:  # 400/422 carry Prometheus' error JSON
            body = json.load(exc)
        if body.get("status") != "success":
            raise PromQLError(f"{params.get('query', path)}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        """An instant vector: ``[{"metric": {...}, "value": [t, "v"]}, ...]``."""
        data = self._get("/api/v1/query", query=expr)
        return data["result"] if data["resultType"] == "vector" else [{"metric": {}, "value": data["result"]}]

    def scalar(self, expr: str) -> float:
        """The value of a one-element result; 0.0 when it has no series yet."""
        result = self.query(expr)
        assert len(result) <= 1, f"{expr} has {len(result)} series, expected one"
        return float(result[0]["value"][1]) if result else 0.0

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict]:
        return self._get("/api/v1/query_range", query=expr, start=start, end=end, step=step)["result"]

    def metric_names(self) -> set[str]:
        return set(self._get("/api/v1/label/__name__/values"))

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.base_url + "/-/ready", timeout=2) as response:
                return response.status == 200
        except Exception:
            return False


def wait_for(check: Callable[[], T], *, timeout_s: float, what: str, interval_s: float = 1.0) -> T:
    """Poll ``check`` until it returns something truthy, at most ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s:.0f} s (last: {value!r})")
        time.sleep(interval_s)


_NAME = re.compile(r"\bray_[A-Za-z0-9_]+\b")


def metric_names_in(expr: str) -> set[str]:
    """The metric names a query reads (every metric here comes through Ray's endpoint: ``ray_*``)."""
    return set(_NAME.findall(expr))


def send_mixed_traffic(client, served, image_server) -> None:
    """7 answered requests (3 new images, the first image 3 more times, 1 streamed text-only),
    one refused image (400) and one request without a key (401)."""
    tag = os.urandom(4).hex()
    urls = []
    for i in range(3):
        path = f"/metrics-{tag}-{i}.jpg"
        image_server.routes[path] = ("image/jpeg", jpeg_bytes(int(tag, 16) + i))
        urls.append(image_server.base_url + path)
    for url in urls + [urls[0]] * 3:  # at most 2 pool replicas: at least 2 of the 3 repeats hit a cache
        client.chat.completions.create(model=MODEL, messages=[user_message(url)], max_tokens=4, temperature=0)
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hello"}], max_tokens=4, stream=True
    )
    assert [c for c in stream]
    with pytest.raises(BadRequestError):
        client.chat.completions.create(
            model=MODEL, messages=[user_message(data_url(b"not an image " + tag.encode()))], max_tokens=4
        )
    response = httpx.post(
        served + "/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    )
    assert response.status_code == 401


def send_concurrent_burst(client, image_server, *, requests: int, max_tokens: int) -> None:
    """``requests`` at once, each with a new image: the engine queues and holds KV cache."""
    from concurrent.futures import ThreadPoolExecutor

    tag = os.urandom(4).hex()
    urls = []
    for i in range(requests):
        path = f"/burst-{tag}-{i}.jpg"
        image_server.routes[path] = ("image/jpeg", jpeg_bytes(int(tag, 16) + i, (640, 480)))
        urls.append(image_server.base_url + path)

    def one(url: str) -> None:
        client.chat.completions.create(
            model=MODEL, messages=[user_message(url)], max_tokens=max_tokens, temperature=0, extra_body={"ignore_eos": True}
        )

    with ThreadPoolExecutor(max_workers=requests) as pool:
        list(pool.map(one, urls))
