"""Overload and faults (bench/reliability.yaml): the engine's prefill and decode rates (for
llm.admission; with admission off if ``calibrate_without_admission``, then redeployed as configured),
non-streaming bursts of ``levels`` x ``capacity`` requests at once, then a pool replica, the engine
core and the LLM replica killed (SIGKILL) under ``steady`` clients: failures and time to recover.
"""

from __future__ import annotations

import asyncio
import collections
import os
import re
import signal
import time

import load
import monitors
import systems


def burst(bench, model: str, n: int, max_tokens: int, timeout_s: float, seed: int, size: str):
    """``n`` non-streaming requests at once, one image of its own each: (results, wall s, client CPU s)."""
    bench.images.ensure([(size, seed + i) for i in range(n)])
    bodies = [load.chat_body(model, [bench.images.data_url(size, seed + i)], max_tokens, stream=False)
              for i in range(n)]
    return asyncio.run(load.send_at_once(systems.URL, bodies, systems.API_KEY, timeout_s))


def overload(bench, model: str, level: int, capacity: int, cfg: dict) -> dict:
    results, wall, client_cpu = burst(bench, model, level * capacity, cfg["max_tokens"], cfg["client_timeout_s"],
                                      1000 * level, cfg["image"])
    admitted = [r["e2e"] for r in results if r["ok"]]
    refused = [r for r in results if r.get("status") == 429]
    by_refusal = collections.defaultdict(list)  # who refused: the message says
    for r in refused:
        by_refusal[re.sub(r"\d+", "N", r["err"])[:60]].append(r["e2e"])
    return {"requests": len(results), "statuses": dict(collections.Counter(str(r.get("status", 200)) for r in results)),
            "wall_s": round(wall, 1), "client_cpu_s": round(client_cpu, 1),
            "admitted_p50_s": load.percentile(admitted, 50), "admitted_p99_s": load.percentile(admitted, 99),
            **{f"refused_p{p}_s": load.percentile([r["e2e"] for r in refused], p) for p in (50, 90, 99)},
            "refused_max_s": round(max(r["e2e"] for r in refused), 2) if refused else None,
            "retry_after_values": dict(collections.Counter(r["retry_after"] for r in refused)),
            "refusals": {message: {"count": len(times), "p50_s": load.percentile(times, 50), "max_s": round(max(times), 2)}
                         for message, times in by_refusal.items()}}


def calibrate(bench, model: str, n: int, cfg: dict) -> dict:
    """Prefill tokens/s (max_tokens 1), then decode tokens/s (``ignore_eos``, the same prompts
    again, so they hit the prefix cache: mostly decode), at ``n`` clients."""
    prefill, prefill_s, _ = burst(bench, model, n, 1, 300, 900, cfg["calibrate_image"])
    decode, decode_s, _ = burst(bench, model, n, cfg["calibrate_decode_tokens"], 600, 900, cfg["calibrate_image"])
    return {"clients": n, "image": cfg["calibrate_image"], "decode_tokens_per_request": cfg["calibrate_decode_tokens"],
            "statuses": dict(collections.Counter(str(r.get("status", 200)) for r in prefill + decode)),
            "prompt_tokens_per_request": sum(r["prompt"] for r in prefill if r["ok"]) // max(1, n),
            "prefill_tokens_per_s": round(sum(r["prompt"] for r in prefill if r["ok"]) / prefill_s),
            "decode_tokens_per_s": round(sum(r["out"] for r in decode if r["ok"]) / decode_s)}


def kill(sessions: set[int], group: str, child: str | None = None) -> None:
    """SIGKILL to the first process of ``group`` (a process title), or to its descendant named ``child``."""
    pid = next(pid for pid, (label, *_) in monitors.processes(sessions).items() if label.endswith(group))
    if child:
        import psutil

        pid = next(c.pid for c in psutil.Process(pid).children(recursive=True) if child in " ".join(c.cmdline()))
    os.kill(pid, signal.SIGKILL)


async def fault(bench, system: systems.System, name: str, inject, cfg: dict) -> dict:
    """``steady`` clients (8-token requests); inject; wait for the first success after the last
    failure (bounded), keep the load 10 s more."""
    t0 = time.time()
    clients = load.ClosedLoop(systems.URL, system.served_name, [bench.images.data_url(cfg["image"], 10_000 + i)
                                                                for i in range(64)], systems.API_KEY, t0, max_retries=0)
    stop = asyncio.Event()
    async with load.client_session(cfg["client_timeout_s"]) as session:
        tasks = [asyncio.create_task(clients.client(session, 8, stop, "steady", stream=False, pause_after_failure_s=0.5))
                 for _ in range(cfg["steady"])]
        await asyncio.sleep(5)
        injected = time.time() - t0
        try:
            inject()
        except (StopIteration, OSError) as exc:
            stop.set()
            await asyncio.gather(*tasks)
            return {"fault": name, "not_injected": f"{type(exc).__name__}: {exc}"}
        recovered, deadline = None, time.monotonic() + cfg["recovery_bound_s"]
        while recovered is None and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            after = [r for r in clients.records if r["end"] > injected]
            last_failure = max((r["end"] for r in after if not r["ok"]), default=None)
            ok = [r["end"] for r in after
                  if r["ok"] and r["end"] > injected + 1 and (last_failure is None or r["end"] > last_failure)]
            recovered = min(ok) - injected if ok else None
        await asyncio.sleep(10 if recovered is not None else 0)
        stop.set()
        await asyncio.gather(*tasks)
    after = [r for r in clients.records if r["end"] > injected]
    failed_s = [r["e2e"] for r in clients.records if not r["ok"]]
    return {"fault": name, "requests_after_fault": len(after),
            "statuses_after_fault": dict(collections.Counter(str(r.get("status", 200)) for r in after)),
            "failed": sum(not r["ok"] for r in after), "failed_answer_p50_s": load.percentile(failed_s, 50),
            "failed_answer_max_s": round(max(failed_s), 2) if failed_s else None,
            "seconds_to_first_success_after_last_failure": round(recovered, 1) if recovered is not None else None}


def run(bench) -> int:
    cfg, system, report = bench.spec["reliability"], bench.system(), bench.result
    app = system.app_config()["applications"][0]["args"]
    capacity = cfg.get("capacity") or app["llm"]["max_ongoing_requests"]
    report.update(capacity=capacity, llm=app["llm"])
    bench.images.ensure([(cfg["image"], 10_000 + i) for i in range(64)])
    try:
        calibrating = {"llm.admission.max_pending_s": None} if cfg["calibrate_without_admission"] else {}
        if not bench.serve(system, calibrating, 1800):
            return 1
        report["calibration"] = {**calibrate(bench, system.served_name, capacity, cfg),
                                 "admission": "off" if calibrating else "as configured"}
        bench.log(f"calibration: {report['calibration']}")
        if calibrating and not bench.serve(system, {}):
            return 1
        report["overload"] = []
        for level in cfg["levels"]:
            before = monitors.rss_mib(system.sessions)
            result = overload(bench, system.served_name, level, capacity, cfg)
            result.update(level=f"{level}x", rss_mib_before=before, rss_mib_after=monitors.rss_mib(system.sessions))
            report["overload"].append(result)
            bench.log(f"overload {level}x: {result['statuses']}")
            bench.save()
            time.sleep(5)
        report["faults"] = []
        for name, group, child in [("pool replica killed (SIGKILL)", ":ImagePool", None),
                                   ("engine core killed (SIGKILL)", ":PixtralServer", "EngineCore"),
                                   ("LLM replica killed (SIGKILL)", ":PixtralServer", None)][:3 if cfg["faults"] else 0]:
            result = asyncio.run(fault(bench, system, name, lambda: kill(system.sessions, group, child), cfg))
            report["faults"].append(result)
            bench.log(f"{name}: {result}")
            bench.save()
    finally:
        system.stop()
    return 0
