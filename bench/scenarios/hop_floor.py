"""Serve's own floor for the hop from an ingress replica to an LLM replica: a two-deployment app
(a caller, and a generator that yields at once) in the Ray Serve environment our image ships
(k8s/image/Dockerfile's ENV: throughput mode, gRPC between handles, HAProxy), no engine. The
caller makes ``calls`` streaming handle calls one after another per variant and times the first
item; wall-clock stamps on both sides split it into the way in (the call to the generator's first
line) and the way out (its first item back). Variants: Serve's default router with bare arguments,
or ours (CacheAffinityRouter, with a routing tag) with a text request's own (its plain messages and
RequestSettings, as the ingress sends them); each back to back and after ``pauses_ms`` of idle
before every call (one user's requests come hundreds of ms apart: the hop then starts from an
idle path). Then the same round trip over HTTP to an echo deployment, through HAProxy's port and
straight to the replica's own direct-ingress port: what Ray Serve LLM's direct streaming puts in
place of the handle hop (HAProxy asks a router deployment over HTTP, then forwards to the replica).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import subprocess
import sys
import time

import load
import systems

BODY = {"model": "pixtral", "messages": [{"role": "user", "content": load.USER_TEXTS[0]}], "max_tokens": 64}


async def measure_all(caller, variants: list, calls: int) -> list:
    """In one event loop: in throughput mode a handle's router is bound to the loop it first ran in."""
    return [await asyncio.wait_for(caller.measure.remote(*variant, calls), 600) for variant in variants]


def probe(calls: int, pauses_ms: list[float]) -> list[dict]:
    """In a process of its own (the Serve environment is read at import): each variant's hop."""
    import ray
    from ray import serve

    from serve_app.api.models import ChatCompletionRequest
    from serve_app.routing.policy import router_config
    from serve_app.routing.request_router import RoutingTag

    @serve.deployment(max_ongoing_requests=1000)
    class Generator:
        async def generate(self, messages, images, settings, request_id):
            entered = time.time()
            yield {"entered": entered, "left": time.time()}

    @serve.deployment(max_ongoing_requests=1000)
    class Caller:
        def __init__(self, default, ours):
            self.handles = {"default": default, "ours": ours}

        async def measure(self, router: str, arguments: str, pause_ms: float, calls: int) -> list[tuple[float, float]]:
            chat = ChatCompletionRequest.model_validate(BODY)
            out = []
            for i in range(calls + 10):  # the first 10 warm up
                handle = self.handles[router].options(stream=True)
                if router == "ours":
                    handle = handle.options(session_id=RoutingTag(request_id=f"r{i}", key="k").encode())
                args = ((chat.plain_messages(), [], chat.settings(), f"r{i}") if arguments == "request"
                        else ([], [], None, ""))
                sent = time.time()
                stream = handle.generate.remote(*args)
                first = await stream.__anext__()
                back = time.time()
                async for _ in stream:
                    pass
                if i >= 10:
                    out.append((first["entered"] - sent, back - first["left"]))
                await asyncio.sleep(pause_ms / 1000)
            return out

    @serve.deployment
    class Echo:
        async def __call__(self, request) -> str:
            return "ok"

    ray.init(address="local", num_cpus=4, include_dashboard=False)
    serve.start(http_options={"host": "127.0.0.1", "port": systems.PORT})
    ours = Generator.options(name="GeneratorOurs", request_router_config=router_config("GeneratorOurs"))
    caller = serve.run(Caller.bind(Generator.options(name="GeneratorDefault").bind(), ours.bind()),
                       name="hop", route_prefix=None)
    serve.run(Echo.bind(), name="echo", route_prefix="/echo")
    variants = [(router, arguments, pause) for pause in [0, *pauses_ms]
                for router, arguments in (("default", "bare"), ("ours", "request"))]
    runs = []
    for (router, arguments, pause), pairs in zip(variants, asyncio.run(measure_all(caller, variants, calls))):
        way_in, way_out = [p[0] * 1000 for p in pairs], [p[1] * 1000 for p in pairs]
        both = [a + b for a, b in zip(way_in, way_out)]
        runs.append({"router": router, "arguments": arguments, "idle_before_ms": pause, "calls": len(pairs),
                     "hop_p50_ms": load.percentile(both, 50), "hop_p90_ms": load.percentile(both, 90),
                     "way_in_p50_ms": load.percentile(way_in, 50), "way_out_p50_ms": load.percentile(way_out, 50)})
    # The same round trip over HTTP, as HAProxy forwards a request to a replica (direct ingress; Ray Serve
    # LLM's direct streaming first asks a router deployment over HTTP): through port 8000, and straight to
    # the echo replica's own port (the first of Serve's direct-ingress range).
    for front, port in (("http via HAProxy", systems.PORT), ("http to the replica's port", echo_port())):
        for pause in [0, *pauses_ms]:
            times = http_round_trips(port, calls, pause)
            runs.append({"router": front, "arguments": "GET /echo", "idle_before_ms": pause, "calls": len(times),
                         "hop_p50_ms": load.percentile(times, 50), "hop_p90_ms": load.percentile(times, 90)})
    ray.shutdown()  # Serve with it (serve.shutdown() would want the handle's closed loop)
    return runs


def echo_ok(port: int, conn: http.client.HTTPConnection | None = None) -> bool:
    """One GET /echo (on ``conn``, else on a connection of its own): did it answer 200 "ok"?"""
    own = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        own.request("GET", "/echo")
        response = own.getresponse()
        return response.status == 200 and response.read() == b"ok"
    except (OSError, http.client.HTTPException):
        return False
    finally:
        if conn is None:
            own.close()


def echo_port() -> int:
    """The echo replica's own HTTP port: the one of Serve's direct-ingress range that answers GET /echo."""
    from ray.serve._private.constants import RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT as first

    for port in range(first, first + 16):
        if echo_ok(port):
            return port
    raise RuntimeError(f"no replica port from {first} answers GET /echo")


def http_round_trips(port: int, calls: int, pause_ms: float) -> list[float]:
    """ms of each GET /echo on one kept-alive connection, after 10 to warm up."""
    deadline = time.monotonic() + 60
    while not echo_ok(port):  # HAProxy takes its config a little after the app is ready
        if time.monotonic() > deadline:
            raise RuntimeError(f"GET /echo on port {port}: no 200 within 60 s")
        time.sleep(0.5)
    conn, out = http.client.HTTPConnection("127.0.0.1", port, timeout=30), []
    for i in range(calls + 10):
        started = time.perf_counter()
        if not echo_ok(port, conn):
            raise RuntimeError(f"GET /echo on port {port} failed")
        if i >= 10:
            out.append((time.perf_counter() - started) * 1000)
        time.sleep(pause_ms / 1000)
    conn.close()
    return out


def run(bench) -> int:
    cfg = bench.spec["hop_floor"]
    env = {**systems.ray_driver_env(systems.REPO, systems.BENCH), **systems.shipped_ray_env()}
    child = subprocess.Popen([sys.executable, __file__, json.dumps(cfg)], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = child.communicate(timeout=max(60.0, bench.left_s()))
    except subprocess.TimeoutExpired:
        out, err = "", "timed out"
    finally:  # its Ray, whatever is left of it
        systems.kill_session(child.pid)
        child.wait(timeout=10)
    if child.returncode:
        bench.result["error"] = err[-2000:]
        return 1
    bench.result["runs"] = json.loads(out.strip().splitlines()[-1])
    return 0


if __name__ == "__main__":
    settings = json.loads(sys.argv[1])
    print(json.dumps(probe(settings["calls"], settings["pauses_ms"])))
