"""Prometheus metrics, registered against an injected registry.

Labels stay bounded: outcomes, reasons, topics and groups, never a user or order id. A
product id labels only the stock gauges, whose label set is replaced on every update by
at most ten products (agents/stock/agent.py).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from weakref import WeakKeyDictionary

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

if TYPE_CHECKING:
    from orderstream.domain import StockLevel

# Decision latency: from the request's Kafka timestamp to the decision, in seconds.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_BATCH_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2000, 5000)


@dataclass
class DecisionTally:
    """The decisions of a batch, counted in memory and added to the metrics at its end.

    Per decision, prometheus' child lookup, counter increment and histogram observe
    (each behind a lock) cost a fifth of deciding; once per batch they are noise.
    """

    decisions: Counter
    latency: Histogram
    _counts: dict[tuple[str, str], int] = field(default_factory=dict)
    _latencies: list[float] = field(default_factory=list)

    def add(self, outcome: str, reason: str, latency_s: float) -> None:
        labels = (outcome, reason)
        self._counts[labels] = self._counts.get(labels, 0) + 1
        self._latencies.append(latency_s)

    def flush(self) -> None:
        """Add what was counted since the last flush to the metrics."""
        for (outcome, reason), count in self._counts.items():
            self.decisions.labels(outcome, reason).inc(count)
        self._counts.clear()
        observe_many(self.latency, self._latencies)
        self._latencies.clear()


def observe_many(histogram: Histogram, values: list[float]) -> None:
    """Observe ``values`` as ``histogram.observe`` would one by one, a bucket at a time."""
    # prometheus_client has no bulk observe; this adds to the buckets and the sum it keeps
    # (tests/unit/test_metrics_tally.py compares the exposition with one observe each).
    if not values:
        return
    bounds: list[float] = histogram._upper_bounds
    counts = [0] * len(bounds)
    for value in values:
        counts[bisect_left(bounds, value)] += 1
    for bucket, count in zip(histogram._buckets, counts, strict=True):
        if count:
            bucket.inc(count)
    histogram._sum.inc(sum(values))


@dataclass(frozen=True)
class WorkerMetrics:
    """What the stock agent counts."""

    decisions: Counter
    decision_latency: Histogram
    duplicates: Counter
    forwarded: Counter
    dead_letters: Counter
    stock_commands: Counter
    expired_holds: Counter
    consumer_lag: Gauge
    stock_available: Gauge
    stock_reserved: Gauge
    stock_sold: Gauge

    @classmethod
    def register(cls, registry: CollectorRegistry) -> WorkerMetrics:
        return cls(
            decisions=Counter(
                "orderstream_decisions",
                "Order lines decided, by outcome and reason.",
                ["outcome", "reason"],
                registry=registry,
            ),
            decision_latency=Histogram(
                "orderstream_decision_latency_seconds",
                "Time from a request's Kafka timestamp to its decision.",
                buckets=_LATENCY_BUCKETS,
                registry=registry,
            ),
            duplicates=Counter(
                "orderstream_duplicate_requests",
                "Requests already decided: the recorded decision was sent again.",
                registry=registry,
            ),
            forwarded=Counter(
                "orderstream_forwarded_messages",
                "Messages that arrived on a partition not owning their product, forwarded.",
                ["topic"],
                registry=registry,
            ),
            dead_letters=Counter(
                "orderstream_dead_letters",
                "Malformed messages sent to a dead-letter topic.",
                ["topic"],
                registry=registry,
            ),
            stock_commands=Counter(
                "orderstream_stock_commands",
                "Stock commands by operation and result: applied, already_applied; for"
                " commit and release also not_reserved (no reserved line of that order) and"
                " conflicting (the line was settled the other way).",
                ["operation", "result"],
                registry=registry,
            ),
            expired_holds=Counter(
                "orderstream_expired_holds",
                "Final holds dropped after the dedup window (tombstoned in the changelog).",
                registry=registry,
            ),
            consumer_lag=Gauge(
                "orderstream_consumer_lag_messages",
                "Messages on a consumer group's partitions not yet consumed, by group; each"
                " worker reports the partitions it owns.",
                ["group"],
                registry=registry,
            ),
            stock_available=Gauge(
                "orderstream_stock_available",
                "Units available of the busiest products (stock changed in the most batches"
                " of the last few seconds).",
                ["product"],
                registry=registry,
            ),
            stock_reserved=Gauge(
                "orderstream_stock_reserved",
                "Units reserved, not yet paid or released, of the busiest products.",
                ["product"],
                registry=registry,
            ),
            stock_sold=Gauge(
                "orderstream_stock_sold",
                "Units sold of the busiest products.",
                ["product"],
                registry=registry,
            ),
        )

    def show_stock(self, levels: Mapping[str, StockLevel]) -> None:
        """Make the stock gauges show ``levels``, and no other product."""
        for gauge in (self.stock_available, self.stock_reserved, self.stock_sold):
            gauge.clear()
        for product_id, level in levels.items():
            self.stock_available.labels(product_id).set(level.available)
            self.stock_reserved.labels(product_id).set(level.reserved)
            self.stock_sold.labels(product_id).set(level.sold)


@dataclass(frozen=True)
class SinkMetrics:
    """What the PostgreSQL sink counts."""

    batch_size: Histogram
    batch_seconds: Histogram
    lag: Gauge
    records: Counter
    dead_letters: Counter

    @classmethod
    def register(cls, registry: CollectorRegistry) -> SinkMetrics:
        return cls(
            batch_size=Histogram(
                "orderstream_sink_batch_records",
                "Records written to PostgreSQL per transaction.",
                buckets=_BATCH_BUCKETS,
                registry=registry,
            ),
            batch_seconds=Histogram(
                "orderstream_sink_batch_seconds",
                "Time to write and commit one batch.",
                buckets=_LATENCY_BUCKETS,
                registry=registry,
            ),
            lag=Gauge(
                "orderstream_sink_lag_messages",
                "Messages on the sink's topics not yet written to PostgreSQL.",
                registry=registry,
            ),
            records=Counter(
                "orderstream_sink_records",
                "Records written to PostgreSQL, by topic.",
                ["topic"],
                registry=registry,
            ),
            dead_letters=Counter(
                "orderstream_sink_dead_letters",
                "Records the sink sent to a dead-letter topic, by source topic and cause:"
                " invalid (undecodable) or refused (by PostgreSQL).",
                ["topic", "cause"],
                registry=registry,
            ),
        )


@dataclass(frozen=True)
class LifecycleMetrics:
    """What the order and payment agents count."""

    order_inputs: Counter
    order_batch_size: Histogram
    order_transitions: Counter
    order_dead_letters: Counter
    expire_commands: Counter
    payments: Counter
    payment_calls: Counter
    payments_waiting: Gauge
    payment_seconds: Histogram
    breaker_open: Gauge
    partitions_ready: Gauge
    lag: Gauge
    refetches: Counter

    @classmethod
    def register(cls, registry: CollectorRegistry) -> LifecycleMetrics:
        return cls(
            order_inputs=Counter(
                "orderstream_order_inputs",
                "Inputs of the order agent, by kind (line, payment, cancel, expire) and"
                " result: applied, or why it changed nothing.",
                ["kind", "result"],
                registry=registry,
            ),
            order_batch_size=Histogram(
                "orderstream_order_batch_inputs",
                "Inputs the order agent applied per batch (one changelog flush each).",
                buckets=(1, 5, 20, 50, 100, 200, 500, 1000, 2000, 5000),
                registry=registry,
            ),
            order_transitions=Counter(
                "orderstream_order_transitions",
                "Order events the order agent emitted, by status.",
                ["status"],
                registry=registry,
            ),
            order_dead_letters=Counter(
                "orderstream_order_dead_letters",
                "Messages the order and payment agents could not process, by topic.",
                ["topic"],
                registry=registry,
            ),
            expire_commands=Counter(
                "orderstream_expire_commands",
                "Expire commands the expiry timer sent.",
                registry=registry,
            ),
            payments=Counter(
                "orderstream_payments",
                "Payment requests handled, by action (charge, refund) and outcome: paid,"
                " declined, unavailable (charges); refunded, failed (refunds).",
                ["action", "outcome"],
                registry=registry,
            ),
            payment_calls=Counter(
                "orderstream_payment_provider_calls",
                "Calls to the payment provider, by result: ok, error, timeout, or"
                " circuit_open (not called).",
                ["result"],
                registry=registry,
            ),
            payments_waiting=Gauge(
                "orderstream_payments_in_flight",
                "Payment requests taken from Kafka and not yet answered: in flight at"
                " the provider, or waiting for a slot or the provider's rate limit.",
                registry=registry,
            ),
            payment_seconds=Histogram(
                "orderstream_payment_seconds",
                "Time to handle one payment request, retries included.",
                buckets=_LATENCY_BUCKETS,
                registry=registry,
            ),
            breaker_open=Gauge(
                "orderstream_payment_breaker_open",
                "1 while the payment provider's circuit breaker is open.",
                registry=registry,
            ),
            lag=Gauge(
                "orderstream_lifecycle_lag_messages",
                "Messages on the lifecycle's source topics its group has not committed past"
                " (line outcomes, order commands, payment requests and results); each"
                " lifecycle process reports the whole group's (take the max).",
                registry=registry,
            ),
            partitions_ready=Gauge(
                "orderstream_lifecycle_partitions_ready",
                "Order partitions this process owns with their table restored (0 while"
                " it joins or rebalances): the lifecycle is ready when the sum over its"
                " processes equals ORDERSTREAM_PARTITIONS.",
                registry=registry,
            ),
            refetches=Counter(
                "orderstream_lifecycle_refetches",
                "Times a lifecycle partition was fetched past messages never delivered"
                " (after a rebalance) and sought back to fetch them again, by topic.",
                ["topic"],
                registry=registry,
            ),
        )


@dataclass(frozen=True)
class StatusMetrics:
    """What the status service counts: its door, and its live view of the stock."""

    sold_out_refusals: Counter
    rate_limited: Counter
    view_products: Gauge
    view_caught_up: Gauge
    publishes_in_flight: Gauge
    busy_refusals: Counter

    @classmethod
    def register(cls, registry: CollectorRegistry) -> StatusMetrics:
        return cls(
            sold_out_refusals=Counter(
                "orderstream_sold_out_refusals",
                "Orders answered 409 SOLD_OUT at the door (never published).",
                registry=registry,
            ),
            rate_limited=Counter(
                "orderstream_rate_limited",
                "Requests answered 429 at the door, by limit: user (POST /orders per"
                " user_id) or address (every request per client address).",
                ["limit"],
                registry=registry,
            ),
            view_products=Gauge(
                "orderstream_stock_view_products",
                "Products the status service's live stock view knows.",
                registry=registry,
            ),
            view_caught_up=Gauge(
                "orderstream_stock_view_caught_up",
                "1 once the live stock view has read stock-changes to its end (the door"
                " refuses sold-out orders only then), else 0.",
                registry=registry,
            ),
            publishes_in_flight=Gauge(
                "orderstream_intake_publishes_in_flight",
                "POST /orders records sent to Kafka and not acknowledged yet, in this"
                " process (at most ORDERSTREAM_HTTP_MAX_IN_FLIGHT).",
                registry=registry,
            ),
            busy_refusals=Counter(
                "orderstream_intake_busy_refusals",
                "Orders answered 503 at the door because ORDERSTREAM_HTTP_MAX_IN_FLIGHT"
                " publishes were in flight (never published).",
                registry=registry,
            ),
        )


_STATUS_METRICS: WeakKeyDictionary[CollectorRegistry, StatusMetrics] = WeakKeyDictionary()


def status_metrics(registry: CollectorRegistry) -> StatusMetrics:
    """Return the status service's metrics in ``registry``, registered on first use.

    Once per registry: a supervisor makes the service anew after each failure, and a
    metric registered twice in one registry is an error.
    """
    metrics = _STATUS_METRICS.get(registry)
    if metrics is None:
        metrics = _STATUS_METRICS[registry] = StatusMetrics.register(registry)
    return metrics
