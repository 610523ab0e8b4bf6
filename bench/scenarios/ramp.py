"""Autoscaling ramp (bench/ramp.yaml): closed-loop streaming clients at rising ``levels`` until a
second LLM replica runs, ``hold_s`` more, then only ``drain_streams`` long streams while Serve scales
back to one replica, so a replica is stopped with streams in flight. Serve's status is polled all
along; each response names the LLM replica that answered. Exit status 0 only if no request failed
and both scaling steps happened in time.
"""

from __future__ import annotations

import asyncio
import time

import load
import monitors
import systems


def scaling_events(samples: list[dict]) -> dict:
    """Seconds (from load start) of the four moments of the ramp, from the status samples."""
    ev: dict[str, float | None] = dict.fromkeys(["up_decision_s", "up_running_s", "down_decision_s", "down_done_s"])
    for s in samples:
        if "states" not in s:
            continue
        if ev["up_decision_s"] is None and ("Upscaling" in s["message"] or sum(s["states"].values()) > 1):
            ev["up_decision_s"] = s["t"]
        if ev["up_decision_s"] is not None and ev["up_running_s"] is None and s["running"] >= 2:
            ev["up_running_s"] = s["t"]
        if ev["up_running_s"] is not None and ev["down_decision_s"] is None and (
                "Downscaling" in s["message"] or s["states"].get("STOPPING", 0) > 0 or s["running"] < 2):
            ev["down_decision_s"] = s["t"]
        if ev["down_decision_s"] is not None and ev["down_done_s"] is None and s["states"] == {"RUNNING": 1}:
            ev["down_done_s"] = s["t"]
    return ev


async def ramp(cfg: dict, clients: load.ClosedLoop, poller: monitors.ServeStatusPoller) -> dict:
    marks: dict[str, float] = {}

    def now() -> float:
        return round(time.time() - clients.t0, 3)

    async def wait_until(check, limit_s: float) -> bool:
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline and not check():
            await asyncio.sleep(cfg["poll_s"])
        return check()

    async with load.client_session(cfg["request_timeout_s"]) as session:
        stop_load, stop_drain = asyncio.Event(), asyncio.Event()
        workers: list[asyncio.Task] = []
        marks["load_start_s"] = now()
        for level in cfg["levels"]:
            clients.level = level
            marks[f"level_{level}_start_s"] = now()
            while len(workers) < level:
                workers.append(asyncio.create_task(clients.client(session, cfg["max_tokens"], stop_load, "ramp")))
            await asyncio.sleep(cfg["level_s"])
        marks["last_level_s"] = now()
        scaled_up = await wait_until(lambda: poller.current().get("running", 0) >= 2, cfg["scale_up_timeout_s"])
        marks["scaled_up_seen_s"] = now()
        await asyncio.sleep(cfg["hold_s"] if scaled_up else 0)
        # Scale-in: long streams keep replicas busy while Serve removes one.
        drains = [asyncio.create_task(clients.client(session, cfg["drain_max_tokens"], stop_drain, "drain"))
                  for _ in range(cfg["drain_streams"])]
        stop_load.set()
        marks["load_stop_s"] = now()
        await asyncio.gather(*workers)
        clients.level = cfg["drain_streams"]
        marks["ramp_clients_done_s"] = now()
        scaled_in = scaled_up and await wait_until(
            lambda: poller.current().get("states") == {"RUNNING": 1} and any(
                s.get("running", 0) >= 2 for s in poller.samples), cfg["scale_down_timeout_s"])
        await asyncio.sleep(cfg["poll_s"] * 2)
        stop_drain.set()
        marks["drain_stop_s"] = now()
        await asyncio.gather(*drains)
        marks["end_s"] = now()
    return {"marks": marks, "scaled_up": scaled_up, "scaled_in": bool(scaled_in)}


def timeline(records: list[dict], samples: list[dict], bucket_s: float, end_s: float) -> list[dict]:
    rows = []
    for i in range(int(end_s // bucket_s) + 1):
        lo, hi = i * bucket_s, (i + 1) * bucket_s
        done = [r for r in records if lo <= r["end"] < hi]
        ok = [r for r in done if r["ok"]]
        replicas = [s["running"] for s in samples if "running" in s and s["t"] < hi]
        rows.append({"t_s": hi, "req_per_s": round(len(ok) / bucket_s, 3),
                     "out_tok_per_s": round(sum(r["out"] for r in ok) / bucket_s, 1), "errors": len(done) - len(ok),
                     "running_replicas": replicas[-1] if replicas else None,
                     "ttft_p50_s": load.percentile([r["ttft"] for r in ok], 50)})
    return rows


def window(records: list[dict], samples: list[dict], lo: float | None, hi: float | None) -> dict | None:
    """Ramp requests that completed in [lo, hi), and the LLM replicas running meanwhile."""
    if lo is None or hi is None or hi <= lo:
        return None
    ok = [r for r in records if r["ok"] and r["phase"] == "ramp" and lo <= r["end"] < hi]
    return {"from_s": lo, "to_s": hi, "requests": len(ok), "req_per_s": round(len(ok) / (hi - lo), 3),
            "running_replicas": sorted({s["running"] for s in samples if "running" in s and lo <= s["t"] < hi}),
            "out_tok_per_s": round(sum(r["out"] for r in ok) / (hi - lo), 1),
            "ttft_p50_s": load.percentile([r["ttft"] for r in ok], 50),
            "ttft_p99_s": load.percentile([r["ttft"] for r in ok], 99)}


def replicas_seen(records: list[dict], events: dict) -> dict:
    """Per LLM replica (``X-Pixtral-Replica``): requests, first/last completion; which one was
    stopped, and how the streams it had in flight when Serve began to stop it ended."""
    per: dict[str, dict] = {}
    for r in records:
        if r.get("replica"):
            seen = per.setdefault(r["replica"], {"requests": 0, "first_end_s": r["end"], "last_end_s": r["end"]})
            seen.update(requests=seen["requests"] + 1, first_end_s=min(seen["first_end_s"], r["end"]),
                        last_end_s=max(seen["last_end_s"], r["end"]))
    out: dict = {"replicas": per, "stopped": None}
    stop_t, answered = events["down_decision_s"], [r for r in records if r.get("replica")]
    if stop_t is None or not answered:
        return out
    # The last request sent went to the replica that stays (Serve routes nothing new to a stopping
    # one); with at most two replicas, the other one is the stopped replica.
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


def summary(cfg: dict, records: list[dict], samples: list[dict], events: dict, marks: dict) -> dict:
    failed, top = [r for r in records if not r["ok"]], cfg["levels"][-1]
    starts = [marks[f"level_{c}_start_s"] for c in cfg["levels"]] + [marks["load_stop_s"]]
    return {
        "requests": len(records), "ramp_requests": sum(r["phase"] == "ramp" for r in records),
        "drain_requests": sum(r["phase"] == "drain" for r in records), "failed": len(failed),
        "retried_429": sum(1 for r in records if r.get("retries_429")),
        "first_error": failed[0] if failed else None, "top_level": top,
        "up_decision_to_running_s": None if None in (events["up_decision_s"], events["up_running_s"])
        else round(events["up_running_s"] - events["up_decision_s"], 2),
        "levels": [{"concurrency": level, **(window(records, samples, lo, hi) or {})}
                   for level, lo, hi in zip(cfg["levels"], starts, starts[1:])],
        "top_level_one_replica": window(records, samples, marks[f"level_{top}_start_s"],
                                        events["up_running_s"] or marks["load_stop_s"]),
        "top_level_two_replicas": window(records, samples, events["up_running_s"], marks["load_stop_s"]),
        "drain_streams_in_flight_at_down_decision": None if events["down_decision_s"] is None else sum(
            1 for r in records if r["phase"] == "drain" and r["start"] <= events["down_decision_s"] < r["end"]),
        "llm_replicas": replicas_seen(records, events)}


def run(bench) -> int:
    cfg, system = bench.spec["ramp"], bench.system()
    scaling = system.app_config()["applications"][0]["args"]["llm"].get("autoscaling", {})
    if scaling.get("min_replicas", 1) != 1 or scaling.get("max_replicas", 1) != 2:
        raise SystemExit("ramp: llm.autoscaling must end up with min_replicas 1 and max_replicas 2")
    wanted = [(cfg["image_size"], 7_000_000 + i) for i in range(cfg["images"])]
    warm = [load.Conversation([(cfg["image_size"], 6_000_000 + i)]) for i in range(4)]
    bench.images.ensure(wanted + [c.images[0] for c in warm])
    data = bench.result
    data.update(tag=bench.out.stem, config_file=system.system["config"], overrides=system.system.get("overrides"),
                llm_autoscaling=scaling, settings=cfg)
    poller = None
    try:
        if bench.start(system, cfg["start_timeout_s"]) is None:
            return 1
        # A few requests before the clock starts (first-request paths, pool warm-up).
        data["warmup"] = asyncio.run(load.run_conversations(
            systems.URL, system.served_name, warm, bench.images, concurrency=2,
            request={"max_tokens": cfg["max_tokens"], "ignore_eos": True}, api_key=systems.API_KEY,
            timeout_s=cfg["request_timeout_s"]))
        t0 = time.time()
        poller = monitors.ServeStatusPoller(systems.DASHBOARD, "pixtral", "PixtralServer", t0, cfg["poll_s"])
        poller.start()
        clients = load.ClosedLoop(systems.URL, system.served_name, [bench.images.data_url(*w) for w in wanted],
                                  systems.API_KEY, t0, cfg["max_retries"])
        result = asyncio.run(ramp(cfg, clients, poller))
    finally:
        if poller is not None:
            poller.stop.set()
            poller.join(timeout=10)
        system.stop()
    records, marks = clients.records, result["marks"]
    events = scaling_events(poller.samples)
    data.update(marks=marks, events=events, scaled_up=result["scaled_up"], scaled_in=result["scaled_in"],
                status_samples=poller.samples,
                requests={"fields": ["phase", "start_s", "end_s", "ok", "ttft_s", "out_tokens", "replica", "error"],
                          "rows": [[r["phase"], r["start"], r["end"], r["ok"], None if r.get("ttft") is None
                                    else round(r["ttft"], 3), r.get("out"), r.get("replica"), r.get("err")]
                                   for r in records]},
                timeline=timeline(records, poller.samples, cfg["bucket_s"], marks["end_s"]),
                summary=summary(cfg, records, poller.samples, events, marks))
    bench.log(f"ramp: events {events}; failed {data['summary']['failed']} of {len(records)}")
    return 0 if not data["summary"]["failed"] and result["scaled_up"] and result["scaled_in"] else 1
