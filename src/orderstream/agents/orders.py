"""The order agent: each order's state in a table, moved by ``domain.orders.next_state``.

Keyed by order id, it reads four co-partitioned topics: ``order-events`` (a single-line
order's seq-1 RESERVED event from the stock agent is its line outcome), ``line-outcomes``
(the stock agent's decision of each line of an order of several), ``order-commands``
(cancel, expire) and ``payment-results``. For each input it applies the state machine and
does what the transition names: order events, stock commits and releases (per line, to
the partition of the line's product), the payment request, a refund. A single-line
order's first event is the stock agent's; every other event is announced here, from
seq 1 for an order of several lines, and lists the order's items with each line's status.
What a transition sends is built and sent by agents/order_effects.py.

At least once, without losing or contradicting an effect: the new state is written
together with its effects (the order's outbox) and flushed to the changelog before any
effect is sent. A crash before that leaves the state unmoved, and the redelivered input
does it all again. A crash after it leaves the state moved: the redelivered input is
ignored by the machine, but the order's first input after a restart (that one, or
another that came first) sends the outbox again. Every effect is idempotent: events by
(order, seq) in the sink, commits and releases by (order, product) at the stock agent,
charges and refunds by order at the provider. Sending effects only for a state that is
durable is what keeps them consistent: a state lost in a crash never had effects, so a
replay in another order (a cancel or an expiry arriving first) cannot contradict them.

None of the four topics is written in Kafka transactions (the stock agent's producer
is idempotent, not transactional), so Faust's read_uncommitted consumer misses nothing
and sees nothing aborted. An order of several lines arrives whole or not at all one hop
earlier: its lines are published in one transaction on ``order-requests``, which the
stock agent reads read_committed.

The expiry timer only scans and sends: it reads the table's local partitions and sends
an ``expire`` command for each reservation past the TTL; the agent decides.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import faust
from faust.types import TableT
from pydantic import BaseModel, ConfigDict

from orderstream import tracing
from orderstream.agents.faust_io import dead_letter, delivered, send, until_delivered
from orderstream.agents.order_effects import Outgoing, send_outbox, transition_outbox
from orderstream.agents.order_messages import announced_here, line_outcome, single_line_reserved
from orderstream.domain.orders import (
    Cancel,
    Expire,
    OrderInput,
    OrderState,
    Override,
    PaymentResult,
    is_expired,
    next_state,
)
from orderstream.errors import InvalidMessageError
from orderstream.logs import record_context
from orderstream.metrics import LifecycleMetrics
from orderstream.settings import Settings
from orderstream.topics import (
    LineDecision,
    OrderCommand,
    OrderCommandKind,
    OrderEvent,
    PaymentOutcome,
    decode,
)

log = logging.getLogger(__name__)

# A failure that is neither the message's fault nor the broker's (a bug) is retried
# 0.5 + 1 + 2 + 4 s, then the message is dead-lettered with the reason. Broker errors
# are retried until they pass (faust_io.until_delivered).
_ATTEMPTS = 5
_BACKOFF_S = 0.5
# How many orders' outboxes a process remembers having sent.
_SENT_MEMORY = 100_000
# A reservation is found by the timer's scan without parsing every stored order.
_RESERVED_MARK = b'"status":"RESERVED"'
# ... nor every order whose lines are still arriving (it may be missing some for good).
_ASSEMBLING_MARK = b'"status":null'


class StoredOrder(BaseModel):
    """A value of the orders table: the machine's state, and what the events repeat."""

    model_config = ConfigDict(frozen=True)

    state: OrderState
    # Kafka timestamp of the order's request: every event of the order carries it.
    requested_at_ms: int
    # The effects of the transition into ``state``, sent after it was durable; sent
    # again by a process that has not sent them yet (see the module docstring).
    outbox: tuple[Outgoing, ...] = ()


@dataclass(frozen=True)
class OrderAgentContext:
    """What the order agent works with: settings, metrics, its table and topics."""

    settings: Settings
    metrics: LifecycleMetrics
    table: TableT[bytes, bytes]  # order id -> StoredOrder JSON
    order_events: faust.TopicT
    line_outcomes: faust.TopicT
    order_commands: faust.TopicT
    payment_requests: faust.TopicT
    stock_commands: faust.TopicT
    dead_letters: Mapping[str, faust.TopicT]  # source topic name -> its dead-letter topic
    flush: Callable[[], Awaitable[None]]  # wait until everything produced is acknowledged
    # Orders whose outbox this process has sent (bounded: forgetting one costs a resend).
    sent: OrderedDict[str, None] = field(default_factory=OrderedDict)

    @property
    def ttl_ms(self) -> int:
        return int(self.settings.order_ttl_s * 1000)

    def topics(self) -> dict[str, faust.TopicT]:
        """Return the topics effects go to, by full name."""
        return {
            topic.get_topic_name(): topic
            for topic in (
                self.order_events,
                self.order_commands,
                self.payment_requests,
                self.stock_commands,
            )
        }

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


@dataclass(frozen=True)
class SourceNames:
    """The full names of the agent's source topics that are not payment results."""

    events: str
    lines: str
    commands: str


def register_order_agent(app: faust.App, ctx: OrderAgentContext, source: faust.TopicT) -> None:
    """Attach the order agent and the expiry timer to ``app``."""
    names = SourceNames(
        events=ctx.order_events.get_topic_name(),
        lines=ctx.line_outcomes.get_topic_name(),
        commands=ctx.order_commands.get_topic_name(),
    )

    # concurrency=1: one actor per agent, so an order's inputs are applied one at a time.
    @app.agent(source, name="orders", concurrency=1)
    async def order_agent(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            await handle_traced(ctx, event.message, names)

    def forget_sent(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        # Another worker may have moved these orders on in the meantime: each order's
        # outbox is sent again on its next input here.
        ctx.sent.clear()

    app.on_partitions_assigned.connect(forget_sent)

    @app.timer(interval=ctx.settings.expiry_interval_s, name="expire-unpaid")  # type: ignore[untyped-decorator]
    async def expire_unpaid() -> None:
        await _send_expiries(ctx)


async def handle_traced(ctx: OrderAgentContext, message: Any, names: SourceNames) -> None:
    """Apply one message in a span continuing the trace in its headers."""
    with tracing.consumer_span(
        tracing.ORDER_SPAN, message.headers, message.topic, message.partition, message.offset
    ):
        await _handle(ctx, message, names)


async def _handle(ctx: OrderAgentContext, message: Any, names: SourceNames) -> None:
    """Apply one message; bad input is dead-lettered, anything else retried first."""
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            item = _decode(message, names)
            if item is not None:
                # A retry after a broker error finds the state moved or not, and sends
                # what it must (see the module docstring).
                await until_delivered(
                    f"{message.topic}/{message.partition}@{message.offset}",
                    partial(_apply, ctx, item, message),
                )
        except InvalidMessageError as exc:
            if message.topic == names.events:
                # The sink parks a malformed order event on the dead-letter topic already.
                log.warning(
                    "skipping a malformed order event %s/%d@%d: %s",
                    message.topic,
                    message.partition,
                    message.offset,
                    exc.reason,
                    extra=record_context(message.topic, message.partition, message.offset),
                )
                return
            ctx.metrics.order_dead_letters.labels(message.topic).inc()
            await dead_letter(ctx.dead_letters, message, exc.reason)
            return
        except Exception as exc:
            # Not the message's fault, nor the broker's: most likely a bug.
            if attempt < _ATTEMPTS:
                log.warning(
                    "attempt %d on %s/%d@%d failed (%r); retrying",
                    attempt,
                    message.topic,
                    message.partition,
                    message.offset,
                    exc,
                    extra=record_context(message.topic, message.partition, message.offset),
                )
                await asyncio.sleep(_BACKOFF_S * 2 ** (attempt - 1))
                continue
            # Re-published from the dead-letter topic, the message is applied again.
            log.exception(
                "giving up on %s/%d@%d after %d attempts",
                message.topic,
                message.partition,
                message.offset,
                attempt,
                extra=record_context(message.topic, message.partition, message.offset),
            )
            ctx.metrics.order_dead_letters.labels(message.topic).inc()
            await dead_letter(ctx.dead_letters, message, f"internal error: {exc!r}")
        return


def _decode(message: Any, names: SourceNames) -> _Input | None:
    """Return the state machine's input in ``message``; None for what is not one."""
    now_ms = int(time.time() * 1000)
    if message.topic == names.lines:
        decision = decode(LineDecision, message.value)
        # The last line's decision time starts the expiry clock: a redelivery gives the
        # same state.
        return _Input(
            "line", line_outcome(decision), decision.decided_at_ms, decision.requested_at_ms
        )
    if message.topic == names.events:
        event = decode(OrderEvent, message.value)
        line = single_line_reserved(event)
        # The reservation's own time starts the expiry clock: a redelivery, or a lagging
        # agent, gives the same state.
        return _Input("line", line, event.decided_at_ms, event.requested_at_ms) if line else None
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
    result = PaymentResult(outcome.order_id, outcome.paid, outcome.reason, outcome.detail)
    return _Input("payment", result, now_ms)


async def _apply(ctx: OrderAgentContext, item: _Input, message: Any) -> None:
    order_id = item.command.order_id
    key = order_id.encode()
    raw = ctx.table.get(key)
    stored = StoredOrder.model_validate_json(raw) if raw is not None else None
    if stored is not None and stored.outbox and order_id not in ctx.sent:
        # Written before a crash, perhaps never sent: send again (idempotent).
        log.debug(
            "order %s: sending its outbox again (%d records)",
            order_id,
            len(stored.outbox),
            extra=record_context(
                message.topic, message.partition, message.offset, order_id=order_id
            ),
        )
        await send_outbox(ctx.topics(), stored.outbox)
        ctx.mark_sent(order_id)
    state = stored.state if stored is not None else None
    transition = next_state(state, item.command, item.now_ms, ctx.ttl_ms)
    if transition.ignored is not None:
        ctx.metrics.order_inputs.labels(item.kind, _ignored_label(transition.ignored)).inc()
        log.debug(
            "order %s: %s ignored (%s) at %s/%d@%d",
            order_id,
            item.kind,
            transition.ignored,
            message.topic,
            message.partition,
            message.offset,
            extra=record_context(
                message.topic, message.partition, message.offset, order_id=order_id
            ),
        )
        return
    requested_at_ms = stored.requested_at_ms if stored is not None else item.requested_at_ms
    if requested_at_ms is None:  # never: an order's first transition is its line outcome
        requested_at_ms = item.now_ms
    outbox = transition_outbox(ctx, transition, order_id, requested_at_ms)
    if transition.state is not None and transition.state is not state:
        ctx.sent.pop(order_id, None)
        ctx.table[key] = (
            StoredOrder(state=transition.state, requested_at_ms=requested_at_ms, outbox=outbox)
            .model_dump_json()
            .encode()
        )
        # The state and its outbox reach the changelog before any effect leaves.
        await ctx.flush()
    await send_outbox(ctx.topics(), outbox)
    ctx.mark_sent(order_id)
    ctx.metrics.order_inputs.labels(item.kind, "applied").inc()
    for event in transition.events:
        if transition.state is not None and announced_here(transition.state, event):
            ctx.metrics.order_transitions.labels(event.status.value).inc()
        log.info(
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


def _ignored_label(why: str) -> str:
    """Return a bounded metric label for why an input changed nothing."""
    if why.startswith("already "):
        return "already_final"
    return why.replace(" ", "_").replace(",", "")[:40]


async def _send_expiries(ctx: OrderAgentContext) -> None:
    """Send an expire command for every local reservation past the TTL."""
    now_ms = int(time.time() * 1000)
    due: list[str] = []
    for _key, raw in ctx.table.items():
        if _RESERVED_MARK not in raw and _ASSEMBLING_MARK not in raw:
            continue
        state = StoredOrder.model_validate_json(raw).state
        if is_expired(state, now_ms, ctx.ttl_ms):
            due.append(state.order_id)
    if not due:
        return
    sends = []
    for order_id in due:
        command = OrderCommand(order_id=order_id, command=OrderCommandKind.EXPIRE)
        sends.append(await send(ctx.order_commands, order_id, command.model_dump_json().encode()))
    await delivered(sends)
    ctx.metrics.expire_commands.inc(len(due))
    log.info("sent expire commands for %d unpaid reservations", len(due))
