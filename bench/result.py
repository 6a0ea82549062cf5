"""The result record every benchmarked system returns, and its one-line summary."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class Result:
    """What one system did with one workload."""

    system: str
    workload: str
    requests: int
    decisions: int
    elapsed_s: float
    decisions_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    correct: bool
    problems: list[str] = field(default_factory=list)
    settings: dict[str, object] = field(default_factory=dict)


def percentile(sorted_values: list[float], pct: float) -> float:
    """Return the nearest-rank percentile of ascending values (0.0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def summarize(
    system: str,
    workload: str,
    latencies_s: list[float],
    elapsed_s: float,
    correct: bool,
    problems: list[str],
    settings: dict[str, object],
    requests: int | None = None,
) -> Result:
    """Build a Result: one latency per decision; `requests` defaults to that count."""
    ordered = sorted(latencies_s)
    decisions = len(ordered)
    return Result(
        system=system,
        workload=workload,
        requests=decisions if requests is None else requests,
        decisions=decisions,
        elapsed_s=elapsed_s,
        decisions_per_s=decisions / elapsed_s if elapsed_s > 0 else 0.0,
        p50_ms=percentile(ordered, 50) * 1000,
        p95_ms=percentile(ordered, 95) * 1000,
        p99_ms=percentile(ordered, 99) * 1000,
        max_ms=(ordered[-1] if ordered else 0.0) * 1000,
        correct=correct,
        problems=problems,
        settings=settings,
    )


def format_line(result: Result) -> str:
    """Return one aligned line: system, workload, rate, latency percentiles, verdict."""
    return (
        f"{result.system:<24} {result.workload:<7} {result.decisions_per_s:>9,.0f}/s"
        f"  p50 {result.p50_ms:7.2f}  p95 {result.p95_ms:7.2f}  p99 {result.p99_ms:7.2f}"
        f"  max {result.max_ms:8.2f} ms  correct={result.correct}"
    )
