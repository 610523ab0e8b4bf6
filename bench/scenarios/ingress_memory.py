"""Ingress memory under a flood of big bodies: peak RSS of the OpenAIIngress replica while
``clients`` clients each send one body of about ``body_mib`` MiB at once, with the in-flight body
budget (``ingress.max_inflight_body_bytes``) at each of ``budgets_mib`` (off: none).

Each body is a valid chat request for a model the app does not serve, made big by its text: the
ingress reads, copies and parses it and answers 400 model_not_found, so the figure is what holding
and parsing bodies costs, with no image or engine work.

With ``images`` (e.g. [1024x768, photo]): a burst of ``clients`` chat requests at once per image
kind, one image of its own each, every request admitted (admission's bound lifted): peak RSS and
CPU seconds of each replica, latency and Server-Timing stages. A system's ``app_root`` deploys the
serve_app of another checkout (e.g. ``git archive main``), for before/after.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import load
import monitors
import systems

OFF = 1 << 40  # a budget no flood reaches: the ingress as it was before the budget


def image_burst(bench, system: systems.System, spec: str, clients: int, seed_base: int) -> dict:
    convs = load.conversations({"kind": "single", "image": spec, "requests": clients}, seed_base)
    bench.images.ensure([image for conv in convs for image in conv.images])
    watch = monitors.ProcessWatch(system.sessions).start()
    result = asyncio.run(load.run_conversations(
        systems.URL, system.served_name, convs, bench.images, concurrency=clients,
        request={"max_tokens": 4, "ignore_eos": True}, api_key=systems.API_KEY, timeout_s=280))
    return {"image": spec, "clients": clients, **watch.stop(result["ok"]),
            "image_url_bytes_total": sum(len(bench.images.data_url(s, n)) for c in convs for s, n in c.images),
            **{k: result[k] for k in ("ok", "errors", "first_error", "wall_s", "ttft_p50_s", "ttft_p99_s",
                                      "e2e_p50_s", "e2e_p99_s", "stages_p50_ms")}}


def run(bench) -> int:
    cfg, system, report = bench.spec["ingress_memory"], bench.system(), bench.result
    report["runs"] = []
    try:
        if cfg.get("images"):
            if bench.start(system, 900, {"llm.admission.max_pending_s": 3600}) is None:  # the path, not shedding
                return 1
            for index, spec in enumerate(cfg["images"]):
                report["runs"].append(image_burst(bench, system, spec, cfg["clients"], 1000 * (index + 1)))
                bench.save()
            return 0
        app = system.app_config()["applications"][0]["args"]
        size = min(int(cfg["body_mib"] * 2**20), app["ingress"].get("max_request_bytes", 16 * 2**20)) - 1024
        body = json.dumps({"model": "not-served", "messages": [{"role": "user", "content": "x" * (size - 200)}]}).encode()
        report.update(clients=cfg["clients"], body_bytes=len(body))
        for index, budget in enumerate(cfg["budgets_mib"]):
            step = {"ingress.max_inflight_body_bytes": OFF if budget == "off" else int(float(budget) * 2**20)}
            if index == 0 and bench.start(system, 900, step) is None:
                return 1
            if index:
                system.deploy(step)
            watch = monitors.ProcessWatch(system.sessions).start()
            results, wall, _ = asyncio.run(load.send_at_once(systems.URL, [body] * cfg["clients"], systems.API_KEY, 280))
            statuses = Counter(f"{r.get('status', 200)} {r.get('retry_after') or ''}".strip() for r in results)
            report["runs"].append({"budget_mib": budget, "statuses": dict(statuses), "wall_s": round(wall, 1),
                                   **watch.stop(cfg["clients"])})
            bench.save()
    finally:
        system.stop()
    return 0
