"""Ingress memory under a flood of big bodies: peak RSS of the OpenAIIngress replica while N
clients each send one body of about ``--body-mib`` MiB at once, with the in-flight body budget
off and at the given values (``ingress.max_inflight_body_bytes``).

With ``--images 1024x768,photo``: a burst of ``--clients`` chat requests at once per image kind,
each with one image of its own (bench/load.py's JPEGs, data URLs; photo = 4032x3024, 12 MP),
every request admitted (admission's bound lifted): the ingress replica's peak RSS and CPU
seconds, the pool's and LLM replica's CPU seconds, latency and Server-Timing stages.
``--app-root`` deploys the serve_app of another checkout (e.g. ``git archive main``) with this
runner, for before/after.

Each body is a valid chat request for a model the app does not serve, with the text that makes
it big: the ingress reads, copies and parses it and answers 400 model_not_found, so the figure is
what holding and parsing bodies costs, with no image or engine work. The app is config.cpu.yaml
on a local Ray (tiny model); RSS is sampled every 20 ms from this run's own Ray processes.

    .venv/bin/python bench/ingress_memory.py --out bench/results/DATE-cpu-ingress-memory.json
    .venv/bin/python bench/ingress_memory.py --images 1024x768,photo --clients 32 --out OUT.json
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import sys
import threading
import time
from pathlib import Path

import aiohttp
import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]
API_KEY = "bench-key"
OFF = 1 << 40  # a budget no flood reaches: the ingress as it was before the budget


def ingress_rss_mib() -> dict[str, float]:
    """RSS (MiB) of this run's ingress replicas and Serve proxy (descendants of this process)."""
    out: dict[str, float] = collections.Counter()
    for proc in psutil.Process().children(recursive=True):
        try:
            title = " ".join(proc.cmdline())
            rss = proc.memory_info().rss / 2**20
        except psutil.Error:
            continue
        if "OpenAIIngress" in title:
            out["ingress"] += rss
        elif "ProxyActor" in title:
            out["proxy"] += rss
    return dict(out)


def replica_cpu_s() -> dict[str, float]:
    """CPU seconds (user + system) so far of this run's replicas, by deployment."""
    out: dict[str, float] = collections.Counter()
    for proc in psutil.Process().children(recursive=True):
        try:
            title = " ".join(proc.cmdline())
            times = proc.cpu_times()
        except psutil.Error:
            continue
        for name in ("OpenAIIngress", "ImagePool", "PixtralServer"):
            if f":{name}" in title:
                out[name] += times.user + times.system
    return dict(out)


class PeakRss:
    """Peak of ``ingress_rss_mib`` sampled every 20 ms on a thread, between start and stop."""

    def __init__(self) -> None:
        self.peak: dict[str, float] = collections.Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            for key, value in ingress_rss_mib().items():
                self.peak[key] = max(self.peak[key], value)
            time.sleep(0.02)

    def __enter__(self) -> "PeakRss":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def image_burst(base: str, spec: str, clients: int, seed_base: int, model: str) -> dict:
    """``clients`` requests at once, one ``spec`` image each (distinct: no cache hit anywhere)."""
    from load import ImageStore, conversations, run_conversations

    store = ImageStore(REPO / ".cache" / "bench-images")
    convs = conversations({"kind": "single", "image": spec, "requests": clients}, seed_base)
    store.ensure([image for conv in convs for image in conv.images])
    body_bytes = sum(len(store.data_url(s, n)) for conv in convs for s, n in conv.images)
    idle = ingress_rss_mib()
    cpu0 = replica_cpu_s()
    with PeakRss() as rss:
        result = asyncio.run(run_conversations(
            base, model, convs, store, concurrency=clients, request={"max_tokens": 4, "ignore_eos": True},
            api_key=API_KEY, timeout_s=280))
    cpu1 = replica_cpu_s()
    return {
        "image": spec, "clients": clients, "image_url_bytes_total": body_bytes,
        "idle_rss_mib": {k: round(v) for k, v in idle.items()},
        "peak_rss_mib": {k: round(v) for k, v in rss.peak.items()},
        "cpu_s": {k: round(cpu1.get(k, 0.0) - v, 2) for k, v in cpu0.items()},
        **{k: result[k] for k in ("ok", "errors", "first_error", "wall_s", "ttft_p50_s", "ttft_p99_s",
                                  "e2e_p50_s", "e2e_p99_s", "stages_p50_ms")},
    }


async def flood(url: str, clients: int, body: bytes, timeout_s: float) -> dict:
    statuses: collections.Counter = collections.Counter()
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}

    async def one(session: aiohttp.ClientSession) -> None:
        try:
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                statuses[f"{response.status} {response.headers.get('Retry-After', '')}".strip()] += 1
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            statuses[type(exc).__name__] += 1

    started = time.monotonic()
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
        await asyncio.gather(*(one(session) for _ in range(clients)))
    return {"statuses": dict(statuses), "wall_s": round(time.monotonic() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--body-mib", type=float, default=16)
    parser.add_argument("--budgets-mib", default="off,256", help="comma-separated; off = no budget")
    parser.add_argument("--num-cpus", type=int, default=4)
    parser.add_argument("--images", default="", help="comma-separated image kinds (WxH or photo): image bursts")
    parser.add_argument("--app-root", default=str(REPO), help="the checkout whose serve_app is deployed")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    sys.path.insert(0, str(REPO / "bench"))
    from run import machine, record_run, set_dotted, shipped_ray_env  # noqa: E402

    os.environ.update(shipped_ray_env())
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    app_root = str(Path(args.app_root).resolve())
    os.environ["PYTHONPATH"] = app_root  # the replicas import serve_app from there too
    import ray
    from ray import serve

    sys.path.insert(0, app_root)
    import serve_app
    from serve_app.app import build_app

    assert Path(serve_app.__file__).resolve().is_relative_to(app_root), serve_app.__file__

    document = yaml.safe_load((REPO / "config.cpu.yaml").read_text())
    app_args = document["applications"][0]["args"]
    app_args["engine"]["model"] = str(REPO / app_args["engine"]["model"])
    app_args["ingress"]["api_keys"] = [API_KEY]
    limit = app_args["ingress"].get("max_request_bytes", 16 * 1024 * 1024)
    size = min(int(args.body_mib * 2**20), limit) - 1024
    filler = "x" * (size - 200)
    body = json.dumps({"model": "not-served", "messages": [{"role": "user", "content": filler}]}).encode()

    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": 8124, "request_timeout_s": 300})
    url = "http://127.0.0.1:8124/v1/chat/completions"
    report: dict = {
        "machine": {**machine(), "memory_gib": round(psutil.virtual_memory().total / 2**30)},
        "command": " ".join(sys.argv),
        "clients": args.clients,
        "body_bytes": len(body),
        "ingress": {k: app_args["ingress"].get(k) for k in ("max_ongoing_requests", "max_queued_requests")},
        "app_root": app_root,
        "ray_env": {k: v for k, v in os.environ.items() if k.startswith("RAY_SERVE")},
        "runs": [],
    }
    try:
        if args.images:
            set_dotted(app_args, "ingress.server_timing", True)
            set_dotted(app_args, "llm.admission.max_pending_s", 3600)  # the path, not shedding
            serve.run(build_app(app_args), name="pixtral", route_prefix="/")
            time.sleep(3)
            base = url.rsplit("/v1/", 1)[0]
            for index, spec in enumerate(args.images.split(",")):
                run = image_burst(base, spec, args.clients, 1000 * (index + 1), app_args["served_model_name"])
                record_run(report, run, args.out)
            return
        for budget in args.budgets_mib.split(","):
            limit_bytes = OFF if budget == "off" else int(float(budget) * 2**20)
            set_dotted(app_args, "ingress.max_inflight_body_bytes", limit_bytes)
            serve.run(build_app(app_args), name="pixtral", route_prefix="/")
            time.sleep(3)
            idle = ingress_rss_mib()
            peak: dict[str, float] = collections.Counter()
            stop = threading.Event()

            def sample() -> None:
                while not stop.is_set():
                    for key, value in ingress_rss_mib().items():
                        peak[key] = max(peak[key], value)
                    time.sleep(0.02)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            result = asyncio.run(flood(url, args.clients, body, 280))
            stop.set()
            sampler.join(timeout=5)
            run = {"budget_mib": budget, "idle_rss_mib": {k: round(v) for k, v in idle.items()},
                   "peak_rss_mib": {k: round(v) for k, v in peak.items()}, **result}
            record_run(report, run, args.out)
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
