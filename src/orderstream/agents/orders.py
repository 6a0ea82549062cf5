"""The order agent: each order's state in a table, moved by ``domain.orders.next_state``.

Keyed by order id, it reads three co-partitioned topics: ``order-events`` (a single-line
order's seq-1 RESERVED event from the stock agent is its line outcome), ``order-commands``
(cancel, expire) and ``payment-results``. For each input it applies the state machine,
sends what the transition names (order events from seq 2 on, stock commits and
releases, the payment request, a refund), and only once the broker has acknowledged
them writes the new state. So a crash at any point either left the state unmoved (the
redelivered input does it all again, and every effect is idempotent: events by (order,
seq) in the sink, commits and releases by order at the stock agent, payments by order
at the provider) or moved with its effects already delivered (the redelivered input
finds the state moved and is ignored).

Multi-line orders are not handled yet: the stock agent's events do not say how many
lines an order has, so every order is taken as a single line (``line_count`` 1).

The expiry timer only scans and sends: it reads the table's local partitions and sends
an ``expire`` command for each reservation past the TTL; the agent decides.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import faust
from faust.types import TableT
from pydantic import BaseModel, ConfigDict

from orderstream.agents.faust_io import dead_letter, delivered, send, until_delivered
from orderstream.domain import OrderStatus, StockOperation
from orderstream.domain.orders import (
    Cancel,
    Expire,
    LineOutcome,
    OrderInput,
    OrderState,
    PaymentResult,
    Transition,
    is_expired,
    next_state,
)
from orderstream.errors import InvalidMessageError
from orderstream.metrics import LifecycleMetrics
from orderstream.settings import Settings
from orderstream.topics import (
    OrderCommand,
    OrderCommandKind,
    OrderEvent,
    PaymentAction,
    PaymentOutcome,
    PaymentRequest,
    StockCommand,
    decode,
)

log = logging.getLogger(__name__)

# A failure that is neither the message's fault nor the broker's (a bug) is retried
# 0.5 + 1 + 2 + 4 s, then the message is dead-lettered with the reason. Broker errors
# are retried until they pass (faust_io.until_delivered).
_ATTEMPTS = 5
_BACKOFF_S = 0.5
# A reservation is found by the timer's scan without parsing every stored order.
_RESERVED_MARK = b'"status":"RESERVED"'


class StoredOrder(BaseModel):
    """A value of the orders table: the machine's state, and what the events repeat."""

    model_config = ConfigDict(frozen=True)

    state: OrderState
    # Kafka timestamp of the order's request: every event of the order carries it.
    requested_at_ms: int


@dataclass(frozen=True)
class OrderAgentContext:
    """What the order agent works with: settings, metrics, its table and topics."""

    settings: Settings
    metrics: LifecycleMetrics
    table: TableT[bytes, bytes]  # order id -> StoredOrder JSON
    order_events: faust.TopicT
    order_commands: faust.TopicT
    payment_requests: faust.TopicT
    stock_commands: faust.TopicT
    dead_letters: Mapping[str, faust.TopicT]  # source topic name -> its dead-letter topic

    @property
    def ttl_ms(self) -> int:
        return int(self.settings.order_ttl_s * 1000)


@dataclass(frozen=True)
class _Input:
    kind: str  # a metric label: line, payment, cancel, expire
    command: OrderInput
    now_ms: int
    requested_at_ms: int | None = None  # known from a line outcome only


def register_order_agent(app: faust.App, ctx: OrderAgentContext, source: faust.TopicT) -> None:
    """Attach the order agent and the expiry timer to ``app``."""
    events_topic = ctx.order_events.get_topic_name()
    commands_topic = ctx.order_commands.get_topic_name()

    # concurrency=1: one actor per agent, so an order's inputs are applied one at a time.
    @app.agent(source, name="orders", concurrency=1)
    async def order_agent(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            await _handle(ctx, event.message, events_topic, commands_topic)

    @app.timer(interval=ctx.settings.expiry_interval_s, name="expire-unpaid")  # type: ignore[untyped-decorator]
    async def expire_unpaid() -> None:
        await _send_expiries(ctx)


async def _handle(ctx: OrderAgentContext, message: Any, events: str, commands: str) -> None:
    """Apply one message; bad input is dead-lettered, anything else retried first."""
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            item = _decode(message, events, commands)
            if item is not None:
                # The effects are sent before the state is written, so a retry after a
                # broker error sends them again (idempotent) and then moves the state.
                await until_delivered(
                    f"{message.topic}/{message.partition}@{message.offset}",
                    partial(_apply, ctx, item, message),
                )
        except InvalidMessageError as exc:
            if message.topic == events:
                # The sink parks a malformed order event on the dead-letter topic already.
                log.warning(
                    "skipping a malformed order event %s/%d@%d: %s",
                    message.topic,
                    message.partition,
                    message.offset,
                    exc.reason,
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
                )
                await asyncio.sleep(_BACKOFF_S * 2 ** (attempt - 1))
                continue
            # The state was not written (effects go first), so a re-published message
            # is applied whole.
            log.exception(
                "giving up on %s/%d@%d after %d attempts",
                message.topic,
                message.partition,
                message.offset,
                attempt,
            )
            ctx.metrics.order_dead_letters.labels(message.topic).inc()
            await dead_letter(ctx.dead_letters, message, f"internal error: {exc!r}")
        return


def _decode(message: Any, events: str, commands: str) -> _Input | None:
    """Return the state machine's input in ``message``; None for what is not one."""
    now_ms = int(time.time() * 1000)
    if message.topic == events:
        event = decode(OrderEvent, message.value)
        # seq 1 is the stock agent's decision; later ones are this agent's own. A
        # rejected single-line order is final at the stock agent.
        if event.seq != 1 or event.status is not OrderStatus.RESERVED:
            return None
        line = LineOutcome(
            order_id=event.order_id,
            user_id=event.user_id,
            product_id=event.product_id,
            quantity=event.quantity,
            line_count=1,
            reserved=True,
        )
        # The reservation's own time starts the expiry clock: a redelivery, or a lagging
        # agent, gives the same state.
        return _Input("line", line, event.decided_at_ms, event.requested_at_ms)
    if message.topic == commands:
        command = decode(OrderCommand, message.value)
        if command.command is OrderCommandKind.CANCEL:
            return _Input("cancel", Cancel(command.order_id, detail=command.detail), now_ms)
        return _Input("expire", Expire(command.order_id), now_ms)
    outcome = decode(PaymentOutcome, message.value)
    result = PaymentResult(outcome.order_id, outcome.paid, outcome.reason, outcome.detail)
    return _Input("payment", result, now_ms)


async def _apply(ctx: OrderAgentContext, item: _Input, message: Any) -> None:
    order_id = item.command.order_id
    key = order_id.encode()
    raw = ctx.table.get(key)
    stored = StoredOrder.model_validate_json(raw) if raw is not None else None
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
        )
        return
    requested_at_ms = stored.requested_at_ms if stored is not None else item.requested_at_ms
    await delivered(await _effects(ctx, transition, order_id, requested_at_ms or item.now_ms))
    ctx.metrics.order_inputs.labels(item.kind, "applied").inc()
    if transition.state is not None and transition.state is not state:
        ctx.table[key] = (
            StoredOrder(state=transition.state, requested_at_ms=requested_at_ms or item.now_ms)
            .model_dump_json()
            .encode()
        )
    for event in transition.events:
        log.info(
            "order %s -> %s (seq %d) on %s at %s/%d@%d",
            order_id,
            event.status.value,
            event.seq,
            item.kind,
            message.topic,
            message.partition,
            message.offset,
        )


async def _effects(
    ctx: OrderAgentContext, transition: Transition, order_id: str, requested_at_ms: int
) -> list[Awaitable[Any]]:
    """Send everything ``transition`` names; return the futures of their delivery."""
    state = transition.state
    sends: list[Awaitable[Any]] = []
    now_ms = int(time.time() * 1000)
    for event in transition.events:
        if event.seq == 1:
            continue  # a single-line order's RESERVED: the stock agent announced it
        assert state is not None  # an event always comes with the state it leads to
        product_id, line = next(iter(state.lines.items()))
        value = OrderEvent(
            order_id=order_id,
            seq=event.seq,
            status=event.status,
            reason=event.reason,
            detail=event.detail,
            user_id=state.user_id,
            product_id=product_id,
            quantity=line.quantity,
            requested_at_ms=requested_at_ms,
            decided_at_ms=now_ms,
        )
        sends.append(await send(ctx.order_events, order_id, value.model_dump_json().encode()))
        ctx.metrics.order_transitions.labels(event.status.value).inc()
    settle = [(StockOperation.RELEASE, line) for line in transition.release]
    settle += [(StockOperation.COMMIT, line) for line in transition.commit]
    for operation, (product_id, quantity) in settle:
        command = StockCommand(
            product_id=product_id, operation=operation, quantity=quantity, order_id=order_id
        )
        # Keyed by product: the stock agent that owns the product applies it.
        sends.append(await send(ctx.stock_commands, product_id, command.model_dump_json().encode()))
    if transition.request_payment:
        assert state is not None
        amount = sum(line.quantity for line in state.lines.values())  # the price, for now
        request = PaymentRequest(order_id=order_id, user_id=state.user_id, amount=amount)
        sends.append(await send(ctx.payment_requests, order_id, request.model_dump_json().encode()))
    if transition.refund:
        refund = PaymentRequest(
            order_id=order_id,
            user_id=state.user_id if state is not None else None,
            action=PaymentAction.REFUND,
        )
        sends.append(await send(ctx.payment_requests, order_id, refund.model_dump_json().encode()))
    return sends


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
        if _RESERVED_MARK not in raw:
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
