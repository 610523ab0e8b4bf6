"""Turn a bench/gpu/run_all.py result JSON into bench/results/<date>-<tag>.md and a PNG chart.

  .venv/bin/python bench/gpu/report.py /work/.device/.../2026-11-22-h100.json [--out-dir bench/results]

One markdown table per workload (system, req/s, output tok/s, TTFT p50/p99, e2e p50/p99,
errors, GPU busy %, CPU cores busy), the systems' cold start and GPU memory, CPU seconds per
stage for pixtral-serve, and one chart: req/s and TTFT p50 per system per workload.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SYSTEM_NAMES = {
    "pixtral-serve": "pixtral-serve, 16k batch",
    "vllm-serve": "vllm serve",
    "vllm-serve-api4": "vllm serve --api-server-count 4",
    "pixtral-serve-8k": "pixtral-serve, 8k batch (shipped)",
    "pixtral-serve-8k-async": "pixtral-serve, 8k batch + async sched.",
}


def fmt(v, nd=2, suffix=""):
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{nd}f}{suffix}"
    return f"{v}{suffix}"


def workloads_of(data: dict) -> list[str]:
    order = list(data.get("settings", {}).get("workloads", {}))
    seen = {w for s in data["systems"].values() for w in s.get("points", {})}
    return [w for w in order if w in seen] + sorted(seen - set(order))


def point_row(system: str, p: dict) -> str:
    name = SYSTEM_NAMES.get(system, system)
    if "req_per_s" not in p:
        why = p.get("skipped") or p.get("failed") or "?"
        return f"| {name} | {'skipped' if 'skipped' in p else 'failed'}: {why} | | | | | | | | |"
    gpu = (p.get("gpu") or {}).get("gpu_busy_mean_pct")
    cpu = (p.get("cpu") or {}).get("machine_cores_busy")
    return (f"| {name} | {fmt(p['req_per_s'])} | {fmt(p['out_tok_per_s'], 0)} | {fmt(p['ttft_p50_s'])} | "
            f"{fmt(p['ttft_p99_s'])} | {fmt(p['e2e_p50_s'])} | {fmt(p['e2e_p99_s'])} | "
            f"{p['errors']}/{p['requests']} | {fmt(gpu, 0, '%')} | {fmt(cpu, 1)} |")


def markdown(data: dict, chart_name: str | None) -> str:
    s = data.get("settings", {})
    m = data.get("machine", {})
    v = data.get("versions", {})
    lines = [
        f"# GPU benchmark {data.get('date', '')}: pixtral-serve vs `vllm serve`" + (" (DRY RUN)" if data.get("dry_run") else ""),
        "",
        f"Machine: {m.get('gpu') or 'no GPU'}; CPU {m.get('cpu_model', '?')}, {m.get('cores', '?')} cores. "
        f"Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".",
        "",
        f"Load (bench/bench_openai.py): one unique JPEG per request, streaming, ignore_eos, "
        f"{s.get('max_tokens')} output tokens, concurrency {s.get('concurrency')}, {s.get('requests')} measured "
        f"requests after {s.get('warmup')} warm-up. Dummy-weight Pixtral-12B (real architecture and tokenizer). "
        f"GPU busy = mean of `nvidia-smi utilization.gpu` every 500 ms over the measured requests; "
        f"CPU = machine cores busy over the same span.",
        "",
        "## Systems",
        "",
        "| system | status | cold start to healthy (s) | GPU memory (MiB) |",
        "|---|---|---|---|",
    ]
    for name, sysres in data["systems"].items():
        lines.append(f"| {SYSTEM_NAMES.get(name, name)} | {sysres.get('status', '?')} | "
                     f"{fmt(sysres.get('cold_start_s'), 1)} | {fmt(sysres.get('gpu_mem_mib'))} |")
    header = ("| system | req/s | output tok/s | TTFT p50 (s) | TTFT p99 (s) | e2e p50 (s) | e2e p99 (s) | "
              "errors | GPU busy | CPU cores busy |")
    for w in workloads_of(data):
        ws = s.get("workloads", {}).get(w, {})
        kind = "data: URL" if ws.get("mode") == "data" else "s3:// URL from moto_server"
        lines += ["", f"## {w}" + (f" ({ws.get('size')} JPEG as {kind})" if ws else ""), "", header,
                  "|---" * 10 + "|"]
        for name, sysres in data["systems"].items():
            p = sysres.get("points", {}).get(w)
            if p is not None:
                lines.append(point_row(name, p))
    for sysname, sysres in data["systems"].items():
        pts = sysres.get("points", {})
        cpu_rows = [(w, p["cpu"]) for w, p in pts.items() if isinstance(p, dict) and p.get("cpu")]
        if not cpu_rows:
            continue
        groups: list[str] = []
        for _, c in cpu_rows:
            for g in c["groups"]:
                if g not in groups:
                    groups.append(g)
        groups = groups[:10]
        lines += ["", f"## {SYSTEM_NAMES.get(sysname, sysname)}: CPU cores busy per process group", "",
                  "| workload | " + " | ".join(g.replace("ray::ServeReplica:pixtral:", "") for g in groups) + " |",
                  "|---" * (len(groups) + 1) + "|"]
        for w, c in cpu_rows:
            lines.append(f"| {w} | " + " | ".join(fmt(c["groups"].get(g, {}).get("cores"), 2) for g in groups) + " |")
    if chart_name:
        lines += ["", f"![req/s and TTFT p50 per system and workload]({chart_name})"]
    if data.get("error"):
        lines += ["", f"Run error: `{data['error']}`"]
    return "\n".join(lines) + "\n"


def chart(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = workloads_of(data)
    systems = list(data["systems"])
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    width = 0.8 / max(1, len(systems))
    for ax, key, title in ((axes[0], "req_per_s", "requests/s (higher is better)"),
                           (axes[1], "ttft_p50_s", "TTFT p50, s (lower is better)")):
        for i, sysname in enumerate(systems):
            pts = data["systems"][sysname].get("points", {})
            vals = [(pts.get(w) or {}).get(key) for w in workloads]
            xs = [j + (i - (len(systems) - 1) / 2) * width for j in range(len(workloads))]
            bars = ax.bar(xs, [v or 0 for v in vals], width, label=SYSTEM_NAMES.get(sysname, sysname))
            for b, val in zip(bars, vals):
                ax.annotate("–" if val is None else f"{val:.2f}", (b.get_x() + b.get_width() / 2, b.get_height()),
                            ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(workloads)))
        ax.set_xticklabels(workloads, rotation=20, fontsize=8)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    tag = " (dry run)" if data.get("dry_run") else ""
    fig.suptitle(f"Pixtral-12B (dummy weights), concurrency {data.get('settings', {}).get('concurrency')}{tag}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("json")
    ap.add_argument("--out-dir", default=str(Path(__file__).resolve().parents[1] / "results"))
    a = ap.parse_args()
    src = Path(a.json)
    data = json.loads(src.read_text())
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = src.stem  # <date>-h100
    png = out / f"{stem}.png"
    chart(data, png)
    md = out / f"{stem}.md"
    md.write_text(markdown(data, png.name))
    print(f"wrote {md} and {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
