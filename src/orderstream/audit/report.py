"""What an audit found: a check per invariant, its examples and notes, and the report."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import NamedTuple

from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

# Each failed check shows this many examples.
EXAMPLES = 5


class StockFigures(NamedTuple):
    """A product's stock as PostgreSQL or the changelog has it."""

    available: int
    reserved: int
    sold: int
    total_in: int
    version: int

    def describe(self) -> str:
        return (
            f"available {self.available}, reserved {self.reserved}, sold {self.sold}, "
            f"total_in {self.total_in}, version {self.version}"
        )


@dataclass
class Check:
    """One invariant: how much was checked, what violated it, what could not be compared."""

    title: str
    checked: int
    unit: str
    violations: int = 0
    examples: list[str] = field(default_factory=list)
    # Not violations: what could not be compared as of the reads, and why.
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.violations == 0

    def violate(self, example: str) -> None:
        """Count one violation, keeping the first few as examples."""
        self.violations += 1
        if len(self.examples) < EXAMPLES:
            self.examples.append(example)

    def lines(self) -> list[str]:
        """Return the check as report lines: the verdict, then examples and notes."""
        if self.ok:
            head = f"ok    {self.title}: {self.checked} {self.unit}"
        else:
            head = f"FAIL  {self.title}: {self.violations} of {self.checked} {self.unit} violate it"
        return [head, *(f"        {example}" for example in self.examples[:EXAMPLES])] + [
            f"      note: {note}" for note in self.notes
        ]


@dataclass
class AuditReport:
    """Every check, and when each source was read."""

    postgres_read_at: datetime
    changelog_read_at: datetime
    changelog_records: int
    lag: dict[str, int]  # consumer group role -> records not yet consumed
    checks: list[Check]

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    @property
    def violations(self) -> int:
        return sum(check.violations for check in self.checks)

    def lines(self) -> list[str]:
        """Return the whole report, a line per check and its details."""
        lines = [
            "compared as of the moment each source was read:",
            f"  consumer lag before reading: {describe_lag(self.lag)}",
            f"  PostgreSQL: one snapshot at {_iso(self.postgres_read_at)}",
            f"  stock changelog: {self.changelog_records} records, read to its end offsets"
            f" of {_iso(self.changelog_read_at)}",
        ]
        for check in self.checks:
            lines += check.lines()
        verdict = "ok" if self.ok else f"{self.violations} violation(s)"
        return [*lines, f"audit: {verdict}"]


def write_textfile(report: AuditReport, path: str) -> None:
    """Write the report's verdict as Prometheus metrics to ``path`` (replaced whole)."""
    registry = CollectorRegistry()
    violations = Gauge(
        "orderstream_audit_violations",
        "Invariant violations the last audit found, by check.",
        ["check"],
        registry=registry,
    )
    for check in report.checks:
        violations.labels(check.title).set(check.violations)
    Gauge(
        "orderstream_audit_last_run_timestamp_seconds",
        "When the last audit finished (Unix time).",
        registry=registry,
    ).set_to_current_time()
    write_to_textfile(path, registry)  # a temporary file renamed over it: never half read


def describe_lag(lag: Mapping[str, int]) -> str:
    return ", ".join(f"{role} {records}" for role, records in lag.items()) + " records"


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
