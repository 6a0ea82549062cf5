"""The order agent: each order's state in a table, moved by ``domain.orders.next_state``.

Keyed by order id, it reads ``line-outcomes``, ``order-commands`` and ``payment-results``
(co-partitioned) a fetched batch at a time: it applies the batch's inputs, writes each
changed order once with its outbox (the effects its transitions name, built in
order_effects.py), waits for the changelog, then sends the effects, then acknowledges the
inputs. No effect leaves before the state that names it is durable; a crash replays the
inputs or resends a stored outbox, and every effect is idempotent (docs/architecture.md,
"The order lifecycle"). The expiry timer only sends ``expire`` commands; the agent decides.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import faust
from pydantic import BaseModel, ConfigDict

from orderstream import tracing
from orderstream.agents.lifecycle.deadlines import DeadlineIndex
from orderstream.agents.lifecycle.faust_io import (
    as_current,
    dead_letter,
    delivered,
    send,
    until_delivered,
)
from orderstream.agents.lifecycle.order_effects import (
    Outgoing,
    RecordProducer,
    send_outbox,
    transition_outbox,
)
from orderstream.agents.lifecycle.order_messages import announced_here, line_outcome
from orderstream.domain.orders import (
    Cancel,
    Expire,
    OrderInput,
    OrderState,
    Override,
    PaymentResult,
    Transition,
    expiry_deadline,
    next_state,
)
from orderstream.errors import InvalidMessageError
from orderstream.logs import record_context
from orderstream.metrics import LifecycleMetrics
from orderstream.settings import Settings
from orderstream.topics import LineDecision, OrderCommand, OrderCommandKind, PaymentOutcome, decode

log = logging.getLogger(__name__)

# How many orders' outboxes a process remembers having sent.
_SENT_MEMORY = 100_000
# An expire command the agent found not due (clocks differ), or lost with a crash, is
# sent again this long after (unless the order moves in the meantime).
_EXPIRE_RETRY_MS = 30_000


class StoredOrder(BaseModel):
    """A value of the orders table: the machine's state, and what the events repeat."""

    model_config = ConfigDict(frozen=True)

    state: OrderState
    # Kafka timestamp of the order's request: every event of the order carries it.
    requested_at_ms: int
    # The effects of the transitions into ``state``, sent after it was durable; sent
    # again by a process that has not sent them yet (see the module docstring).
    outbox: tuple[Outgoing, ...] = ()
    # When it became final (this agent's clock): it leaves the table a retention later.
    final_at_ms: int | None = None


@dataclass(frozen=True)
class OrderAgentContext:
    """What the order agent works with: settings, metrics, its table and topics."""

    settings: Settings
    metrics: LifecycleMetrics
    # The orders table's local store (Faust's table.data): order id -> StoredOrder JSON.
    # Written here, a batch at a time, with its changelog records sent by ``producer``.
    store: MutableMapping[bytes, bytes]
    changelog: str  # the table's changelog topic: the store's truth, co-partitioned
    producer: Callable[[], Awaitable[RecordProducer]]  # started on first use
    order_events: faust.TopicT
    line_outcomes: faust.TopicT
    order_commands: faust.TopicT
    payment_requests: faust.TopicT
    stock_commands: faust.TopicT
    dead_letters: Mapping[str, faust.TopicT]  # source topic name -> its dead-letter topic
    # Orders whose outbox this process has sent (bounded: forgetting one costs a resend).
    sent: OrderedDict[str, None] = field(default_factory=OrderedDict)
    # When each local order next needs the expiry timer (agents/lifecycle/deadlines.py).
    deadlines: DeadlineIndex = field(default_factory=lambda: DeadlineIndex(_EXPIRE_RETRY_MS))

    @property
    def ttl_ms(self) -> int:
        return int(self.settings.order_ttl_s * 1000)

    @property
    def payment_grace_ms(self) -> int:
        return int(self.settings.payment_answer_grace_s * 1000)

    @property
    def lines_wait_ms(self) -> int:
        return int(self.settings.lines_wait_s * 1000)

    @property
    def retention_ms(self) -> int:
        return int(self.settings.order_retention_s * 1000)

    def deadline(self, stored: StoredOrder | None) -> int | None:
        """Return when the expiry timer is next due for ``stored``: the end of its TTL,
        or of its retention once final."""
        if stored is None:
            return None
        if stored.final_at_ms is not None:
            return stored.final_at_ms + self.retention_ms
        if stored.state.status is not None and stored.state.status.is_terminal:
            return 0  # final before final_at_ms was kept: the timer has it stamped now
        return expiry_deadline(
            stored.state, self.ttl_ms, self.payment_grace_ms, lines_wait_ms=self.lines_wait_ms
        )

    def mark_sent(self, order_id: str) -> None:
        self.sent[order_id] = None
        self.sent.move_to_end(order_id)
        if len(self.sent) > _SENT_MEMORY:
            self.sent.popitem(last=False)


@dataclass(frozen=True)
class _Input:
    kind: str  # a metric label: line, payment, cancel, expire, override
    command: OrderInput
    now_ms: int
    requested_at_ms: int | None = None  # known from a line outcome only


@dataclass
class _Touched:
    """One order that a batch's inputs reached: its state as the batch leaves it."""

    stored: StoredOrder | None
    event: faust.EventT[bytes]  # its latest input: of the order's partition, for the table
    resend: tuple[Outgoing, ...]  # a stored outbox this process has not sent
    outbox: list[Outgoing] = field(default_factory=list)  # this batch's effects
    changed: bool = False


@dataclass(frozen=True)
class SourceNames:
    """The full names of the agent's source topics that are not payment results."""

    lines: str
    commands: str


def register_order_agent(app: faust.App, ctx: OrderAgentContext, source: faust.TopicT) -> None:
    """Attach the order agent and the expiry timer to ``app``."""
    names = SourceNames(
        lines=ctx.line_outcomes.get_topic_name(),
        commands=ctx.order_commands.get_topic_name(),
    )
    settings = ctx.settings

    # concurrency=1: one actor, so an order's inputs are applied one at a time, in order.
    # take_events acknowledges a batch's events only once the loop's body has returned
    # for it: after the flush and the sends.
    @app.agent(source, name="orders", concurrency=1)
    async def order_agent(stream: faust.StreamT[bytes]) -> None:
        batches = stream.take_events(  # type: ignore[attr-defined]
            settings.lifecycle_batch_max, settings.lifecycle_batch_wait_ms / 1000
        )
        async for events in batches:
            await handle_batch(ctx, events, names)

    def forget_sent(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        # Another worker may have moved these orders on in the meantime: each order's
        # outbox is sent again on its next input here.
        ctx.sent.clear()

    app.on_partitions_assigned.connect(forget_sent)

    def reindex(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        # The table's partitions changed and are restored: the timer rebuilds its index.
        ctx.deadlines.stale = ctx.deadlines.table_restored = True

    app.on_rebalance_complete.connect(reindex)

    @app.timer(interval=settings.expiry_interval_s, name="expire-unpaid")  # type: ignore[untyped-decorator]
    async def expire_unpaid() -> None:
        await _send_expiries(ctx)


async def handle_batch(
    ctx: OrderAgentContext, events: list[faust.EventT[bytes]], names: SourceNames
) -> None:
    """Apply a fetched batch of inputs; write, flush, then send what they did."""
    touched: dict[str, _Touched] = {}
    for event in events:
        message = event.message
        with (
            tracing.consumer_span(
                tracing.ORDER_SPAN, message.headers, message.topic, message.partition,
                message.offset,
            ),
            as_current(event),
        ):  # fmt: skip
            await _apply_one(ctx, touched, event, names)
    if not touched:
        return
    ctx.metrics.order_batch_size.observe(len(events))
    # A broker error on the way is retried until it passes: the states are written, and
    # flushing and sending them again is harmless (every effect is idempotent).
    await until_delivered(
        f"a batch of {len(events)} order inputs", lambda: _write_and_send(ctx, touched)
    )


async def _apply_one(
    ctx: OrderAgentContext,
    touched: dict[str, _Touched],
    event: faust.EventT[bytes],
    names: SourceNames,
) -> None:
    """Apply one input to its order's state in ``touched``; bad input is dead-lettered."""
    message = event.message
    try:
        item = _decode(message, names)
    except InvalidMessageError as exc:
        await _dead_letter(ctx, message, exc.reason)
        return
    try:
        _apply(ctx, touched, item, event)
    except Exception as exc:
        # Not the message's fault, nor the broker's: a bug in the machine, which gives
        # the same answer every time. Parked with the reason; re-published from the
        # dead-letter topic once fixed, it is applied again.
        log.exception(
            "order input %s/%d@%d failed; dead-lettered",
            message.topic,
            message.partition,
            message.offset,
            extra=record_context(message.topic, message.partition, message.offset),
        )
        await _dead_letter(ctx, message, f"internal error: {exc!r}")


async def _dead_letter(ctx: OrderAgentContext, message: Any, reason: str) -> None:
    ctx.metrics.order_dead_letters.labels(message.topic).inc()
    await until_delivered(
        f"dead-lettering {message.topic}/{message.partition}@{message.offset}",
        lambda: dead_letter(ctx.dead_letters, message, reason),
    )


def _decode(message: Any, names: SourceNames) -> _Input:
    """Return the state machine's input in ``message``."""
    now_ms = int(time.time() * 1000)
    if message.topic == names.lines:
        decision = decode(LineDecision, message.value)
        # The line's decision time starts the expiry clock: a redelivery, or a lagging
        # agent, gives the same state.
        return _Input(
            "line", line_outcome(decision), decision.decided_at_ms, decision.requested_at_ms
        )
    if message.topic == names.commands:
        command = decode(OrderCommand, message.value)
        if command.command is OrderCommandKind.CANCEL:
            return _Input("cancel", Cancel(command.order_id, detail=command.detail), now_ms)
        if command.command is OrderCommandKind.OVERRIDE:
            # OrderCommand validated both: an override names its status and its actor.
            assert command.status is not None
            assert command.actor is not None
            override = Override(command.order_id, command.status, command.actor, command.detail)
            return _Input("override", override, now_ms)
        return _Input("expire", Expire(command.order_id), now_ms)
    outcome = decode(PaymentOutcome, message.value)
    result = PaymentResult(
        outcome.order_id, outcome.paid, outcome.reason, outcome.detail, outcome.expired
    )
    return _Input("payment", result, now_ms)


def _apply(
    ctx: OrderAgentContext, touched: dict[str, _Touched], item: _Input, event: faust.EventT[bytes]
) -> None:
    order_id = item.command.order_id
    order = touched.get(order_id)
    if order is None:
        raw = ctx.store.get(order_id.encode())  # the current event is of its partition
        stored = StoredOrder.model_validate_json(raw) if raw is not None else None
        # Written before a crash, perhaps never sent: sent again with the batch.
        unsent = () if stored is None or order_id in ctx.sent else stored.outbox
        order = touched[order_id] = _Touched(stored, event, unsent)
    order.event = event
    stored = order.stored
    if isinstance(item.command, Expire) and stored is not None and _final(stored):
        if stored.final_at_ms is None:
            # Final before final_at_ms was kept: its retention starts now.
            order.stored, order.changed = (
                stored.model_copy(update={"final_at_ms": item.now_ms}),
                True,
            )
        elif item.now_ms >= stored.final_at_ms + ctx.retention_ms:
            # Final for a retention: it leaves the table (a tombstone in the changelog).
            order.stored, order.changed = None, True
            ctx.metrics.order_inputs.labels(item.kind, "forgotten").inc()
            return
    state = stored.state if stored is not None else None
    transition = next_state(
        state,
        item.command,
        item.now_ms,
        ctx.ttl_ms,
        ctx.payment_grace_ms,
        lines_wait_ms=ctx.lines_wait_ms,
    )
    if transition.ignored is not None:
        ctx.metrics.order_inputs.labels(item.kind, _ignored_label(transition.ignored)).inc()
        _log_ignored(order_id, item, transition.ignored, event.message)
        return
    requested_at_ms = _requested_at(stored, item)
    order.outbox.extend(transition_outbox(ctx, transition, order_id, requested_at_ms))
    if transition.forget:
        order.stored, order.changed = None, stored is not None
    elif transition.state is not None and transition.state is not state:
        status = transition.state.status
        final = status is not None and status.is_terminal
        final_at_ms = stored.final_at_ms if stored is not None else None
        if final and final_at_ms is None:
            final_at_ms = item.now_ms
        order.stored = StoredOrder(
            state=transition.state, requested_at_ms=requested_at_ms, final_at_ms=final_at_ms
        )
        order.changed = True
    ctx.metrics.order_inputs.labels(item.kind, "applied").inc()
    _count_transitions(ctx, transition, order_id, item, event.message)


def _final(stored: StoredOrder) -> bool:
    status = stored.state.status
    return status is not None and status.is_terminal


def _requested_at(stored: StoredOrder | None, item: _Input) -> int:
    """Return the Kafka timestamp of the order's request, as its events carry it."""
    if stored is not None and (stored.state.lines or item.requested_at_ms is None):
        return stored.requested_at_ms
    # Its first line (a cancel that came first knew no request).
    return item.requested_at_ms if item.requested_at_ms is not None else item.now_ms


async def _write_and_send(ctx: OrderAgentContext, touched: dict[str, _Touched]) -> None:
    """Write each changed order once, wait for its changelog record, then send the effects.

    The store is Faust's, and recovery rebuilds it from the changelog as Faust does;
    the records are the ones Faust would write (raw key, raw value, a tombstone for a
    deleted key), in the partition of the order's inputs.
    """
    producer = await ctx.producer()
    writes = []
    for order_id, order in touched.items():
        if not order.changed:
            continue
        key = order_id.encode()
        value = None
        with as_current(order.event):  # the store's database of the order's partition
            if order.stored is None:
                ctx.store.pop(key, None)
            else:
                outbox = (*order.resend, *order.outbox)
                value = order.stored.model_copy(update={"outbox": outbox}).model_dump_json()
                ctx.store[key] = value.encode()
        ctx.deadlines.set(order_id, ctx.deadline(order.stored))
        partition = order.event.message.partition
        encoded = value.encode() if value is not None else None
        writes.append(await producer.send(ctx.changelog, encoded, key=key, partition=partition))
    # The states and their outboxes reach the changelog before any effect leaves.
    await delivered(writes)
    await send_outbox(producer, (out for o in touched.values() for out in (*o.resend, *o.outbox)))
    for order_id in touched:
        ctx.mark_sent(order_id)


def _count_transitions(
    ctx: OrderAgentContext, transition: Transition, order_id: str, item: _Input, message: Any
) -> None:
    for event in transition.events:
        if transition.state is not None and announced_here(transition.state, event):
            ctx.metrics.order_transitions.labels(event.status.value).inc()
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "order %s -> %s (seq %d) on %s at %s/%d@%d",
                order_id,
                event.status.value,
                event.seq,
                item.kind,
                message.topic,
                message.partition,
                message.offset,
                extra=record_context(
                    message.topic, message.partition, message.offset, order_id=order_id
                ),
            )


def _log_ignored(order_id: str, item: _Input, why: str, message: Any) -> None:
    log.debug(
        "order %s: %s ignored (%s) at %s/%d@%d",
        order_id,
        item.kind,
        why,
        message.topic,
        message.partition,
        message.offset,
        extra=record_context(message.topic, message.partition, message.offset, order_id=order_id),
    )


def _ignored_label(why: str) -> str:
    """Return a bounded metric label for why an input changed nothing."""
    if why.startswith("already "):
        return "already_final"
    return why.replace(" ", "_").replace(",", "")[:40]


async def _send_expiries(ctx: OrderAgentContext) -> None:
    """Send an expire command for every local order past its deadline (its TTL, or its
    retention once final): the ones the deadline index says are due."""
    if not ctx.deadlines.table_restored:
        return  # still joining or restoring: the table is not whole yet
    if ctx.deadlines.stale:
        # Once per rebalance: every local order's deadline, from the restored table.
        ctx.deadlines.rebuild(
            (stored.state.order_id, ctx.deadline(stored))
            for stored in map(StoredOrder.model_validate_json, list(ctx.store.values()))
        )
        log.info("expiry index rebuilt: %d local orders have a deadline", len(ctx.deadlines))
    due = ctx.deadlines.due(int(time.time() * 1000))
    if not due:
        return
    sends = []
    for order_id in due:
        command = OrderCommand(order_id=order_id, command=OrderCommandKind.EXPIRE)
        sends.append(await send(ctx.order_commands, order_id, command.model_dump_json().encode()))
    await delivered(sends)
    ctx.metrics.expire_commands.inc(len(due))
    log.info("sent expire commands for %d orders past their deadline or retention", len(due))
