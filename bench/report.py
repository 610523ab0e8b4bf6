"""bench/run.py's JSON -> a Markdown report and a chart beside it.

  .venv/bin/python bench/report.py RESULT.json --out bench/results/2026-12-02-h200-real-traffic
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

OURS = "pixtral-serve"


def best_peer(systems: dict, workload: str, key: str = "req_per_s") -> tuple[str | None, float | None]:
    """The best system that is not one of ours (scale_out.yaml runs several of ours)."""
    values = [(name, s["workloads"].get(workload, {}).get(key)) for name, s in systems.items()
              if name != OURS and s.get("kind") != "ours"]
    values = [(n, v) for n, v in values if v is not None]
    return max(values, key=lambda nv: nv[1]) if values else (None, None)


def fmt(v, unit: str = "") -> str:
    return "–" if v is None else f"{v:g}{unit}"


def markdown(data: dict, png_name: str) -> str:
    systems, spec = data["systems"], data["spec"]
    names = list(systems)
    lines = [
        f"# Real-traffic benchmark, {data['date']}" + (" (CPU DRY RUN: tiny model, not a measurement)" if data["dry_run"] else ""),
        "",
        f"Machine: {data['machine'].get('gpu') or 'no GPU'}; {data['machine']['cores']} cores ({data['machine']['cpu']}). "
        f"Versions: {', '.join(f'{k} {v}' for k, v in data['versions'].items())}.",
        f"Command: `{data['command']}` (workloads: bench/real_traffic.yaml; every system on the same machine, one after "
        f"another, same images). {spec['request']['max_tokens']} output tokens (ignore_eos), streaming; every non-200 "
        "or error event counts as an error.",
        "",
        "## Systems",
        "",
        "| system | status | ready after (s) | GPU memory (MiB) | command |",
        "|---|---|---|---|---|",
    ]
    for n in names:
        s = systems[n]
        lines.append(f"| {n} | {s.get('status', '?')[:120]} | {fmt(s.get('ready_s'))} | {fmt(s.get('gpu_mem_mib'))} | "
                     f"`{s.get('command', '')[:160]}` |")
    lines += ["", "## Requests per second (ratio: ours / best peer) and TTFT p50", "",
              "| workload | " + " | ".join(names) + " | ours / best peer |",
              "|---|" + "---|" * (len(names) + 1)]
    for wl in spec["workloads"]:
        cells = []
        if spec["workloads"][wl]["kind"] == "startup":  # seconds to the first answered chat: first start, restart
            cells = [f"{fmt(systems[n].get('ready_s'), ' s')} cold, "
                     f"{fmt(systems[n]['workloads'].get(wl, {}).get('ready_s'), ' s')} warm" for n in names]
            lines.append(f"| {wl} | " + " | ".join(cells) + " | – |")
            continue
        for n in names:
            r = systems[n]["workloads"].get(wl, {})
            if "req_per_s" not in r:
                cells.append(r.get("skipped", "–"))
                continue
            extra = f", turns 2+: {r['ttft_p50_later_turns_s']} s" if r.get("ttft_p50_later_turns_s") is not None else ""
            err = f", **{r['errors']} errors**" if r["errors"] else ""
            cells.append(f"{r['req_per_s']:.2f} ({r['ttft_p50_s']} s{extra}){err}")
        ours = systems.get(spec.get("ours", OURS), {}).get("workloads", {}).get(wl, {}).get("req_per_s")
        peer, best = best_peer(systems, wl)
        ratio = f"{ours / best:.2f}x vs {peer}" if ours and best else "–"
        lines.append(f"| {wl} | " + " | ".join(cells) + f" | {ratio} |")
    lines += stage_table(systems, spec)
    lines += ["", f"![req/s per workload, relative to the best peer]({png_name})"]
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
        totals = [sum(per.get(n, 0) for per in groups.values()) for n in names]
        lines.append("| **total** | " + " | ".join(f"{t:.1f}" for t in totals) + " |")
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
    lines = ["", "## Time to first token by stage, one user (p50 ms, from our Server-Timing header)", "",
             "`outside` = the client's TTFT minus our `total`: Serve's proxy, HTTP, the first SSE events, the network.",
             "", "| system | workload | " + " | ".join(stages) + " |", "|---|---|" + "---|" * len(stages)]
    for n, wl, st in rows:
        lines.append(f"| {n} | {wl} | " + " | ".join(fmt(st.get(k)) for k in stages) + " |")
    return lines


def chart(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems, workloads = data["systems"], list(data["spec"]["workloads"])
    names = list(systems)
    fig, ax = plt.subplots(figsize=(11, 4.5))
    width = 0.8 / max(1, len(names))
    for i, n in enumerate(names):
        ys = []
        for wl in workloads:
            v = systems[n]["workloads"].get(wl, {}).get("req_per_s")
            _, best = best_peer(systems, wl)
            ys.append(v / best if v and best else 0)
        ax.bar([x + i * width for x in range(len(workloads))], ys, width, label=n)
    ax.axhline(1.0, color="gray", lw=0.8, ls="--")
    ax.set_xticks([x + width * (len(names) - 1) / 2 for x in range(len(workloads))], workloads)
    ax.set_ylabel("req/s relative to the best peer")
    ax.set_title(f"Real traffic, {data['machine'].get('gpu') or 'CPU dry run'}, {data['date']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("result")
    ap.add_argument("--out", required=True, help="path prefix: writes PREFIX.md, PREFIX.png, PREFIX.json")
    a = ap.parse_args()
    data = json.loads(Path(a.result).read_text())
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(data, indent=1))
    chart(data, out.with_suffix(".png"))
    out.with_suffix(".md").write_text(markdown(data, out.with_suffix(".png").name))


if __name__ == "__main__":
    main()
