"""Deploying apps into the e2e session's Ray, shared by the conftest and the tests."""

from __future__ import annotations

import copy
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
TINY_MODEL = REPO / ".cache" / "tiny-pixtral-12b"
TINY_LARGE = REPO / ".cache" / "tiny-pixtral-large"
START_TIMEOUT_S = 420
# `make test-colocated`: every app of the suite serves its API from the LLM replicas (ingress.colocated).
COLOCATED = os.environ.get("PIXTRAL_SERVE_E2E_COLOCATED") == "1"


def llm_load(app_name: str) -> dict:
    """The LLM replica's own count of what it holds, its autoscaling metrics (a handle call from this test thread)."""
    from ray import serve

    from serve_app.deployments import LLM

    handle = serve.get_deployment_handle(LLM, app_name=app_name)
    return handle.record_autoscaling_stats.remote().result(timeout_s=30)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def end_process(proc: subprocess.Popen, timeout_s: float = 10) -> None:
    """Stop a server this test session started: SIGTERM, then SIGKILL after ``timeout_s``."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def cpu_app_args(**overrides) -> dict:
    """The args of config.cpu.yaml (the real embedded default), with test overrides merged in."""
    config = yaml.safe_load((REPO / "config.cpu.yaml").read_text())
    args = copy.deepcopy(config["applications"][0]["args"])
    args["engine"]["model"] = str(TINY_MODEL)
    if COLOCATED:
        args["ingress"]["colocated"] = True
    _merge(args, overrides)
    return args


# Skipped under `make test-colocated`: what the separate ingress answers on its own while no LLM
# replica runs, which the colocated API cannot (README, How it works).
separate_ingress_only = pytest.mark.skipif(COLOCATED, reason="the separate ingress's own answers while no engine runs")


def _merge(target: dict, updates: dict) -> None:
    for key, value in updates.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = value


def deploy_args(args: dict, *, name: str, base: str, route_prefix: str) -> str:
    """Deploy ``build_app(args)``, the path ``serve run`` takes; returns its URL once healthy."""
    from serve_app.app import build_app

    return deploy(build_app(args), name=name, base=base, route_prefix=route_prefix)


def deploy(app, *, name: str, base: str, route_prefix: str) -> str:
    """Deploy one Serve application; returns its URL once /ready answers (bounded)."""
    from ray import serve

    started = time.monotonic()
    # serve.run waits for the replicas without a deadline; the health poll bounds it.
    deploy = threading.Thread(
        target=serve.run,
        args=(app,),
        kwargs={"name": name, "route_prefix": route_prefix},
        daemon=True,
    )
    deploy.start()
    url = base.rstrip("/") + (route_prefix if route_prefix != "/" else "")
    _wait_healthy(url, started)
    deploy.join(timeout=60)  # returns once the app is RUNNING, right after /ready answers
    return url


def _wait_healthy(base: str, started: float) -> None:
    import urllib.request

    while True:
        try:
            with urllib.request.urlopen(base + "/ready", timeout=5) as response:
                if response.status == 200:
                    print(f"app ready after {time.monotonic() - started:.1f} s")
                    return
        except Exception:
            pass
        if time.monotonic() - started > START_TIMEOUT_S:
            raise RuntimeError(f"app not ready within {START_TIMEOUT_S} s")
        time.sleep(1)
