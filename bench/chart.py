"""Bar chart of orders/s committed in PostgreSQL per system and workload, p99 on each bar."""

from __future__ import annotations

import os
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from bench.result import Result

LOG_SCALE_SPAN = 20  # beyond this max/min ratio, linear bars hide the slow systems


def write_chart(results: list[Result], path: Path, latency_rate: float) -> None:
    """Write a grouped bar chart (one group per workload, one bar per system) to `path`.

    A bar is the rate to PostgreSQL (first send -> last order committed there); a black
    mark on a bar is the same run's rate at the decision topic, where there is one. The
    label is the p99 latency to the orders row at the fixed rate of the latency phase.
    """
    workloads = list(dict.fromkeys(r.workload for r in results))
    names = list(dict.fromkeys(r.name for r in results))
    by_key = {(r.workload, r.name): r for r in results}
    width = 0.8 / max(len(names), 1)

    # A bare Figure on the Agg canvas: no pyplot global state, no display needed.
    fig = Figure(figsize=(max(8.0, 1.6 * len(workloads) * len(names)), 5.5))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    rates: list[float] = []
    topic_marks = False
    for i, name in enumerate(names):
        for j, workload in enumerate(workloads):
            result = by_key.get((workload, name))
            if result is None:
                continue
            x = j + (i - (len(names) - 1) / 2) * width
            rates.append(result.rate_per_s)
            # An incorrect result is still drawn, but hatched: speed without correctness.
            bar = ax.bar(
                x,
                result.rate_per_s,
                width,
                color=f"C{i}",
                hatch="" if result.correct else "//",
            )
            if result.decision_rate_per_s is not None:
                rates.append(result.decision_rate_per_s)
                ax.plot([x - width / 2, x + width / 2], [result.decision_rate_per_s] * 2, "k-")
                topic_marks = True
            p99 = result.latency_to_pg.p99_ms if result.latency_to_pg else None
            note = "no latency run" if p99 is None else f"p99 {p99:,.0f} ms"
            ax.bar_label(
                bar,
                labels=[note + ("" if result.correct else "\nINCORRECT")],
                fontsize=7,
                padding=2,
            )

    positive = [rate for rate in rates if rate > 0]
    log_scale = bool(positive) and max(positive) / min(positive) > LOG_SCALE_SPAN
    if log_scale:
        ax.set_yscale("log")
        # A bottom under the slowest bar, and room above for the labels.
        ax.set_ylim(min(positive) / 3, max(positive) * 4)
    else:
        ax.set_ylim(0, max(positive, default=1) * 1.15)
    ax.set_xticks(range(len(workloads)), workloads)
    ax.set_ylabel(
        "orders/s committed in PostgreSQL, whole run" + (" (log scale)" if log_scale else "")
    )
    ax.set_title(
        f"Orders/s to PostgreSQL; p99 latency to the orders row at {latency_rate:,.0f}/s open "
        f"loop ({os.cpu_count()} cores; broker, database and load generator share them)",
        fontsize=9,
    )
    # Plain patches: the legend names systems, never one bar's "incorrect" hatching.
    handles: list[Patch | Line2D] = [
        Patch(color=f"C{i}", label=name) for i, name in enumerate(names)
    ]
    if topic_marks:
        handles.append(Line2D([], [], color="k", label="rate at the decision topic"))
    ax.legend(handles=handles, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
