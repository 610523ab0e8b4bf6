"""Ingress memory under a flood of big bodies: peak RSS of each process group (the OpenAIIngress
replica's is the figure) while ``clients`` clients each send one body of about ``body_mib`` MiB at
once, with the in-flight body budget (``ingress.max_inflight_body_bytes``) at each of ``budgets_mib``.

Each body is a valid chat request for a model the app does not serve, made big by its text: the
ingress reads, copies and parses it and answers 400 model_not_found, so the figure is what holding
and parsing bodies costs, with no image or engine work.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import load
import monitors
import systems

OFF = 1 << 40  # a budget no flood reaches: the ingress as it was before the budget


def run(bench) -> int:
    cfg, system, report = bench.spec["ingress_memory"], bench.system(), bench.result
    report["runs"] = []
    try:
        app = system.app_config()["applications"][0]["args"]
        size = min(int(cfg["body_mib"] * 2**20), app["ingress"].get("max_request_bytes", 16 * 2**20)) - 1024
        body = json.dumps({"model": "not-served", "messages": [{"role": "user", "content": "x" * (size - 200)}]}).encode()
        report.update(clients=cfg["clients"], body_bytes=len(body))
        for budget in cfg["budgets_mib"]:
            if not bench.serve(system, {"ingress.max_inflight_body_bytes": OFF if budget == "off" else
                                        int(float(budget) * 2**20)}):
                return 1
            watch = monitors.ProcessWatch(system.sessions).start()
            results, wall, _ = asyncio.run(load.send_at_once(systems.URL, [body] * cfg["clients"], systems.API_KEY, 280))
            statuses = Counter(f"{r.get('status', 200)} {r.get('retry_after') or ''}".strip() for r in results)
            report["runs"].append({"budget_mib": budget, "statuses": dict(statuses), "wall_s": round(wall, 1),
                                   **watch.stop(cfg["clients"])})
            bench.save()
    finally:
        system.stop()
    return 0
