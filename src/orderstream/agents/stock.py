"""The stock agent: single writer of the stock of the products its partitions own.

Thin by design: decode, call the domain rule, write the tables, send. Every effect is
idempotent so that at-least-once redelivery changes nothing: a request's decision is
recorded as a hold and re-sent on a duplicate; a stock command is applied only when its
offset is above the product's last applied one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import faust
from faust.types import TableT

from orderstream.agents.decider import Decider
from orderstream.domain import (
    StockLevel,
    owner_partition,
)
from orderstream.errors import InvalidMessageError
from orderstream.metrics import WorkerMetrics
from orderstream.settings import Settings
from orderstream.tables import Hold, hold_key
from orderstream.topics import (
    OrderRequest,
    StockChange,
    StockCommand,
    dead_letter_headers,
    decode,
)

log = logging.getLogger(__name__)

# Retries of an unexpected (non-input) failure: 0.2 + 0.4 + 0.8 + 1.6 s, then dead-letter.
_ATTEMPTS = 5
_BACKOFF_S = 0.2


class Emit(Protocol):
    """Send a record to a topic; delivery is awaited by the commit, not by the caller."""

    async def __call__(self, topic: str, key: bytes, value: bytes) -> None: ...


@dataclass(frozen=True)
class StockAgentContext:
    """What the stock agent works with: settings, metrics, topics and tables."""

    settings: Settings
    metrics: WorkerMetrics
    requests: faust.TopicT
    commands: faust.TopicT
    source: faust.TopicT  # both of the above, consumed by one agent
    order_events: str  # topic names: outputs go straight to the producer (see emit)
    stock_changes: str
    dead_letters: Mapping[str, faust.TopicT]  # source topic name -> its DLQ
    stock: TableT[bytes, bytes]  # product id -> StockLevel JSON
    holds: TableT[bytes, bytes]  # hold_key(order, product) -> Hold JSON
    emit: Emit  # send an output record; flushed before every offset commit
    decider: Decider  # the decision and its metrics, shared with the batch engine


def register_stock_agent(app: faust.App, ctx: StockAgentContext) -> None:
    """Attach the stock agent to ``app``."""
    requests_topic = ctx.requests.get_topic_name()

    # concurrency=1: one coroutine per partition is what makes it the single writer.
    @app.agent(ctx.source, name="stock", concurrency=1)
    async def stock_agent(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            message = event.message
            await _handle(ctx, message, requests_topic)


async def _handle(ctx: StockAgentContext, message: Any, requests_topic: str) -> None:
    """Process one message; bad input is dead-lettered, anything else retried first."""
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            if message.topic == requests_topic:
                await _on_request(ctx, message)
            else:
                await _on_command(ctx, message)
        except InvalidMessageError as exc:
            await _dead_letter(ctx, message, exc.reason)
            return
        except Exception as exc:
            # Not the message's fault (as far as we can tell): retry with backoff, since
            # dead-lettering a valid order would leave it undecided.
            if attempt < _ATTEMPTS:
                log.warning(
                    "attempt %d failed on %s/%d@%d (%r); retrying",
                    attempt,
                    message.topic,
                    message.partition,
                    message.offset,
                    exc,
                )
                await asyncio.sleep(_BACKOFF_S * 2 ** (attempt - 1))
                continue
            # Still failing: a bug, not a blip. Park the message with the reason rather
            # than stop the partition; it can be re-published from the dead-letter topic.
            log.exception(
                "giving up on %s/%d@%d after %d attempts; sent to the dead-letter topic",
                message.topic,
                message.partition,
                message.offset,
                attempt,
            )
            await _dead_letter(ctx, message, f"internal error: {exc!r}")
        return


async def _on_request(ctx: StockAgentContext, message: Any) -> None:
    request = decode(OrderRequest, message.value)
    if await _forwarded(ctx, ctx.requests, message, request.product_id):
        return
    key = hold_key(request.order_id, request.product_id)
    recorded = ctx.holds.get(key)
    stock: StockChange | None = None
    if recorded is not None:
        hold = Hold.model_validate_json(recorded)
        ctx.metrics.duplicates.inc()
        log.debug(
            "duplicate of order %s on %s/%d@%d: re-sending its decision",
            request.order_id,
            message.topic,
            message.partition,
            message.offset,
        )
    else:
        product_key = request.product_id.encode()
        hold, new_level = ctx.decider.reserve(
            _stock_level(ctx, product_key), request, int(message.timestamp * 1000)
        )
        if new_level is not None:
            ctx.stock[product_key] = new_level.model_dump_json().encode()
            stock = StockChange.of(request.product_id, new_level, hold.decided_at_ms)
        ctx.holds[key] = hold.model_dump_json().encode()
    await _send_decision(ctx, hold, stock)


async def _send_decision(ctx: StockAgentContext, hold: Hold, stock: StockChange | None) -> None:
    # The stock snapshot rides along on the decision (one send, not two); a re-sent
    # duplicate carries none.
    event = hold.decision_event(stock)
    await ctx.emit(ctx.order_events, hold.order_id.encode(), event.model_dump_json().encode())


async def _on_command(ctx: StockAgentContext, message: Any) -> None:
    command = decode(StockCommand, message.value)
    if await _forwarded(ctx, ctx.commands, message, command.product_id):
        return
    product_key = command.product_id.encode()
    new_level = ctx.decider.apply_command(_stock_level(ctx, product_key), command, message.offset)
    if new_level is None:
        return
    ctx.stock[product_key] = new_level.model_dump_json().encode()
    log.info(
        "stock %s %s %d on %s/%d@%d: available %d",
        command.operation.value,
        command.product_id,
        command.quantity,
        message.topic,
        message.partition,
        message.offset,
        new_level.available,
    )
    change = StockChange.of(command.product_id, new_level, int(time.time() * 1000))
    await ctx.emit(
        ctx.stock_changes, command.product_id.encode(), change.model_dump_json().encode()
    )


def _stock_level(ctx: StockAgentContext, product_key: bytes) -> StockLevel | None:
    raw = ctx.stock.get(product_key)
    return StockLevel.model_validate_json(raw) if raw is not None else None


async def _forwarded(
    ctx: StockAgentContext, topic: faust.TopicT, message: Any, product_id: str
) -> bool:
    """Forward a message that arrived on a partition not owning its product; say if it did."""
    owner = owner_partition(product_id, ctx.settings.partitions)
    if owner == message.partition:
        return False
    log.info(
        "product %s is owned by partition %d; forwarding %s/%d@%d there",
        product_id,
        owner,
        message.topic,
        message.partition,
        message.offset,
    )
    await topic.send(key=product_id.encode(), value=message.value, partition=owner)
    ctx.metrics.forwarded.labels(topic.get_topic_name()).inc()
    return True


async def _dead_letter(ctx: StockAgentContext, message: Any, reason: str) -> None:
    log.warning(
        "dead letter from %s/%d@%d: %s", message.topic, message.partition, message.offset, reason
    )
    await ctx.dead_letters[message.topic].send(
        key=message.key,
        value=message.value,  # the original bytes, untouched (None stays a null value)
        headers=dead_letter_headers(message.topic, message.partition, message.offset, reason),
    )
    ctx.metrics.dead_letters.labels(message.topic).inc()
