"""What the benchmarks watch while load runs: GPUs (nvidia-smi), CPU seconds and RSS per process
group of the system under test, and Serve's view of a deployment's replicas."""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
import urllib.request
from collections import Counter

import psutil

_PID_SUFFIX = re.compile(r"[_\-]?\d+$")
_PROGRAMS = (("vllm.entrypoints", "vllm-serve-main"), ("raylet", "raylet"), ("gcs_server", "gcs_server"),
             ("serve run", "serve-driver"), ("ray.serve.scripts", "serve-driver"), ("dashboard", "ray-dashboard"),
             ("runtime_env", "ray-runtime-env-agent"), ("log_monitor", "ray-log-monitor"))


def process_group(cmdline: list[str], name: str) -> str:
    """Ray's/vLLM's process title (ray::ServeReplica:pixtral:PixtralServer, VLLM::EngineCore), else the
    program.
    Without the method an actor runs: Ray titles it ``ray::Class.method`` meanwhile, so a busy replica
    would not be found by its title (reliability's faults) and its CPU would count as another group."""
    first = cmdline[0] if cmdline else name
    if first.startswith(("ray::", "VLLM::")):
        return _PID_SUFFIX.sub("", first.split()[0].split(".")[0])
    joined = " ".join(cmdline)
    return next((label for key, label in _PROGRAMS if key in joined), name or "?")


def processes(sessions: set[int]) -> dict[int, tuple[str, float, float, float]]:
    """pid -> (process group, create time, CPU seconds, RSS MiB) of every live process of ``sessions``."""
    snap = {}
    for p in psutil.process_iter(["pid", "name", "cmdline", "cpu_times", "create_time", "memory_info"]):
        try:
            if os.getsid(p.info["pid"]) not in sessions or p.info["cpu_times"] is None:
                continue
        except OSError:
            continue
        ct = p.info["cpu_times"]
        snap[p.info["pid"]] = (process_group(p.info["cmdline"] or [], p.info["name"] or ""), p.info["create_time"] or 0.0,
                               ct.user + ct.system, (p.info["memory_info"].rss if p.info["memory_info"] else 0) / 2**20)
    return snap


def rss_mib(sessions: set[int]) -> dict[str, int]:
    groups: Counter = Counter()
    for label, _, _, rss in processes(sessions).values():
        groups[label] += rss
    return {k: round(v) for k, v in sorted(groups.items())}


class ProcessWatch:
    """CPU seconds per process group between start and stop, and the peak RSS of each group
    (sampled every ``interval_s`` on a thread; None: no sampling, CPU only)."""

    def __init__(self, sessions: set[int], interval_s: float | None = 0.02):
        self.sessions, self.interval_s = sessions, interval_s
        self.peak: Counter = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            for key, value in rss_mib(self.sessions).items():
                self.peak[key] = max(self.peak[key], value)

    def start(self) -> "ProcessWatch":
        self._wall0, self._t0 = time.monotonic(), processes(self.sessions)
        self.idle_rss_mib = rss_mib(self.sessions)
        if self.interval_s:
            self._thread.start()
        return self

    def stop(self, requests: int) -> dict:
        self._stop.set()
        if self.interval_s:
            self._thread.join(timeout=5)
        groups: Counter = Counter()
        for pid, (label, created, cpu, _) in processes(self.sessions).items():
            before = self._t0.get(pid)
            groups[label] += max(0.0, cpu - (before[2] if before and abs(before[1] - created) < 1e-3 else 0.0))
        return {"wall_s": round(time.monotonic() - self._wall0, 2),
                "cpu_s": {k: round(v, 2) for k, v in groups.most_common() if v >= 0.01},
                "cpu_ms_per_request": {k: round(1000 * v / max(1, requests), 1) for k, v in groups.most_common()
                                       if v >= 0.01},
                "idle_rss_mib": self.idle_rss_mib, "peak_rss_mib": dict(sorted(self.peak.items()))}


class GpuSampler:
    """``nvidia-smi -lms N`` in the background: busy % and memory per GPU, and the mean busy % (None without GPUs)."""

    def __init__(self, interval_ms: int = 500):
        self.interval_ms, self._proc, self.samples = interval_ms, None, []

    def start(self) -> "GpuSampler":
        try:
            self._proc = subprocess.Popen(["nvidia-smi", "--query-gpu=index,utilization.gpu,memory.used",
                                           "--format=csv,noheader,nounits", "-lms", str(self.interval_ms)],
                                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            threading.Thread(target=lambda: self.samples.extend(line.split(",") for line in self._proc.stdout),
                             daemon=True).start()
        except OSError:  # no GPU: a CPU dry run
            self._proc = None
        return self

    def stop(self) -> dict | None:
        if self._proc is None:
            return None
        self._proc.terminate()
        self._proc.wait(timeout=10)
        per_gpu: dict[str, list[tuple[float, float]]] = {}
        for index, util, mem in (s for s in self.samples if len(s) == 3):
            per_gpu.setdefault(index.strip(), []).append((float(util), float(mem)))
        busy = [u for samples in per_gpu.values() for u, _ in samples]
        return {"gpu_busy_mean_pct": round(sum(busy) / len(busy), 1), "samples": len(busy), "per_gpu": {
            index: {"util_mean_pct": round(sum(u for u, _ in s) / len(s), 1),
                    "busy_fraction": round(sum(u > 0 for u, _ in s) / len(s), 3),
                    "memory_used_mib_max": max(m for _, m in s)} for index, s in per_gpu.items()}} if busy else None


class ServeStatusPoller(threading.Thread):
    """Samples one deployment's status from the Ray dashboard (what ``serve status`` reads); keeps
    every change and one sample per ``keep_s``."""

    def __init__(self, dashboard: str, app: str, deployment: str, t0: float, interval_s: float, keep_s: float = 5.0):
        super().__init__(daemon=True)
        self.dashboard, self.app, self.deployment = dashboard, app, deployment
        self.t0, self.interval_s, self.keep_s = t0, interval_s, keep_s
        self.samples: list[dict] = []
        self.stop = threading.Event()

    def current(self) -> dict:
        return self.samples[-1] if self.samples else {}

    def run(self) -> None:
        from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

        client, last_key, last_t = None, None, -1e9
        while not self.stop.wait(self.interval_s):
            try:
                client = client or ServeSubmissionClient(self.dashboard)
                d = client.get_serve_details()["applications"][self.app]["deployments"][self.deployment]
            except Exception as exc:  # status is best effort; the scenario itself decides pass/fail
                sample = {"t": round(time.time() - self.t0, 3), "error": f"{type(exc).__name__}: {exc}"[:200]}
            else:
                states = dict(Counter(r["state"] for r in d["replicas"]))
                sample = {"t": round(time.time() - self.t0, 3), "status": d["status"],
                          "trigger": d.get("status_trigger"), "message": d["message"], "states": states,
                          "running": states.get("RUNNING", 0)}
            key = json.dumps({k: v for k, v in sample.items() if k != "t"}, sort_keys=True)
            if key != last_key or sample["t"] - last_t >= self.keep_s:
                self.samples.append(sample)
                last_key, last_t = key, sample["t"]


class EngineStats:
    """vLLM's own request stats from a `vllm serve`'s /metrics, to set beside our engine split:
    the mean queue, prefill and server-side TTFT over a measured part (its histograms' sums and
    counts, differenced; their buckets are too coarse for a p50 of milliseconds)."""

    NAMES = {"vllm:request_queue_time_seconds": "engine-queue", "vllm:request_prefill_time_seconds": "engine-prefill",
             "vllm:time_to_first_token_seconds": "server-ttft"}

    def __init__(self, url: str):
        self.url = url + "/metrics"

    def _read(self) -> dict[str, float]:
        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(self.url, timeout=10) as resp:
            text = resp.read().decode()
        totals: Counter = Counter()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:  # summed over labels: one engine, several API servers
                base, _, kind = sample.name.rpartition("_")
                if base in self.NAMES and kind in ("sum", "count"):
                    totals[(base, kind)] += sample.value
        return totals

    def start(self) -> "EngineStats":
        self._t0 = self._read()
        return self

    def stop(self) -> dict[str, float | None]:
        t1 = self._read()
        out = {}
        for base, label in self.NAMES.items():
            n = t1[(base, "count")] - self._t0[(base, "count")]
            out[label] = round(1000 * (t1[(base, "sum")] - self._t0[(base, "sum")]) / n, 3) if n else None
        return out
