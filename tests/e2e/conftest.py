"""One local Ray + one Serve app on the tiny Pixtral for the whole e2e session."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from chat_payloads import REQUEST_LIMIT, SYSTEM_PROMPT_TEMPLATE
from serve_support import TINY_LARGE, TINY_MODEL, cpu_app_args, deploy_args, end_process, free_port

for key, value in {
    "RAY_AUTH_MODE": "disabled",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DEDUP_LOGS": "0",
    "VLLM_NO_USAGE_STATS": "1",
    "HF_HUB_OFFLINE": "1",
}.items():
    os.environ.setdefault(key, value)


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    from tools.tiny_model import write_tiny_model

    if not (TINY_MODEL / "consolidated.safetensors").is_file():
        write_tiny_model(TINY_MODEL)
    return TINY_MODEL


@pytest.fixture(scope="session")
def tiny_large_model() -> Path:
    """A tiny Pixtral-Large-shaped checkpoint (v7m1 tokenizer) with a SYSTEM_PROMPT.txt."""
    from tools.tiny_model import write_tiny_model

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
    end_process(proc)


@pytest.fixture(scope="session")
def ray_metrics_port() -> int:
    """The port of the e2e Ray node's Prometheus endpoint (Ray, Serve, app and vLLM metrics)."""
    return free_port()


@pytest.fixture(scope="session")
def served(tiny_model, api_key, moto_endpoint, ray_metrics_port):
    """Ray (local, loopback) + the Serve app; yields the base URL."""
    import ray
    from ray import serve

    # What production runs (k8s/image/Dockerfile): Ray Serve's throughput mode, gRPC cap raised.
    # Not its HAProxy, which binds its stats and metrics ports on every interface (`make test-haproxy`
    # runs this suite behind it).
    # Set after this process imported Ray Serve and before Ray starts: the cluster's processes
    # (proxy, controller, replicas) inherit it, while the test process keeps Serve's default of
    # a router loop of its own, so tests can call handles from plain threads.
    os.environ.update({
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH": "134217728",
        # Serve's proxy's own 429/503 as OpenAI error bodies (serve_app/api/proxy_errors.py).
        "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "serve_app.api.proxy_errors:openai_error_bodies",
    })
    # Tests only: an ingress replica that stops (serve.delete, a redeploy) stays open 30 s by default
    # with direct ingress, for load balancers to deregister it; here nothing needs that long, and
    # every deleted app otherwise costs the suite 30 s. Production keeps Serve's 30 s.
    os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "2")
    os.environ["AWS_ACCESS_KEY_ID"] = "testing"
    os.environ["AWS_SECRET_ACCESS_KEY"] = "testing"
    os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
    port = free_port()
    ray.init(
        address="local",
        num_cpus=4,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        _metrics_export_port=ray_metrics_port,
        log_to_driver=False,
    )
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        args = cpu_app_args(
            ingress={"api_keys": [api_key], "max_request_bytes": REQUEST_LIMIT, "server_timing": True},
            image_pool={
                "fetch": {
                    "allow_http": True,
                    "block_private_addresses": False,
                    "s3_endpoint_url": moto_endpoint,
                    "s3_region": "us-east-1",
                    "s3_allowed_buckets": ["pixtral-images"],
                }
            },
        )
        yield deploy_args(args, name="pixtral", base=f"http://127.0.0.1:{port}", route_prefix="/")
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="session")
def served_large(served, tiny_large_model, api_key):
    """A second application in the same Ray: the tiny Pixtral-Large with a default system prompt."""
    args = cpu_app_args(
        served_model_name="tiny-pixtral-large",
        engine={"model": str(tiny_large_model)},
        ingress={"api_keys": [api_key]},
        system_prompt={"file": "SYSTEM_PROMPT.txt", "model_name": "Pixtral-Large-Instruct-2411", "timezone": "UTC"},
    )
    return deploy_args(args, name="pixtral-large", base=served, route_prefix="/large")


@pytest.fixture(scope="session")
def prometheus_binary() -> str:
    """Debian's prometheus; skips (before Ray starts) where it is not installed."""
    import shutil

    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip(
            "no `prometheus` binary on PATH: `make test` installs Debian's prometheus package "
            "with apt-get when run as root; install it to run the real-Prometheus tests"
        )
    return binary


@pytest.fixture(scope="session")
def prometheus(prometheus_binary, served, ray_metrics_port, tmp_path_factory):
    """A real Prometheus on loopback scraping the e2e Ray node every second; yields a ``PromQL``."""
    from metrics_support import PromQL, start_prometheus, wait_for

    workdir = tmp_path_factory.mktemp("prometheus")
    port = free_port()
    proc = start_prometheus(prometheus_binary, f"127.0.0.1:{ray_metrics_port}", workdir, port)
    promql = PromQL(f"http://127.0.0.1:{port}")
    try:
        wait_for(lambda: proc.poll() is not None or promql.ready(), timeout_s=60, what="Prometheus ready")
        if proc.poll() is not None:
            raise RuntimeError("prometheus exited: " + (workdir / "prometheus.log").read_text()[-2000:])
        wait_for(lambda: promql.scalar('up{job="ray"}') == 1, timeout_s=60, what="Prometheus scraping Ray")
        yield promql
    finally:
        end_process(proc)


@pytest.fixture(scope="session")
def client(served, api_key):
    from openai import OpenAI

    return OpenAI(base_url=served + "/v1", api_key=api_key, timeout=120, max_retries=0)


@pytest.fixture(scope="session")
def image_server():
    """A loopback HTTP server for images: put bytes in ``routes`` by path."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    routes: dict[str, tuple[str, bytes]] = {}
    started: list[str] = []  # /slow/... responses begun
    aborted: list[str] = []  # /slow/... responses whose client hung up

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            if self.path.startswith("/late404/"):  # a missing image, answered after 1 s
                time.sleep(1.0)
                self.send_error(404)
                return
            if self.path.startswith("/slow/"):  # one byte every 50 ms for up to 30 s
                started.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(10**6))
                self.end_headers()
                try:
                    for _ in range(600):
                        self.wfile.write(b"\xff")
                        self.wfile.flush()
                        time.sleep(0.05)
                except OSError:
                    aborted.append(self.path)
                return
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
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.routes = routes
    server.started = started
    server.aborted = aborted
    server.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    yield server
    server.shutdown()
    server.server_close()
