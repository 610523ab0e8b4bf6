"""Calls on Serve's controller per second from the running app, at each of ``ingress_replicas``.

Only the ingress replica count changes between measurements (a redeploy: the engine is not
restarted). Calls are counted from Ray's task events of the controller actor (the system's env sets
``RAY_SERVE_ENABLE_TASK_EVENTS=1``; Serve leaves them off by default), by method, over an idle
window of ``window_s`` after the replicas have settled.
"""

from __future__ import annotations

import time
from collections import Counter

import systems

STATUS_CALL = "ServeController.get_serve_instance_details"  # what serve.status() calls


def controller_calls() -> Counter:
    from ray.util.state import list_tasks

    tasks = list_tasks(address=systems.DASHBOARD, filters=[("type", "=", "ACTOR_TASK")], limit=10_000,
                       raise_on_missing_output=False)
    return Counter(task.name for task in tasks if task.name.startswith("ServeController."))


def running_ingress_replicas() -> int:
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    app = ServeSubmissionClient(systems.DASHBOARD).get_serve_details()["applications"]["pixtral"]
    return sum(r["state"] == "RUNNING" for r in app["deployments"]["OpenAIIngress"]["replicas"])


def run(bench) -> int:
    cfg, system, report = bench.spec["controller_calls"], bench.system(), bench.result
    report["runs"] = []
    try:
        for replicas in cfg["ingress_replicas"]:
            if not bench.serve(system, {"ingress.autoscaling": {"min_replicas": replicas, "max_replicas": replicas}}):
                return 1
            end = time.monotonic() + 300
            while running_ingress_replicas() != replicas and time.monotonic() < end:
                time.sleep(1)
            time.sleep(10)  # the replicas' start-up calls are over
            before = controller_calls()
            time.sleep(cfg["window_s"])
            after = controller_calls()
            calls = {name: after[name] - before[name] for name in after if after[name] > before[name]}
            report["runs"].append({"ingress_replicas": replicas,
                                   "calls_per_s": round(sum(calls.values()) / cfg["window_s"], 2),
                                   "status_calls_per_s": round(calls.get(STATUS_CALL, 0) / cfg["window_s"], 2),
                                   "by_method": dict(sorted(calls.items(), key=lambda item: -item[1]))})
            bench.save()
    finally:
        system.stop()
    return 0
