"""One local Ray + one Serve app on the tiny Pixtral for the whole e2e session."""

from __future__ import annotations

import copy
import os
import socket
import threading
import time
from pathlib import Path

import pytest
import yaml
from chat_payloads import REQUEST_LIMIT, SYSTEM_PROMPT_TEMPLATE

REPO = Path(__file__).resolve().parents[2]
TINY_MODEL = REPO / ".cache" / "tiny-pixtral-12b"
TINY_LARGE = REPO / ".cache" / "tiny-pixtral-large"

START_TIMEOUT_S = 420

for key, value in {
    "RAY_AUTH_MODE": "disabled",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DEDUP_LOGS": "0",
    "VLLM_NO_USAGE_STATS": "1",
    "HF_HUB_OFFLINE": "1",
}.items():
    os.environ.setdefault(key, value)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_app_args(**overrides) -> dict:
    """The args of config.cpu.yaml (the real embedded default), with test overrides merged in."""
    config = yaml.safe_load((REPO / "config.cpu.yaml").read_text())
    args = copy.deepcopy(config["applications"][0]["args"])
    args["engine"]["model"] = str(TINY_MODEL)
    _merge(args, overrides)
    return args


def _merge(target: dict, updates: dict) -> None:
    for key, value in updates.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = value


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    from serve_app.tiny_model import write_tiny_model

    if not (TINY_MODEL / "consolidated.safetensors").is_file():
        write_tiny_model(TINY_MODEL)
    return TINY_MODEL


@pytest.fixture(scope="session")
def tiny_large_model() -> Path:
    """A tiny Pixtral-Large-shaped checkpoint (v7m1 tokenizer) with a SYSTEM_PROMPT.txt."""
    from serve_app.tiny_model import write_tiny_model

    if not (TINY_LARGE / "consolidated.safetensors").is_file():
        write_tiny_model(TINY_LARGE, "pixtral-large")
    (TINY_LARGE / "SYSTEM_PROMPT.txt").write_text(SYSTEM_PROMPT_TEMPLATE)
    return TINY_LARGE


@pytest.fixture(scope="session")
def api_key() -> str:
    return "test-key-" + os.urandom(6).hex()


@pytest.fixture(scope="session")
def moto_endpoint():
    """A real S3-compatible server (moto_server) on loopback, ended by its pid."""
    import subprocess
    import sys
    import urllib.request

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=1)
            break
        except Exception:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("moto_server did not start within 30 s")
            time.sleep(0.2)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="session")
def served(tiny_model, api_key, moto_endpoint):
    """Ray (local, loopback) + the Serve app; yields the base URL."""
    import ray
    from ray import serve

    os.environ["AWS_ACCESS_KEY_ID"] = "testing"
    os.environ["AWS_SECRET_ACCESS_KEY"] = "testing"
    os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
    port = free_port()
    ray.init(
        address="local",
        num_cpus=4,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
    )
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        args = cpu_app_args(
            ingress={"api_keys": [api_key], "max_request_bytes": REQUEST_LIMIT},
            image_pool={
                "fetch": {
                    "allow_http": True,
                    "block_private_addresses": False,
                    "s3_endpoint_url": moto_endpoint,
                    "s3_region": "us-east-1",
                }
            },
        )
        yield _deploy(args, name="pixtral", base=f"http://127.0.0.1:{port}", route_prefix="/")
    finally:
        serve.shutdown()
        ray.shutdown()


def _deploy(args: dict, *, name: str, base: str, route_prefix: str) -> str:
    """Deploy one application of ``build_app(args)``; returns its URL once /health answers."""
    from ray import serve

    from serve_app.app import build_app

    started = time.monotonic()
    # serve.run waits for the replicas without a deadline; the health poll bounds it.
    deploy = threading.Thread(
        target=serve.run,
        args=(build_app(args),),
        kwargs={"name": name, "route_prefix": route_prefix},
        daemon=True,
    )
    deploy.start()
    url = base.rstrip("/") + (route_prefix if route_prefix != "/" else "")
    _wait_healthy(url, started)
    deploy.join(timeout=60)  # returns once the app is RUNNING, right after /health answers
    return url


def _wait_healthy(base: str, started: float) -> None:
    import urllib.request

    while True:
        try:
            with urllib.request.urlopen(base + "/health", timeout=5) as response:
                if response.status == 200:
                    print(f"app healthy after {time.monotonic() - started:.1f} s")
                    return
        except Exception:
            pass
        if time.monotonic() - started > START_TIMEOUT_S:
            raise RuntimeError(f"app not healthy within {START_TIMEOUT_S} s")
        time.sleep(1)


@pytest.fixture(scope="session")
def served_large(served, tiny_large_model, api_key):
    """A second application in the same Ray: the tiny Pixtral-Large with a default system prompt."""
    args = cpu_app_args(
        served_model_name="tiny-pixtral-large",
        engine={"model": str(tiny_large_model)},
        ingress={"api_keys": [api_key]},
        system_prompt={"file": "SYSTEM_PROMPT.txt", "model_name": "Pixtral-Large-Instruct-2411", "timezone": "UTC"},
    )
    return _deploy(args, name="pixtral-large", base=served, route_prefix="/large")


@pytest.fixture(scope="session")
def client(served, api_key):
    from openai import OpenAI

    return OpenAI(base_url=served + "/v1", api_key=api_key, timeout=120, max_retries=0)


@pytest.fixture(scope="session")
def image_server():
    """A loopback HTTP server for images: put bytes in ``routes`` by path."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    routes: dict[str, tuple[str, bytes]] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            if self.path not in routes:
                self.send_error(404)
                return
            content_type, body = routes[self.path]
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.routes = routes
    server.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    yield server
    server.shutdown()
    server.server_close()
