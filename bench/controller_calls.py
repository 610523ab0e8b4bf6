"""Calls on Serve's controller per second from the running app, at 1 and at 8 ingress replicas.

The app is config.cpu.yaml on a local Ray (tiny model, one LLM replica); only the ingress
replica count changes between the two measurements (the engine is not restarted). Calls are
counted from Ray's task events of the controller actor (``RAY_SERVE_ENABLE_TASK_EVENTS=1`` for
this run only; Serve leaves them off by default), by method, over an idle window after the
replicas have settled. Run it on two checkouts to compare code versions:

    .venv/bin/python bench/controller_calls.py --out bench/results/DATE-cpu-controller-calls.json
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
STATUS_CALL = "ServeController.get_serve_instance_details"  # what serve.status() calls


def controller_calls() -> collections.Counter:
    from ray.util.state import list_tasks

    tasks = list_tasks(filters=[("type", "=", "ACTOR_TASK")], limit=10_000, raise_on_missing_output=False)
    return collections.Counter(task.name for task in tasks if task.name.startswith("ServeController."))


def running(app: str, deployment: str) -> int:
    from ray import serve

    return serve.status().applications[app].deployments[deployment].replica_states.get("RUNNING", 0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ingress-replicas", default="1,8")
    parser.add_argument("--window-s", type=float, default=30)
    parser.add_argument("--num-cpus", type=int, default=8)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    sys.path.insert(0, str(REPO / "bench"))
    from run import machine, record_run, set_dotted, shipped_ray_env  # noqa: E402

    os.environ.update(shipped_ray_env())
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ["RAY_SERVE_ENABLE_TASK_EVENTS"] = "1"
    import ray
    from ray import serve

    sys.path.insert(0, str(REPO))
    from serve_app.app import build_app

    document = yaml.safe_load((REPO / "config.cpu.yaml").read_text())
    app_args = document["applications"][0]["args"]
    app_args["engine"]["model"] = str(REPO / app_args["engine"]["model"])
    set_dotted(app_args, "ingress.num_cpus", 0.1)
    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=True,  # the state API needs it
             _node_ip_address="127.0.0.1",
             log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": 8125})
    report: dict = {"machine": machine(), "command": " ".join(sys.argv), "window_s": args.window_s, "runs": []}
    try:
        for replicas in (int(n) for n in args.ingress_replicas.split(",")):
            set_dotted(app_args, "ingress.autoscaling", {"min_replicas": replicas, "max_replicas": replicas})
            serve.run(build_app(app_args), name="pixtral", route_prefix="/")
            while running("pixtral", "OpenAIIngress") != replicas:
                time.sleep(1)
            time.sleep(10)  # the replicas' start-up calls are over
            before = controller_calls()
            time.sleep(args.window_s)
            after = controller_calls()
            calls = {name: after[name] - before[name] for name in after if after[name] > before[name]}
            run = {
                "ingress_replicas": replicas,
                "calls_per_s": round(sum(calls.values()) / args.window_s, 2),
                "status_calls_per_s": round(calls.get(STATUS_CALL, 0) / args.window_s, 2),
                "by_method": dict(sorted(calls.items(), key=lambda item: -item[1])),
            }
            record_run(report, run, args.out)
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
