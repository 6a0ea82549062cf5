"""Decisions counted per batch show in the metrics exactly as counted one by one."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, generate_latest

from orderstream.metrics import DecisionTally, WorkerMetrics


def test_a_batch_tally_exposes_what_one_observe_per_decision_would() -> None:
    rng = random.Random(3)
    bounds = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]
    decisions = [
        (
            rng.choice(["reserved", "rejected"]),
            rng.choice(["", "OUT_OF_STOCK", "LIMIT_EXCEEDED"]),
            # On a bucket's bound, between bounds, past the last one, zero.
            rng.choice([rng.choice(bounds), rng.uniform(0, 6), 0.0, 99.0]),
        )
        for _ in range(2_000)
    ]
    one_by_one, batched = CollectorRegistry(), CollectorRegistry()
    each = WorkerMetrics.register(one_by_one)
    for outcome, reason, latency in decisions:
        each.decisions.labels(outcome, reason).inc()
        each.decision_latency.observe(latency)
    tallied = WorkerMetrics.register(batched)
    tally = DecisionTally(tallied.decisions, tallied.decision_latency)
    for n, (outcome, reason, latency) in enumerate(decisions):
        tally.add(outcome, reason, latency)
        if n % 300 == 0:
            tally.flush()
    tally.flush()
    tally.flush()  # nothing new: changes nothing

    # Every line the same but when each was created and the sum's last bits (a float sum
    # in another order).
    def exposed(registry: CollectorRegistry) -> list[str]:
        text = generate_latest(registry).decode()
        return [line for line in text.splitlines() if "_created" not in line and "_sum" not in line]

    assert exposed(batched) == exposed(one_by_one)
    assert len(exposed(batched)) > 20
    total = sum(latency for _, _, latency in decisions)
    assert abs(tallied.decision_latency._sum.get() - total) < 1e-6 * total
