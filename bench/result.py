"""The result record every benchmarked system returns, and its one-line summary."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

BACKLOG = "backlog"  # the mode of a run whose requests were all published before it began


@dataclass
class Latency:
    """Percentiles of one latency phase, in milliseconds."""

    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float

    @classmethod
    def of(cls, seconds: list[float]) -> Latency:
        ordered = sorted(seconds)
        return cls(
            p50_ms=percentile(ordered, 50) * 1000,
            p95_ms=percentile(ordered, 95) * 1000,
            p99_ms=percentile(ordered, 99) * 1000,
            max_ms=(ordered[-1] if ordered else 0.0) * 1000,
        )

    def brief(self) -> str:
        return (
            f"p50 {self.p50_ms:.1f} p95 {self.p95_ms:.1f} p99 {self.p99_ms:.1f} "
            f"max {self.max_ms:.1f} ms"
        )


@dataclass
class Result:
    """What one system did with one workload.

    Throughput: ``requests / elapsed_s``, where ``elapsed_s`` runs from the first request
    sent (or, for a pre-published backlog, the consumer's start) to the last order
    committed in PostgreSQL. Latency: an open-loop phase at ``latency_rate_per_s``, each
    request timed from its scheduled send to its orders row seen in PostgreSQL.
    """

    system: str
    workload: str
    mode: str  # how requests arrived: burst while running, backlog, closed-loop clients
    requests: int
    elapsed_s: float
    rate_per_s: float  # orders committed in PostgreSQL per second, whole run
    correct: bool
    # orderstream only: requests / (first send -> last decision event seen on the topic)
    decision_rate_per_s: float | None = None
    latency_rate_per_s: float | None = None  # None: no latency phase (backlog mode)
    latency_requests: int = 0
    latency_to_pg: Latency | None = None
    latency_to_decision: Latency | None = None  # orderstream only: to its order-events record
    problems: list[str] = field(default_factory=list)
    settings: dict[str, object] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """Name the row: the system, and "backlog" when requests were published first."""
        return f"{self.system} (backlog)" if self.mode == BACKLOG else self.system


def percentile(sorted_values: list[float], pct: float) -> float:
    """Return the nearest-rank percentile of ascending values (0.0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def format_line(result: Result) -> str:
    """Return one line: system, workload, rates, latency percentiles, verdict."""
    line = f"{result.name:<26} {result.workload:<6}{result.rate_per_s:>9,.0f}/s to PG"
    if result.decision_rate_per_s is not None:
        line += f" ({result.decision_rate_per_s:,.0f}/s to decision topic)"
    if result.latency_to_pg is not None:
        line += f"; @{result.latency_rate_per_s:,.0f}/s to PG {result.latency_to_pg.brief()}"
    if result.latency_to_decision is not None:
        line += f"; to decision {result.latency_to_decision.brief()}"
    return line + f"; correct={result.correct}"
