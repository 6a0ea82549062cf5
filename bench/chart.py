"""Bar chart of decisions/s per system and workload, p99 latency on each bar."""

from __future__ import annotations

import os
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from bench.result import Result

LOG_SCALE_SPAN = 20  # beyond this max/min ratio, linear bars hide the slow systems


def write_chart(results: list[Result], path: Path) -> None:
    """Write a grouped bar chart (one group per workload, one bar per system) to `path`."""
    workloads = list(dict.fromkeys(r.workload for r in results))
    systems = list(dict.fromkeys(r.system for r in results))
    by_key = {(r.workload, r.system): r for r in results}
    width = 0.8 / max(len(systems), 1)

    # A bare Figure on the Agg canvas: no pyplot global state, no display needed.
    fig = Figure(figsize=(max(7.0, 1.5 * len(workloads) * len(systems)), 5))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for i, system in enumerate(systems):
        for j, workload in enumerate(workloads):
            result = by_key.get((workload, system))
            if result is None:
                continue
            x = j + (i - (len(systems) - 1) / 2) * width
            # An incorrect result is still drawn, but hatched: speed without correctness.
            bar = ax.bar(
                x,
                result.decisions_per_s,
                width,
                color=f"C{i}",
                hatch="" if result.correct else "//",
            )
            note = f"p99 {result.p99_ms:,.1f} ms" + ("" if result.correct else "\nINCORRECT")
            ax.bar_label(bar, labels=[note], fontsize=8, padding=2)

    rates = [r.decisions_per_s for r in results if r.decisions_per_s > 0]
    log_scale = bool(rates) and max(rates) / min(rates) > LOG_SCALE_SPAN
    if log_scale:
        ax.set_yscale("log")
    if log_scale:  # a bottom under the slowest bar, and room above for the labels
        ax.set_ylim(min(rates) / 3, max(rates) * 4)
    else:
        ax.set_ylim(0, max(rates, default=1) * 1.15)
    ax.set_xticks(range(len(workloads)), workloads)
    ax.set_ylabel("decisions per second" + (" (log scale)" if log_scale else ""))
    ax.set_title(
        f"Decisions/s per system ({os.cpu_count()} cores; broker, database and "
        "load generator share the machine)",
        fontsize=10,
    )
    # Plain patches: the legend names systems, never one bar's "incorrect" hatching.
    ax.legend(handles=[Patch(color=f"C{i}", label=s) for i, s in enumerate(systems)])
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
