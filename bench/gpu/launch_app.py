"""Start a NEW local Ray cluster and deploy a Serve config file in it, then wait.

What ``RAY_ADDRESS=local serve run CONFIG`` does, plus the two knobs the CLI
lacks: the cluster's logical CPU count and its temp dir (so a benchmark on a
shared machine never attaches to, or clashes with, another Ray). The config's
``args`` are validated by ``serve_app.config.AppConfig`` inside ``build_app``.

  python3 bench/gpu/launch_app.py CONFIG.yaml --num-cpus 16 [--temp-dir /tmp/ray-bench]

Runs until SIGTERM/SIGINT, then shuts Serve and Ray down. Start it under
``setsid`` and stop it with ``kill -TERM -- -PGID`` (Ray's processes stay in
its process group).
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading
import time

import yaml


def load_app(import_path: str, args: dict):
    module, _, attr = import_path.replace(":", ".").rpartition(".")
    builder = getattr(importlib.import_module(module), attr)
    return builder(args)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("--num-cpus", type=float, default=None)
    ap.add_argument("--temp-dir", default=None)
    a = ap.parse_args()

    with open(a.config) as f:
        cfg = yaml.safe_load(f)
    (app_cfg,) = cfg["applications"]

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    import ray
    from ray import serve

    t0 = time.monotonic()
    init_kwargs = dict(address="local", include_dashboard=False, _node_ip_address="127.0.0.1")
    if a.num_cpus is not None:
        init_kwargs["num_cpus"] = a.num_cpus
    if a.temp_dir:
        init_kwargs["_temp_dir"] = a.temp_dir
    ray.init(**init_kwargs)
    # ray.init installs Ray's own fatal-signal handler for SIGTERM; take it back so a
    # SIGTERM to this process shuts Serve and Ray down in order.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"[launch_app] ray up in {time.monotonic() - t0:.1f}s: {ray.cluster_resources()}", flush=True)
    serve.start(http_options=cfg.get("http_options", {}), proxy_location=cfg.get("proxy_location"))
    app = load_app(app_cfg["import_path"], app_cfg.get("args", {}))
    # serve.run blocks until the app is RUNNING (no deadline of its own); the caller polls /health.
    runner = threading.Thread(
        target=serve.run,
        args=(app,),
        kwargs={"name": app_cfg.get("name", "default"), "route_prefix": app_cfg.get("route_prefix", "/")},
        daemon=True,
    )
    runner.start()
    print("[launch_app] serve.run started", flush=True)
    while not stop.wait(5):
        if not runner.is_alive() and getattr(main, "_announced", False) is False:
            print(f"[launch_app] serve.run returned after {time.monotonic() - t0:.1f}s", flush=True)
            main._announced = True  # type: ignore[attr-defined]
    print("[launch_app] stopping", flush=True)
    try:
        serve.shutdown()
    finally:
        ray.shutdown()
    print("[launch_app] stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
