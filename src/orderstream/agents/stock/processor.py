"""The stock agent's one seam: a source record and its partition's state in, effects out.

The processor decides; it never touches Kafka or the store. What it returns (new holds,
stock events, output records; the types are in agents/stock/seam.py) the store appends
to the changelog in order and the engine announces once the changelog has them. Every
rule about a record is applied here once: decoding, the dedup window, forwarding a
misrouted record to its owner, re-sending a duplicate's recorded decision, and
dead-lettering what can never succeed. A stock command for a product owned here is
handed to agents/stock/commands.py, which applies it or settles a reserved line
(commit, release) once.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from orderstream import tracing
from orderstream.agents.stock.commands import StockCommands
from orderstream.agents.stock.seam import Effects, Output, PartitionView, SourceRecord
from orderstream.codec import RequestLine, decode_request, encode_json
from orderstream.dead_letters import dead_letter_of
from orderstream.domain import (
    LineRequest,
    OrderStatus,
    StockEvent,
    StockLevel,
    owner_partition,
    reserve_line,
)
from orderstream.errors import InvalidMessageError
from orderstream.logs import record_context
from orderstream.metrics import DecisionTally, WorkerMetrics
from orderstream.settings import Settings
from orderstream.tables import Hold, decode_hold, hold_key
from orderstream.topics import (
    DLQ_SUFFIX,
    LINE_OUTCOMES,
    ORDER_EVENTS,
    ORDER_REQUESTS,
    StockCommand,
    decode,
)

# The seam's types, for callers of the processor.
__all__ = ["Effects", "Output", "PartitionView", "SourceRecord", "StockProcessor"]

log = logging.getLogger(__name__)

_OWNER_CACHE = 100_000
# The most a forwarded record may weigh (key, value and headers, uncompressed): the
# producer sends at most 1 MiB a request and a topic takes 1 MiB a record by default. A
# record that came compressed can be bigger once unpacked (its unknown fields are
# ignored, but a forward re-sends it whole); sent on, the broker would refuse it and the
# agent could never get past it. It is dead-lettered instead.
FORWARD_MAX_BYTES = 1_000_000
_OUTCOMES = {status: status.value.lower() for status in OrderStatus}


class StockProcessor:
    """Turn order requests and stock commands into effects, one record at a time."""

    def __init__(self, settings: Settings, metrics: WorkerMetrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self._requests = settings.topic(ORDER_REQUESTS)
        self._order_events = settings.topic(ORDER_EVENTS)
        self._line_outcomes = settings.topic(LINE_OUTCOMES)
        self._window_ms = int(settings.dedup_window_s * 1000)
        self._owners: dict[str, int] = {}  # product id -> owning partition (no encode + hash)
        self._tally = DecisionTally(metrics.decisions, metrics.decision_latency)
        self._commands = StockCommands(metrics)

    def flush_metrics(self) -> None:
        """Add the decisions made since the last call to the metrics (once per batch)."""
        self._tally.flush()

    def process(self, record: SourceRecord, state: PartitionView, now_ms: int) -> Effects:
        """Return the effects of ``record``; a record that cannot succeed is dead-lettered."""
        if tracing.ENABLED:
            return self._traced(record, state, now_ms)
        return self._process(record, state, now_ms)

    def _traced(self, record: SourceRecord, state: PartitionView, now_ms: int) -> Effects:
        """Process ``record`` in a span of its trace; its outputs carry the span on."""
        decides = record.topic == self._requests
        name = tracing.STOCK_DECIDE_SPAN if decides else tracing.STOCK_COMMAND_SPAN
        with tracing.consumer_span(
            name, record.headers, record.topic, record.partition, record.offset
        ) as span:
            effects = self._process(record, state, now_ms)
            traced = tracing.inject()
            if any(output.topic.endswith(DLQ_SUFFIX) for output in effects.outputs):
                tracing.set_error(span, "dead-lettered")
        if traced is not None:
            effects.outputs = [
                replace(output, headers=[*(output.headers or ()), *traced])
                for output in effects.outputs
            ]
        return effects

    def _process(self, record: SourceRecord, state: PartitionView, now_ms: int) -> Effects:
        effects = Effects()
        try:
            if record.topic == self._requests:
                self._on_request(record, state, now_ms, effects)
            else:
                self._on_command(record, state, now_ms, effects)
        except InvalidMessageError as exc:
            return self.dead_letter(record, exc.reason)
        except Exception as exc:
            # Deciding is pure and in memory: a failure here is a bug that a retry would
            # repeat. Park the record with the reason; the partition goes on.
            log.exception(
                "internal error on %s/%d@%d",
                record.topic,
                record.partition,
                record.offset,
                extra=record_context(record.topic, record.partition, record.offset),
            )
            return self.dead_letter(record, f"internal error: {exc!r}")
        return effects

    def dead_letter(self, record: SourceRecord, reason: str) -> Effects:
        """Return the effects of parking ``record`` on its topic's dead-letter topic."""
        self._metrics.dead_letters.labels(record.topic).inc()
        dead = dead_letter_of(
            record.topic, record.partition, record.offset, record.key, record.value, reason=reason
        )
        output = Output(dead.topic, dead.key, dead.value, headers=dead.headers)
        return Effects(outputs=[output])

    def _on_request(
        self, record: SourceRecord, state: PartitionView, now_ms: int, effects: Effects
    ) -> None:
        request = decode_request(record.value)
        if tracing.ENABLED:
            tracing.set_attributes(
                {
                    "orderstream.order_id": request.order_id,
                    "orderstream.product_id": request.product_id,
                }
            )
        if record.timestamp_ms < now_ms - self._window_ms:
            # Its hold may already be gone: deciding it could decide an order twice.
            # Checked before forwarding too, wherever the record landed.
            raise InvalidMessageError(
                f"STALE: requested {(now_ms - record.timestamp_ms) / 1000:.0f} s ago, "
                f"older than the dedup window of {self._settings.dedup_window_s:.0f} s"
            )
        if self._forwarded(record, request.product_id, effects):
            return
        key = hold_key(request.order_id, request.product_id)
        recorded = state.hold(key)
        if recorded is not None:
            hold = decode_hold(recorded)
            self._metrics.duplicates.inc()
        else:
            held = state.held(request.user_id, request.product_id)
            level = state.level(request.product_id)
            hold, event = self._decide(level, held, request, record, now_ms)
            effects.holds.append((key, hold))
            if event is not None:
                effects.stock.append((request.product_id, event))
                effects.held.append((request.user_id, request.product_id, request.quantity))
        if hold.line_count == 1:
            # Decided in one hop: the decision is the order's first event.
            announced = encode_json(hold.decision_event())
            effects.outputs.append(Output(self._order_events, hold.order_id.encode(), announced))
        if hold.line_count > 1 or hold.status is OrderStatus.RESERVED:
            # The order agent's input: it assembles an order of several lines, and takes
            # a reserved one on to payment. A single-line rejection is final at once: the
            # order agent never reads it (most of a flash sale's requests).
            decided = encode_json(hold.line_decision())
            effects.outputs.append(Output(self._line_outcomes, hold.order_id.encode(), decided))

    def _decide(
        self,
        level: StockLevel | None,
        held: int,
        request: RequestLine,
        record: SourceRecord,
        now_ms: int,
    ) -> tuple[Hold, StockEvent | None]:
        line = LineRequest(
            product_id=request.product_id, quantity=request.quantity, line_count=request.line_count
        )
        decision, event = reserve_line(
            level, line, self._settings.max_line_quantity, held, self._settings.max_per_user
        )
        self._tally.add(
            _OUTCOMES[decision.status],
            decision.reason.value if decision.reason else "",
            max(0, now_ms - record.timestamp_ms) / 1000,
        )
        version = event.version if event is not None else None
        return Hold.of(
            request, decision, record.timestamp_ms, now_ms, stock_version=version, level=level
        ), event

    def _on_command(
        self, record: SourceRecord, state: PartitionView, now_ms: int, effects: Effects
    ) -> None:
        command = decode(StockCommand, record.value)
        if self._forwarded(record, command.product_id, effects):
            return
        self._commands.apply(record, command, state, now_ms, effects)

    def _forwarded(self, record: SourceRecord, product_id: str, effects: Effects) -> bool:
        """Forward a record that arrived on a partition not owning its product."""
        owner = self._owners.get(product_id)
        if owner is None:
            if len(self._owners) > _OWNER_CACHE:
                self._owners.clear()  # bounded, whatever product ids arrive
            owner = self._owners[product_id] = owner_partition(
                product_id, self._settings.partitions
            )
        if owner == record.partition:
            return False
        size = len(record.key or b"") + len(record.value or b"")
        size += sum(len(name) + len(value or b"") for name, value in record.headers)
        if size > FORWARD_MAX_BYTES:
            raise InvalidMessageError(
                f"TOO_LARGE: {size:,} bytes on partition {record.partition}, owned by"
                f" {owner}: more than the {FORWARD_MAX_BYTES:,} a forward may carry"
            )
        log.info(
            "product %s is owned by partition %d; forwarding %s/%d@%d",
            product_id,
            owner,
            record.topic,
            record.partition,
            record.offset,
            extra=record_context(
                record.topic, record.partition, record.offset, product_id=product_id
            ),
        )
        # With the original timestamp: the owner judges its age as this partition would.
        effects.outputs.append(
            Output(
                record.topic,
                product_id.encode(),
                record.value,
                partition=owner,
                timestamp_ms=record.timestamp_ms,
            )
        )
        self._metrics.forwarded.labels(record.topic).inc()
        return True
