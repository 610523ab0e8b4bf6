"""Workloads (real_traffic.yaml) against every system of the spec, one system after another on
this machine: start it, wait until a chat with an image succeeds, then per workload a warm-up and
the measured part with GPU and CPU monitors; ``startup`` workloads restart the system (warm caches)."""

from __future__ import annotations

import asyncio
import threading

import load
import monitors
import systems


def dry_scaled(spec: dict) -> None:
    """The dry run's workloads: requests divided by ``dry_scale``, concurrency capped at ``dry_concurrency``."""
    for wl in spec["workloads"].values():
        for key in ("requests", "conversations"):
            if key in wl:
                wl[key] = max(2, wl[key] // spec.get("dry_scale", 16))
        wl["concurrency"] = min(wl.get("concurrency", 1), spec.get("dry_concurrency", 8))
        wl["turns"] = min(wl.get("turns", 1), 3)
        for entry in wl.get("mix", []):
            entry["images"] = entry["images"][:2]


def plan(spec: dict, name: str) -> tuple[list[load.Conversation], list[load.Conversation]]:
    """(warm-up, measured) conversations; seeds disjoint per workload, the same for every system."""
    wl, warmup = spec["workloads"][name], spec["request"]["warmup"]
    seed = 1_000_000 * (1 + list(spec["workloads"]).index(name))
    warm = load.conversations({**wl, "requests": warmup, "conversations": max(1, warmup // wl.get("turns", 1))},
                              seed + 500_000)
    return warm, load.conversations(wl, seed)


def run_workload(bench, system: systems.System, name: str) -> dict:
    spec, wl = bench.spec, bench.spec["workloads"][name]
    warm, convs = plan(spec, name)
    # client_port (of the workload, which run_system gives our systems only, or of the system): send the
    # load elsewhere than Serve's proxy, e.g. to the first ingress replica's own port under direct ingress
    url = f"http://127.0.0.1:{wl.get('client_port') or system.system.get('client_port', systems.PORT)}"
    limit = max(30.0, min(600.0, bench.left_s() - 20))
    kw = dict(concurrency=wl["concurrency"], request=spec["request"], api_key=systems.API_KEY, timeout_s=limit,
              extra_body=wl.get("body"))
    warm_r = asyncio.run(load.run_conversations(url, system.served_name, warm, bench.images, **kw)) if warm \
        else {"requests": 0, "ok": 0, "errors": 0, "first_error": None}
    # CPU seconds per process group; peak RSS too if the spec asks (a sweep of every process each time)
    watch = monitors.ProcessWatch(system.sessions, interval_s=spec["request"].get("rss_sample_s"))
    gpu, watch = monitors.GpuSampler().start(), watch.start()
    # one user on `vllm serve`: its engine's own queue and prefill times, beside our Server-Timing split
    stats = monitors.EngineStats(url).start() if system.system["kind"] == "vllm" and wl["concurrency"] == 1 else None
    r = asyncio.run(load.run_conversations(url, system.served_name, convs, bench.images, **kw))
    r.update(gpu=gpu.stop(), cpu=watch.stop(r["ok"]), concurrency=wl["concurrency"],
             engine_stats_mean_ms=stats.stop() if stats else None,
             warmup={k: warm_r[k] for k in ("requests", "ok", "errors", "first_error")})
    return r


def run_system(bench, name: str) -> None:
    system = bench.system(name)
    res = bench.result["systems"][name]
    if bench.left_s() < 120:
        res["status"] = f"skipped: {bench.left_s():.0f}s left"
        return
    try:
        if bench.start(system) is None:
            return
        for wl_name, wl in bench.spec["workloads"].items():
            if wl_name not in system.system.get("workloads", [wl_name]):  # the system runs only these
                continue
            if bench.left_s() < 30:
                res["workloads"][wl_name] = {"skipped": "deadline"}
            elif "client_port" in wl and system.system["kind"] != "ours":  # a port of our ingress replicas
                res["workloads"][wl_name] = {"skipped": "ours only"}
            elif wl["kind"] == "startup":  # seconds to the first answered chat again, now with warm caches
                system.stop()
                system.start()
                ready = system.wait_ready(min(float(system.system.get("start_timeout_s", 420)), bench.left_s() - 60),
                                          bench.images)
                res["workloads"][wl_name] = {"ready_s": round(ready, 1), "errors": 0} if ready is not None else {
                    "ready_s": None, "errors": 1, "first_error": "no successful chat request in time"}
            else:
                r = res["workloads"][wl_name] = run_workload(bench, system, wl_name)
                bench.log(f"{name} {wl_name}: {r['req_per_s']} req/s, TTFT p50 {r['ttft_p50_s']} s, later turns "
                          f"{r.get('ttft_p50_later_turns_s')}, errors {r['errors']} {r['first_error'] or ''}")
            bench.save()
    finally:
        system.stop()
        res.setdefault("log_tail", systems.tail(system.log, 30))


def run(bench) -> int:
    if bench.spec["dry_run"]:
        dry_scaled(bench.spec)
    wanted = [img for name, wl in bench.spec["workloads"].items() if wl["kind"] != "startup"
              for c in sum(plan(bench.spec, name), []) for img in c.images]
    # In a thread of its own, bounded: the images' spawned workers must not outlive the deadline.
    images = threading.Thread(target=bench.images.ensure, args=(wanted,), daemon=True)
    images.start()
    images.join(timeout=max(1.0, bench.left_s()))
    bench.log(f"images: {len(set(wanted))} ready")
    for name in bench.spec["systems"]:
        run_system(bench, name)
    return 0
