"""The HTTP intake, POST /orders: validate an order, publish its lines on order-requests.

An order is one line (``product_id`` and ``quantity``), published as one message, or a
list of ``items``, published as one message per line in one Kafka transaction, so that
the stock agent (a read_committed consumer) sees all of its lines or none.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from http import HTTPStatus
from typing import Any
from urllib.parse import quote, urlencode

from aiohttp import web
from aiokafka.errors import KafkaError
from pydantic import BaseModel, ConfigDict, Field, field_validator

from orderstream import tracing
from orderstream.http.encoding import JSON, error, error_body, model_response
from orderstream.http.idempotency import IdempotencyKeys, order_digest
from orderstream.http.keys import METRICS, POOL, SETTINGS
from orderstream.http.publishing import BUSY_RETRY_AFTER_S, ORDER_PUBLISHER, PublisherBusyError
from orderstream.http.rate_limit import limit_user
from orderstream.http.schemas import OrderPublished, SoldOut
from orderstream.http.shoppers import shopper
from orderstream.http.stock_view import STOCK_FIGURES
from orderstream.http.validation import header_id, json_object, validated
from orderstream.producer import OrderLinesPublisher, order_lines
from orderstream.topics import (
    MAX_LINE_COUNT,
    MAX_QUANTITY,
    ORDER_REQUESTS,
    Id,
    OrderMetadata,
    OrderRequest,
)

log = logging.getLogger(__name__)

LINES_PUBLISHER = web.AppKey("lines_publisher", OrderLinesPublisher)
IDEMPOTENCY_KEYS = web.AppKey("idempotency_keys", IdempotencyKeys)

_INVALID = "invalid order request"

# Characters that quote() and quote_plus() leave as they are: an id of only these is
# its own URL spelling.
_PLAIN = re.compile(r"[A-Za-z0-9_.~-]+")

# Fields of a one-line body that a body with items must not have: which would count?
SINGLE_LINE_FIELDS = ("product_id", "quantity", "line_count")


class OrderLine(BaseModel):
    """One item of an order: a product and how many, with the bounds of ``OrderRequest``."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    product_id: Id
    quantity: int = Field(ge=1, le=MAX_QUANTITY, strict=True)


class OrderLines(OrderMetadata):
    """An order of one or more items, each product once, with its metadata (addresses,
    notes) if any; unknown fields are ignored."""

    order_id: Id
    user_id: Id
    items: list[OrderLine] = Field(min_length=1, max_length=MAX_LINE_COUNT)

    @field_validator("items")
    @classmethod
    def _each_product_once(cls, items: list[OrderLine]) -> list[OrderLine]:
        seen: set[str] = set()
        for item in items:
            if item.product_id in seen:
                raise ValueError(f"product {item.product_id!r} is in more than one item")
            seen.add(item.product_id)
        return items


def add_routes(app: web.Application) -> None:
    """Register POST /orders and the transactional producer its orders of several lines use."""
    app.router.add_post("/orders", post_order)
    app.cleanup_ctx.append(_publisher_ctx)
    app[IDEMPOTENCY_KEYS] = IdempotencyKeys(app[SETTINGS].dedup_window_s)


async def _publisher_ctx(app: web.Application) -> AsyncIterator[None]:
    # One transactional producer per process, started on the first order of several lines.
    publisher = OrderLinesPublisher(app[SETTINGS])
    app[LINES_PUBLISHER] = publisher
    yield
    await publisher.close()


async def post_order(request: web.Request) -> web.Response:
    """Validate an order request and publish it; 202 with where to ask for its status."""
    attributes = {"http.request.method": "POST", "http.route": "/orders"}
    # The published lines carry this span's context: the order's trace starts here.
    with tracing.server_span(tracing.INTAKE_SPAN, request.headers, attributes) as span:
        try:
            response = await _publish_order(request)
        except web.HTTPException as exc:
            span.set_attribute("http.response.status_code", exc.status)
            if exc.status >= HTTPStatus.INTERNAL_SERVER_ERROR:
                tracing.set_error(span, exc.reason)
            raise
        span.set_attribute("http.response.status_code", response.status)
        return response


async def _publish_order(request: web.Request) -> web.Response:
    user = shopper(request)  # 401 before the body is read, when identity is on
    body = await json_object(request)
    key = header_id(request, "Idempotency-Key")
    if key is not None and body.setdefault("order_id", key) != key:
        raise error(
            web.HTTPUnprocessableEntity, "Idempotency-Key and order_id differ", order_id=key
        )
    lines = _lines_of(body) if "items" in body else [_single_line(body)]
    if user is not None and lines[0].user_id != user:
        raise error(web.HTTPForbidden, "user_id is not the user the token names")
    place: tuple[int, int] | None = None
    if key is None:
        limit_user(request, lines[0].user_id)
        _refuse_sold_out(request, lines)
        place = await _publish(request, lines)
    else:
        # Only a request with the header pays PostgreSQL's round trip: the key is
        # claimed with the order's digest, and committed once the order is published.
        claims = request.app[IDEMPOTENCY_KEYS]
        async with claims.claim(request.app[POOL], key, order_digest(lines)) as first:
            if first:
                # Refused after the claim (which a 409 or 429 drops): a retry of an order
                # accepted before its product sold out, or its user's limit was reached,
                # gets that 202 again; only a new order counts against the user's rate.
                limit_user(request, lines[0].user_id)
                _refuse_sold_out(request, lines)
                # No place in line in the answer: every retry gets the same 202.
                await _publish(request, lines)
    # Retrying with the same order_id is safe: the stock agent decides an order line once.
    # The answer depends on the validated order alone: a retry gets the first one's.
    order_id = lines[0].order_id
    status_url = f"/orders/{_quoted(order_id)}"
    if place is None:
        answer = OrderPublished(order_id=order_id, status_url=status_url, lines=len(lines))
    else:
        partition, offset = place
        product = lines[0].product_id
        # urlencode's own spelling (quote_plus), without its cost for the usual plain id.
        query = (
            f"partition={partition}&offset={offset}&product_id={product}"
            if _PLAIN.fullmatch(product)
            else urlencode({"partition": partition, "offset": offset, "product_id": product})
        )
        answer = OrderPublished(
            order_id=order_id,
            status_url=f"{status_url}?{query}",
            lines=1,
            partition=partition,
            offset=offset,
        )
    return model_response(answer, status=202)


async def _publish(request: web.Request, lines: list[OrderRequest]) -> tuple[int, int] | None:
    """Publish the order's lines; return a one-line order's partition and offset."""
    settings = request.app[SETTINGS]
    try:
        if len(lines) == 1:
            # One message is atomic already: no transaction on the flash-sale path.
            line = lines[0]
            return await request.app[ORDER_PUBLISHER].publish(
                settings.topic(ORDER_REQUESTS),
                key=line.product_id.encode(),
                value=line.model_dump_json().encode(),
            )
        await request.app[LINES_PUBLISHER].publish(lines)
    except PublisherBusyError:
        request.app[METRICS].busy_refusals.inc()
        raise _busy() from None
    except (ConnectionError, KafkaError) as exc:
        log.warning("order %s not published: %r", lines[0].order_id, exc)
        raise error(web.HTTPServiceUnavailable, "Kafka unavailable, retry later") from None
    return None


def _busy() -> web.HTTPException:
    body = error_body(
        f"too many orders in flight to Kafka: retry after {BUSY_RETRY_AFTER_S} s",
    )
    return web.HTTPServiceUnavailable(
        text=body.model_dump_json(),
        content_type=JSON,
        headers={"Retry-After": str(BUSY_RETRY_AFTER_S)},
    )


def _quoted(order_id: str) -> str:
    return order_id if _PLAIN.fullmatch(order_id) else quote(order_id, safe="")


def _refuse_sold_out(request: web.Request, lines: list[OrderRequest]) -> None:
    """Answer 409 at once when the live stock view says a product of the order has none left.

    A hint, never a decision: before the view has caught up, or for a product it does
    not know, the order is published and the stock agent decides it, as always.
    """
    if not request.app[SETTINGS].http_sold_out_hint:
        return
    product_id = request.app[STOCK_FIGURES].sold_out([line.product_id for line in lines])
    if product_id is not None:
        request.app[METRICS].sold_out_refusals.inc()
        body = SoldOut(error="product sold out", reason="SOLD_OUT", product_id=product_id)
        raise web.HTTPConflict(text=body.model_dump_json(), content_type=JSON)


def _single_line(body: dict[str, Any]) -> OrderRequest:
    line = validated(OrderRequest, body, _INVALID)
    if line.line_count != 1:
        # Its other lines would never come: the line would hold stock for nothing until
        # the order agent gave up waiting. An order of several lines is sent as items.
        raise error(
            web.HTTPUnprocessableEntity,
            f"a one-line order has line_count 1, not {line.line_count}:"
            " send an order of several lines as items",
            order_id=line.order_id,
        )
    return line


def _lines_of(body: dict[str, Any]) -> list[OrderRequest]:
    both = [name for name in SINGLE_LINE_FIELDS if name in body]
    if both:
        raise error(
            web.HTTPUnprocessableEntity,
            f"an order with items takes its products from them: {', '.join(both)} not allowed",
        )
    order = validated(OrderLines, body, _INVALID)
    items = [(item.product_id, item.quantity) for item in order.items]
    return order_lines(order.order_id, order.user_id, items, order)
