"""Overload and fault figures, on CPU (tiny Pixtral) or a GPU (Pixtral-12B, random weights).

Starts a local Ray with the Ray Serve environment our image ships (k8s/image/Dockerfile),
deploys ``build_app`` with a config file's args (the path ``serve run`` takes; only the
model folder and limits swapped with ``--model-path``), then:

* calibrate: aggregate prefill and decode tokens/s of the engine (for llm.admission);
* overload: bursts of 1x, 4x, 16x, 64x the LLM capacity (max_ongoing_requests) of
  simultaneous requests (small JPEG, ``--max-tokens`` tokens, ``--client-timeout-s``):
  200s / 429s / other / client timeouts, p50/p99 latency of the admitted, RSS of each
  process group before and after;
* faults under steady load (``--steady`` clients): kill the engine core, kill the LLM
  replica, kill a pool replica: failed requests and seconds until a request succeeds again.

  RAY_AUTH_MODE=disabled python bench/reliability.py --config config.cpu.yaml \
      --out bench/results/2026-12-02-cpu-reliability.json
  # a GPU machine (through bench/gpu/detached.sh start bench/reliability.py ...), the shipped config.yaml:
  python bench/reliability.py --config config.yaml --model-path /tmp/pixtral-12b --load-format dummy \
      --max-model-len 16384 --levels 1,4,16 --calibrate-image 1024x768 --calibrate-decode-tokens 256 \
      --out /tmp/bench/reliability.json
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import copy
import io
import json
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

import aiohttp
import httpx
import numpy as np
import psutil
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
API_KEY = "reliability-bench-key"  # the app under test requires it (config.yaml: auth: required)
HEADERS = {"Authorization": f"Bearer {API_KEY}"}


def jpeg(seed: int, size: tuple[int, int] = (320, 240)) -> str:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def body(model: str, seed: int, max_tokens: int, size: tuple[int, int] = (320, 240), **extra) -> dict:
    content = [
        {"type": "text", "text": "Describe the image."},
        {"type": "image_url", "image_url": {"url": jpeg(seed, size)}},
    ]
    return {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, **extra}


def process_groups() -> dict[str, float]:
    """RSS (MiB) per Ray/vLLM process group, by process title."""
    groups: dict[str, float] = collections.Counter()
    for proc in psutil.process_iter(["cmdline", "memory_info"]):
        title = " ".join(proc.info["cmdline"] or [])
        for marker, name in [
            ("EngineCore", "engine core"),
            ("PixtralServer", "PixtralServer replica"),
            ("ImagePool", "ImagePool replicas"),
            ("OpenAIIngress", "OpenAIIngress replica"),
            ("ProxyActor", "Serve proxy"),
            ("ServeController", "Serve controller"),
            ("raylet", "raylet"),
            ("gcs_server", "GCS"),
        ]:
            if marker in title and proc.info["memory_info"] is not None:
                groups[name] += proc.info["memory_info"].rss / 2**20
                break
    return {k: round(v) for k, v in sorted(groups.items())}


async def one(client: aiohttp.ClientSession, url: str, payload: dict, timeout: float) -> tuple[str, float, dict]:
    """One request; aiohttp, because httpx's pool spends ~20 ms of client CPU per request at 1024
    connections (measured: 24.6 s of CPU in a 26 s burst), which made the client the bottleneck."""
    data = json.dumps(payload).encode()
    started = time.monotonic()
    try:
        async with client.post(
            url, data=data, headers={"Content-Type": "application/json"}, timeout=aiohttp.ClientTimeout(total=timeout)
        ) as response:
            status = response.status
            retry_after = response.headers.get("retry-after")
            text = await response.text()
    except asyncio.TimeoutError:
        return "timeout", time.monotonic() - started, {}
    except aiohttp.ClientError as exc:
        return f"conn:{type(exc).__name__}", time.monotonic() - started, {}
    elapsed = time.monotonic() - started
    info: dict = {"retry_after": retry_after}
    try:
        answer = json.loads(text)
        if status == 200:
            info["usage"] = answer["usage"]
        else:
            info["message"] = answer["error"]["message"]
    except (ValueError, KeyError, TypeError):
        info["message"] = text[:80]
    return str(status), elapsed, info


def session(n: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        headers=HEADERS, connector=aiohttp.TCPConnector(limit=n + 8, force_close=False), timeout=aiohttp.ClientTimeout()
    )


def percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if values else None


async def burst(url: str, model: str, n: int, max_tokens: int, timeout: float, seed: int) -> dict:
    async with session(n) as client:
        started, cpu_started = time.monotonic(), time.process_time()
        results = await asyncio.gather(
            *(one(client, url, body(model, seed + i, max_tokens), timeout) for i in range(n))
        )
        wall = time.monotonic() - started
        client_cpu = time.process_time() - cpu_started  # this process: the client shares the machine
    statuses = collections.Counter(status for status, _, _ in results)
    admitted = [elapsed for status, elapsed, _ in results if status == "200"]
    refused = [elapsed for status, elapsed, _ in results if status == "429"]
    retry_after = collections.Counter(info.get("retry_after") for status, _, info in results if status == "429")
    by_refusal: dict[str, list[float]] = collections.defaultdict(list)  # who refused: the message says
    for status, elapsed, info in results:
        if status == "429":
            by_refusal[re.sub(r"\d+", "N", info.get("message", ""))[:60]].append(elapsed)
    return {
        "requests": n,
        "statuses": dict(statuses),
        "wall_s": round(wall, 1),
        "client_cpu_s": round(client_cpu, 1),
        "admitted_p50_s": percentile(admitted, 50),
        "admitted_p99_s": percentile(admitted, 99),
        "refused_p50_s": percentile(refused, 50),
        "refused_p90_s": percentile(refused, 90),
        "refused_p99_s": percentile(refused, 99),
        "refused_max_s": round(max(refused), 2) if refused else None,
        "retry_after_values": dict(retry_after),
        "refusals": {
            message: {"count": len(times), "p50_s": percentile(times, 50), "max_s": round(max(times), 2)}
            for message, times in by_refusal.items()
        },
    }


async def calibrate(url: str, model: str, n: int, size: tuple[int, int], decode_tokens: int) -> dict:
    """Aggregate prefill tokens/s (max_tokens=1) and decode tokens/s (ignore_eos, ``decode_tokens``
    each, the same prompts again so that they hit the prefix cache) at n clients."""
    async with session(n) as client:
        started = time.monotonic()
        prefill = await asyncio.gather(*(one(client, url, body(model, 900 + i, 1, size), 300) for i in range(n)))
        prefill_s = time.monotonic() - started
        started = time.monotonic()
        decode = await asyncio.gather(
            *(one(client, url, body(model, 900 + i, decode_tokens, size, ignore_eos=True), 600) for i in range(n))
        )
        decode_s = time.monotonic() - started
    prompt_tokens = sum(info["usage"]["prompt_tokens"] for s, _, info in prefill if s == "200")
    completion = sum(info["usage"]["completion_tokens"] for s, _, info in decode if s == "200")
    return {
        "clients": n,
        "image": f"{size[0]}x{size[1]}",
        "decode_tokens_per_request": decode_tokens,
        "statuses": dict(collections.Counter(s for s, _, _ in prefill + decode)),
        "prompt_tokens_per_request": prompt_tokens // max(1, n),
        "prefill_tokens_per_s": round(prompt_tokens / prefill_s),
        # the repeated images hit the prefix cache in the decode run, so this is mostly decode
        "decode_tokens_per_s": round(completion / decode_s),
    }


class Steady:
    """``clients`` threads sending small requests back to back; records (time, status)."""

    def __init__(self, url: str, model: str, clients: int, timeout: float):
        self.url, self.model, self.timeout = url, model, timeout
        self.records: list[tuple[float, str]] = []  # (time answered, status)
        self.failed_s: list[float] = []  # how long each non-200 answer took
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(c,), daemon=True) for c in range(clients)]

    def _run(self, client_id: int) -> None:
        seed = 10_000 * (client_id + 1)
        with httpx.Client(headers=HEADERS) as client:
            while not self.stop.is_set():
                seed += 1
                sent = time.monotonic()
                try:
                    response = client.post(self.url, json=body(self.model, seed, 8), timeout=self.timeout)
                    status = str(response.status_code)
                except httpx.TimeoutException:
                    status = "timeout"
                except httpx.HTTPError as exc:
                    status = f"conn:{type(exc).__name__}"
                self.records.append((time.monotonic(), status))
                if status != "200":
                    self.failed_s.append(time.monotonic() - sent)
                    time.sleep(0.5)

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=self.timeout + 5)


def replica_pid(marker: str) -> psutil.Process:
    found = [p for p in psutil.process_iter(["cmdline"]) if marker in " ".join(p.info["cmdline"] or [])]
    return found[0]


def fault(
    name: str, url: str, model: str, clients: int, timeout: float, inject, after_s: float = 30, bound_s: float = 600
) -> dict:
    with Steady(url, model, clients, timeout) as steady:
        time.sleep(5)
        injected = time.monotonic()
        inject()
        # wait for the first success that started after the fault
        deadline = injected + bound_s
        recovered = None
        while time.monotonic() < deadline:
            ok_after = [t for t, s in steady.records if t > injected + 1 and s == "200"]
            failed_after = [t for t, s in steady.records if t > injected and s != "200"]
            if ok_after and (not failed_after or ok_after[-1] > failed_after[-1]):
                recovered = min(t for t in ok_after if not failed_after or t > failed_after[-1]) - injected
                break
            time.sleep(0.5)
        time.sleep(after_s if recovered is not None else 0)
    after = [s for t, s in steady.records if t > injected]
    return {
        "fault": name,
        "requests_after_fault": len(after),
        "statuses_after_fault": dict(collections.Counter(after)),
        "failed": sum(s != "200" for s in after),
        "failed_answer_p50_s": percentile(steady.failed_s, 50),
        "failed_answer_max_s": round(max(steady.failed_s), 2) if steady.failed_s else None,
        "seconds_to_first_success_after_last_failure": round(recovered, 1) if recovered is not None else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="config.cpu.yaml")
    parser.add_argument("--levels", default="1,4,16,64")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--client-timeout-s", type=float, default=90)
    parser.add_argument("--steady", type=int, default=4)
    parser.add_argument("--skip-faults", action="store_true")
    parser.add_argument("--recovery-bound-s", type=float, default=600, help="give up on a fault's recovery after")
    parser.add_argument("--model-path", help="model folder instead of the config's (e.g. /tmp/pixtral-12b, random weights)")
    parser.add_argument("--load-format", help="with --model-path: vLLM load format (dummy)")
    parser.add_argument("--max-model-len", type=int, help="with --model-path")
    parser.add_argument(
        "--capacity", type=int, help="requests the levels are multiples of (default: llm.max_ongoing_requests)"
    )
    parser.add_argument("--num-cpus", type=int, default=4, help="CPUs of the local Ray (GPU machine: all)")
    parser.add_argument("--calibrate-image", default="320x240", help="WxH of the calibration requests' image")
    parser.add_argument("--calibrate-decode-tokens", type=int, default=64)
    parser.add_argument(
        "--calibrate-without-admission",
        action="store_true",
        help="calibrate on an app with llm.admission off (its 429s would cut the batch short), then "
        "redeploy the config as given for the rest",
    )
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    sys.path.insert(0, str(REPO / "bench"))
    from run import machine, set_dotted, shipped_ray_env, swap_model  # noqa: E402 - shared with bench/run.py

    os.environ.update(shipped_ray_env())  # before Ray starts: its processes inherit it
    import ray
    from ray import serve

    sys.path.insert(0, str(REPO))
    from serve_app.app import build_app

    document = yaml.safe_load((REPO / args.config).read_text())
    app_args = document["applications"][0]["args"]
    if args.model_path:
        swap_model(app_args, args.model_path, args.load_format or "dummy", max_model_len=args.max_model_len)
    else:
        app_args["engine"]["model"] = str(REPO / app_args["engine"]["model"])
    app_args["ingress"]["api_keys"] = [API_KEY]
    model = app_args["served_model_name"]
    pool = app_args["image_pool"].setdefault("autoscaling", {})
    if pool.get("min_replicas", 1) < 2:  # one of them is killed
        pool.update(min_replicas=2, max_replicas=max(pool.get("max_replicas", 1), 2))
    capacity = args.capacity or app_args["llm"]["max_ongoing_requests"]
    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=False)
    timeout_s = document.get("http_options", {}).get("request_timeout_s", 300)
    serve.start(http_options={"host": "127.0.0.1", "port": 8123, "request_timeout_s": timeout_s})
    started = time.monotonic()
    if args.calibrate_without_admission:
        calibrating = copy.deepcopy(app_args)
        set_dotted(calibrating, "llm.admission.max_pending_s", None)
        serve.run(build_app(calibrating), name="pixtral", route_prefix="/")
    else:
        serve.run(build_app(app_args), name="pixtral", route_prefix="/")
    url = "http://127.0.0.1:8123/v1/chat/completions"
    report: dict = {
        "config": args.config,
        "machine": {**machine(), "memory_gib": round(psutil.virtual_memory().total / 2**30)},
        "command": " ".join(sys.argv),
        "ray_env": shipped_ray_env(),
        "started_s": round(time.monotonic() - started, 1),
        "capacity": capacity,
        "llm": app_args["llm"],
    }
    out = Path(args.out)

    def save() -> None:  # after every step: a run cut short keeps what it measured
        out.write_text(json.dumps(report, indent=1) + "\n")

    print(json.dumps(report), flush=True)
    width, height = map(int, args.calibrate_image.split("x"))
    report["calibration"] = asyncio.run(
        calibrate(url, model, capacity, (width, height), args.calibrate_decode_tokens)
    )
    report["calibration"]["admission"] = "off" if args.calibrate_without_admission else "as configured"
    print(json.dumps(report["calibration"]), flush=True)
    save()
    if args.calibrate_without_admission:
        started = time.monotonic()
        serve.run(build_app(app_args), name="pixtral", route_prefix="/")
        report["redeployed_s"] = round(time.monotonic() - started, 1)
        save()
    report["overload"] = []
    for level in map(int, args.levels.split(",")):
        before = process_groups()
        result = asyncio.run(burst(url, model, level * capacity, args.max_tokens, args.client_timeout_s, 1000 * level))
        result.update(level=f"{level}x", rss_mib_before=before, rss_mib_after=process_groups())
        report["overload"].append(result)
        print(json.dumps(result), flush=True)
        save()
        time.sleep(5)

    if not args.skip_faults:
        def kill_engine_core():
            replica = replica_pid("ServeReplica:pixtral:PixtralServer")
            core = [c for c in replica.children(recursive=True) if "EngineCore" in " ".join(c.cmdline())][0]
            os.kill(core.pid, signal.SIGKILL)

        def kill_llm_replica():
            os.kill(replica_pid("ServeReplica:pixtral:PixtralServer").pid, signal.SIGKILL)

        def kill_pool_replica():
            os.kill(replica_pid("ServeReplica:pixtral:ImagePool").pid, signal.SIGKILL)

        report["faults"] = []
        for name, inject in [
            ("pool replica killed (SIGKILL)", kill_pool_replica),
            ("engine core killed (SIGKILL)", kill_engine_core),
            ("LLM replica killed (SIGKILL)", kill_llm_replica),
        ]:
            result = fault(
                name, url, model, args.steady, args.client_timeout_s, inject, after_s=10, bound_s=args.recovery_bound_s
            )
            report["faults"].append(result)
            print(json.dumps(result), flush=True)
            save()

    save()
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
