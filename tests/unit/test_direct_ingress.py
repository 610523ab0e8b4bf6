"""What Ray Serve 2.60's throughput mode (set everywhere we start Ray) implies for HTTP ingress.

``RAY_SERVE_THROUGHPUT_OPTIMIZED=1`` (k8s/image/Dockerfile, cluster/node-env.sh, ``make run``, the
e2e tests) also turns on Serve's direct ingress: each ingress replica serves HTTP on a port of its
own (30000 and up, one per replica) and the controller starts one proxy, on the head node only,
whatever ``proxy_location`` says; with ``RAY_SERVE_ENABLE_HA_PROXY=1`` (the image and the cluster
nodes) HAProxy takes that proxy's place on port 8000, on every node. The README and
bench/results/2026-12-05-cpu-direct-ingress.md rely on this; these tests fail when a Ray upgrade
changes it. No Ray is started.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys

import pytest

_PROGRAM = """
import json
from ray.serve._private import constants as c
print(json.dumps({
    "direct": c.RAY_SERVE_ENABLE_DIRECT_INGRESS,
    "ha_proxy": c.RAY_SERVE_ENABLE_HA_PROXY,
    "min_port": c.RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT,
    "min_draining_s": c.RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S,
}))
"""


def _constants(**env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RAY_SERVE_")}
    out = subprocess.run(
        [sys.executable, "-c", _PROGRAM], env={**clean, **env}, capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    ("env", "direct", "ha_proxy"),
    [
        ({}, False, False),
        ({"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}, True, False),  # `make run`, the e2e tests
        ({"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_HA_PROXY": "1"}, True, True),  # the image
        ({"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_DIRECT_INGRESS": "0"}, False, False),
    ],
)
def test_throughput_mode_turns_direct_ingress_on(env, direct, ha_proxy):
    got = _constants(**env)
    assert got["direct"] is direct, got
    assert got["ha_proxy"] is ha_proxy, got
    assert got["min_port"] == 30000, got
    assert got["min_draining_s"] == 30.0, got


def test_direct_ingress_keeps_one_proxy_on_the_head_node():
    from ray.serve._private.controller import ServeController

    source = inspect.getsource(ServeController.__init__)
    assert "elif self._direct_ingress_enabled:" in source
    assert "proxy_location = ProxyLocation.HeadOnly" in source
    # ... but not behind HAProxy, which keeps config.yaml's proxy_location (EveryNode): one per node,
    # so every KubeRay pod's port 8000 answers its readiness probe (docs/deploy.md).
    assert (
        source.index("if self._ha_proxy_enabled:")
        < source.index("elif self._direct_ingress_enabled:")
        < source.index("proxy_location = ProxyLocation.HeadOnly")
    )


def test_replica_http_server_gets_the_proxy_middlewares_and_a_port_of_its_own():
    # Our RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH middleware (serve_app/api/proxy_errors.py) wraps
    # the replica's own server too, and replicas do not share a port (no SO_REUSEPORT).
    from ray.serve._private.replica import Replica

    source = inspect.getsource(Replica._maybe_start_direct_ingress_servers)
    assert "configure_http_middlewares(" in source
    assert "allocate_replica_port" in source
    assert "enable_so_reuseport=False" in source


def test_haproxy_binds_its_stats_and_metrics_ports_on_every_interface():
    # Why `make run` and the e2e tests (loopback only) leave HAProxy off (Makefile, tests/e2e/conftest.py),
    # and what README's Direct ingress tells operators of the image: whatever http_options.host says.
    from ray.serve._private import constants as c
    from ray.serve._private.haproxy_templates import HAPROXY_CONFIG_TEMPLATE

    assert "bind *:{{ config.stats_port }}" in HAPROXY_CONFIG_TEMPLATE
    assert "bind :{{ config.metrics_port }}" in HAPROXY_CONFIG_TEMPLATE
    assert (c.RAY_SERVE_HAPROXY_STATS_PORT, c.RAY_SERVE_HAPROXY_METRICS_PORT) == (8404, 9101)
