"""The one benchmark runner: a spec (YAML: which systems, which scenario, its workloads or steps)
in, a JSON out, and report.py's Markdown (and chart) beside it.

  python3 bench/run.py bench/real_traffic.yaml --out /tmp/bench/result.json   # a GPU run
  .venv/bin/python bench/run.py bench/real_traffic.yaml --dry --out /tmp/dry/result.json  # CPU, tiny model

A spec may name a ``base`` spec (its keys are the defaults; ``workloads`` join), a ``dry`` section
(merged one level down under ``--dry``: the tiny CPU model, fewer requests) and a ``scenario``:
throughput (default), ramp, reliability, ingress_memory, controller_calls, tp_check, preprocess,
hop_floor (bench/scenarios/). ``--set KEY=VALUE`` sets any dotted key of the spec (VALUE is YAML). The JSON
is rewritten after every step, so a run cut short keeps what it measured. Every wait is bounded.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
import shlex
import sys
import time
from pathlib import Path

import yaml

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]  # bench/, serve_app
import load  # noqa: E402
import report  # noqa: E402
import systems  # noqa: E402


def read_spec(path: Path) -> dict:
    """A spec file over its ``base`` (whose workloads and dry section the spec's join)."""
    spec = yaml.safe_load(path.read_text())
    if "base" not in spec:
        return spec
    base = read_spec(path.parent / spec.pop("base"))
    return {**base, **spec, **{key: {**base.get(key, {}), **spec.get(key, {})} for key in ("workloads", "dry")}}


def load_spec(path: Path, dry: bool = False, sets: list[str] = (), only_systems=None, only_workloads=None) -> dict:
    """The spec as run: its dry section over it (one level down) if ``dry``, then ``sets``, then the selection."""
    spec = read_spec(path)
    overlay = spec.pop("dry", {})
    for key, value in overlay.items() if dry else ():
        spec[key] = {**spec[key], **value} if isinstance(value, dict) and isinstance(spec.get(key), dict) else value
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set takes KEY=VALUE, got {item!r}")
        systems.set_dotted(spec, key, yaml.safe_load(value))
    if only_systems:  # run in the order given
        unknown = [name for name in only_systems if name not in spec["systems"]]
        if unknown:
            raise SystemExit(f"--systems: no such system in {path}: {', '.join(unknown)}")
        spec["systems"] = {name: spec["systems"][name] for name in only_systems}
    if only_workloads:
        spec["workloads"] = {k: v for k, v in spec["workloads"].items() if k in only_workloads}
    spec["dry_run"] = dry
    return spec


class Bench:
    """What a scenario works with: the spec, the result (saved as it grows), a work folder, the
    image store, a deadline, a progress log, and the systems to start."""

    def __init__(self, spec: dict, out: Path, deadline_s: float):
        self.spec, self.out = spec, out
        self.work = out.parent / "work"
        self.work.mkdir(parents=True, exist_ok=True)
        self.deadline = time.monotonic() + deadline_s
        self.images = load.ImageStore(self.work / "images", workers=max(1, (os.cpu_count() or 2) - 2))
        self.result: dict = {
            "scenario": spec.get("scenario", "throughput"), "date": f"{dt.date.today()}", "dry_run": spec["dry_run"],
            "machine": systems.machine(), "versions": systems.versions(), "ray_serve_env": systems.shipped_ray_env(),
            "command": shlex.join([Path(sys.executable).name, *sys.argv]), "spec": spec, "systems": {}}

    def left_s(self) -> float:
        return self.deadline - time.monotonic()

    def log(self, msg: str) -> None:
        line = f"{dt.datetime.now(dt.timezone.utc):%H:%M:%S} {msg}"
        print(line, flush=True)
        with open(self.out.parent / "progress.log", "a") as f:
            f.write(line + "\n")

    def save(self) -> None:
        tmp = self.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.result, indent=1) + "\n")
        os.replace(tmp, self.out)

    def system(self, name: str | None = None) -> systems.System:
        """A system of the spec (the only one if no name), not started; its record in the result."""
        name = name or next(iter(self.spec["systems"]))
        self.result["systems"].setdefault(name, {"kind": self.spec["systems"][name]["kind"], "workloads": {}})
        return systems.System(name, self.spec["systems"][name], self.spec.get("model"), self.work)

    def start(self, system: systems.System, limit_s: float | None = None, overrides: dict | None = None) -> float | None:
        """Start ``system`` and wait (bounded) until it answers a chat; seconds, or None (its log tail saved)."""
        record = self.result["systems"][system.name]
        record["effective_config"] = None if system.system["kind"] == "vllm" else system.app_config(overrides)
        try:
            system.start(overrides)
        except systems.InvalidConfig as exc:
            record["status"] = f"did not serve: invalid config: {exc}"
            self.log(f"{system.name}: {record['status']}")
            self.save()
            return None
        record["command"] = system.started
        limit = min(float(system.system.get("start_timeout_s", limit_s or 420)), self.left_s() - 60)
        ready = system.wait_ready(limit, self.images)
        if ready is None:
            record["status"] = "did not serve: " + (
                f"deploy failed: {system.failure}" if system.failure
                else "exited" if not system.alive() else "no successful chat in time")
            record["log_tail"] = systems.tail(system.log, 60)
        else:
            record.update(status="ok", ready_s=round(ready, 1), gpu_mem_mib=systems.gpu_mem_mib())
        self.log(f"{system.name}: {record['status']}" + (f" after {ready:.0f}s" if ready else ""))
        self.save()
        return ready

    def serve(self, system: systems.System, overrides: dict, limit_s: float = 900) -> bool:
        """``system`` serving with ``overrides``: started if it is not running, else redeployed."""
        if system.alive():
            self.log(f"{system.name}: redeployed with {overrides} in {system.deploy(overrides, limit_s):.0f}s")
            return True
        return self.start(system, limit_s, overrides) is not None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("spec", nargs="?", default=str(systems.BENCH / "real_traffic.yaml"))
    ap.add_argument("--spec", dest="spec_option", help="the same as the positional SPEC (older commands)")
    ap.add_argument("--out", required=True, help="result JSON; its .md (and .png), progress.log and work/ beside it")
    ap.add_argument("--systems", nargs="*", help="only these systems, in this order")
    ap.add_argument("--workloads", nargs="*", help="only these workloads")
    ap.add_argument("--dry", action="store_true", help="CPU dry run: the spec's dry section (tiny model, fewer requests)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a dotted key of the spec")
    ap.add_argument("--deadline-s", type=float, default=1500)
    a = ap.parse_args()
    spec = load_spec(Path(a.spec_option or a.spec), a.dry, a.set, a.systems, a.workloads)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    bench = Bench(spec, out, a.deadline_s)
    scenario = importlib.import_module(f"scenarios.{bench.result['scenario']}")
    try:
        status = scenario.run(bench)
    finally:
        bench.result["finished"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        bench.save()
        try:
            report.write(out)
        except Exception as exc:  # the JSON stands; report.py can be run on it again
            bench.log(f"report: {type(exc).__name__}: {exc}")
        bench.log("DONE")
    return status


if __name__ == "__main__":
    sys.exit(main())
