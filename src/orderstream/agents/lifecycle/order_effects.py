"""What an order's transition sends: its outbox of records, built and sent.

A transition names its effects (domain.orders.Transition); here they become records for
the order agent's outbox: the order events announced here, a stock commit or release per
line (keyed by product, for the stock agent that owns it), the payment request, a refund.
Each record keeps the trace it was made in, so a record sent again after a crash
continues the same trace.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Iterable
from decimal import Decimal
from typing import Any, Protocol

import faust
from pydantic import BaseModel, ConfigDict

from orderstream import tracing
from orderstream.agents.lifecycle.faust_io import delivered
from orderstream.agents.lifecycle.order_messages import announced_here, order_event
from orderstream.domain import StockOperation
from orderstream.domain.orders import Transition
from orderstream.topics import Message, PaymentAction, PaymentRequest, StockCommand


class Outgoing(BaseModel):
    """One effect of a transition: a record to send."""

    model_config = ConfigDict(frozen=True)

    topic: str  # the full name, with the deployment's prefix
    key: str
    value: str  # JSON
    # The trace context of the transition (traceparent, tracestate), kept with the
    # outbox so that a record sent again after a crash continues the same trace.
    trace: dict[str, str] | None = None


class EffectTopics(Protocol):
    """The topics a transition's records go to (the order agent's context has them)."""

    @property
    def order_events(self) -> faust.TopicT: ...

    @property
    def stock_commands(self) -> faust.TopicT: ...

    @property
    def payment_requests(self) -> faust.TopicT: ...


def transition_outbox(
    topics: EffectTopics, transition: Transition, order_id: str, requested_at_ms: int
) -> tuple[Outgoing, ...]:
    """Return everything ``transition`` names, as records to send."""
    state = transition.state
    outbox: list[Outgoing] = []

    trace = tracing.carrier()  # the order agent's span, current while it applies the input

    def add(topic: faust.TopicT, key: str, value: Message) -> None:
        outbox.append(
            Outgoing(
                topic=topic.get_topic_name(), key=key, value=value.model_dump_json(), trace=trace
            )
        )

    now_ms = int(time.time() * 1000)
    for event in transition.events:
        assert state is not None  # an event always comes with the state it leads to
        if announced_here(state, event):
            add(topics.order_events, order_id, order_event(state, event, requested_at_ms, now_ms))
    settle = [(StockOperation.RELEASE, line) for line in transition.release]
    settle += [(StockOperation.COMMIT, line) for line in transition.commit]
    for operation, (product_id, quantity) in settle:
        # Keyed by product: the stock agent that owns the product applies it.
        add(
            topics.stock_commands,
            product_id,
            StockCommand(
                product_id=product_id, operation=operation, quantity=quantity, order_id=order_id
            ),
        )
    if transition.request_payment:
        assert state is not None
        # The total at the prices the lines were decided at (0 for an unpriced order).
        amount, currency = state.total() or (Decimal(0), None)
        add(
            topics.payment_requests,
            order_id,
            PaymentRequest(
                order_id=order_id, user_id=state.user_id, amount=amount, currency=currency
            ),
        )
    if transition.refund:
        add(
            topics.payment_requests,
            order_id,
            PaymentRequest(
                order_id=order_id,
                user_id=state.user_id if state is not None else None,
                action=PaymentAction.REFUND,
            ),
        )
    return tuple(outbox)


class RecordProducer(Protocol):
    """What sends the order agent's records: an aiokafka producer (faust_io.DirectProducer)."""

    async def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
        *,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> Awaitable[Any]: ...


async def send_outbox(producer: RecordProducer, outbox: Iterable[Outgoing]) -> None:
    """Send an outbox and wait until the broker acknowledged all of it."""
    sends = [
        await producer.send(
            out.topic,
            out.value.encode(),
            key=out.key.encode(),
            headers=tracing.as_headers(out.trace),
        )
        for out in outbox
    ]
    await delivered(sends)
