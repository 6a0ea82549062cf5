"""The admin routes, behind the bearer token (http/auth.py): restock and price a product,
list every order, end a RESERVED order by hand.

Like every other writer, they change nothing themselves: a product change is a stock
command for the stock agent, a status override an order command for the order agent.
"""

from __future__ import annotations

import logging
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal, Self, TypeVar

from aiohttp import web
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from psycopg import sql
from psycopg.rows import dict_row
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from orderstream.domain import Currency, OrderStatus, Price, StockOperation
from orderstream.http.auth import admin_only
from orderstream.http.encoding import error, model_response
from orderstream.http.keys import KAFKA, POOL, SETTINGS
from orderstream.http.order_commands import publish_order_command
from orderstream.http.schemas import PAGE_DEFAULT, PAGE_MAX, Body, OrderSummary
from orderstream.http.validation import (
    checked_id,
    cursor_param,
    encode_cursor,
    int_param,
    json_object,
    path_id,
    query_param,
    validated,
)
from orderstream.producer import publish_stock_commands
from orderstream.topics import (
    DETAIL_MAX_LENGTH,
    MAX_QUANTITY,
    NOTES_PATTERN,
    Id,
    OrderCommand,
    OrderCommandKind,
    StockCommand,
)

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)

_LIST_PARAMETERS = frozenset({"status", "product", "user", "since", "until", "limit", "after"})
# Longer than any ISO 8601 timestamp: what is past it is not worth parsing.
_TIMESTAMP_MAX_CHARS = 64


class ProductChange(BaseModel):
    """PUT /admin/products/{product_id}: the stock (set or add), the price, the limit.

    Unknown fields are refused, unlike an order's: a misspelt field would otherwise be
    a 202 that changed nothing the operator meant.
    """

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        # What JSON Schema can say of _one_change, for the OpenAPI document.
        json_schema_extra={
            "minProperties": 1,
            "not": {"required": ["set", "add"]},
            "dependentRequired": {"currency": ["price"]},
        },
    )

    set_to: int | None = Field(
        default=None,
        alias="set",
        ge=0,
        le=MAX_QUANTITY,
        strict=True,
        description="Make the stock on sale exactly this.",
    )
    add: int | None = Field(
        default=None, ge=0, le=MAX_QUANTITY, strict=True, description="Add this to the stock."
    )
    price: Price | None = Field(
        default=None,
        description=(
            "The unit price of lines decided from now on: a decimal string or a JSON number,"
            " kept exact (19.99 is 19.99), at most 4 places."
        ),
        examples=["19.99"],
    )
    currency: Currency | None = Field(
        default=None,
        description="ISO 4217, with a price only; default: the service's ORDERSTREAM_CURRENCY.",
        examples=["EUR"],
    )
    max_per_user: int | None = Field(
        default=None,
        ge=0,
        le=MAX_QUANTITY,
        strict=True,
        description="The most one user may hold or buy; 0 removes the product's own limit.",
    )
    new_sale: bool = Field(
        default=False,
        strict=True,
        description=(
            "With set only: a new sale of the product begins, what each user holds or"
            " bought of it counts from zero again (reservations of the last sale keep"
            " their holds)."
        ),
    )

    @field_validator("price")
    @classmethod
    def _plain(cls, price: Decimal | None) -> Decimal | None:
        # 1e3 is 1000, 19.90 is 19.9, -0 is 0: one spelling (as schemas.decimal_text).
        if price is None:
            return None
        return Decimal(format(abs(price) if price.is_zero() else price.normalize(), "f"))

    @model_validator(mode="after")
    def _one_change(self) -> Self:
        if self.set_to is not None and self.add is not None:
            raise ValueError("give set or add, not both")
        if self.currency is not None and self.price is None:
            raise ValueError("a currency goes with a price")
        if self.new_sale and self.set_to is None:
            raise ValueError("new_sale goes with set: a new sale begins with its stock")
        if all(value is None for value in (self.set_to, self.add, self.price, self.max_per_user)):
            raise ValueError("nothing to change: give set, add, price or max_per_user")
        return self

    def command(self, product_id: str, default_currency: str) -> StockCommand:
        """Return the stock command that makes this change to ``product_id``."""
        if self.set_to is not None:
            operation, quantity = StockOperation.SET, self.set_to
        elif self.add is not None:
            operation, quantity = StockOperation.ADD, self.add
        else:
            operation, quantity = StockOperation.UPDATE, None
        priced = self.price is not None
        return StockCommand(
            product_id=product_id,
            operation=operation,
            quantity=quantity,
            price=self.price,
            currency=(self.currency or default_currency) if priced else None,
            max_per_user=self.max_per_user,
            new_sale=True if self.new_sale else None,
        )


class StockCommandPublished(Body):
    """A product change published on stock-commands: where, for the curious operator."""

    product_id: Id
    operation: StockOperation
    partition: int = Field(ge=0)
    offset: int = Field(ge=0)


class StatusOverride(BaseModel):
    """POST /admin/orders/{order_id}/status: end a RESERVED order, saying why and who."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    status: Literal[OrderStatus.CONFIRMED, OrderStatus.CANCELLED]
    reason: Annotated[
        str,
        StringConstraints(min_length=1, max_length=DETAIL_MAX_LENGTH, pattern=NOTES_PATTERN),
    ] = Field(description="Why, in free text (lines and tabs allowed, no other control).")
    by: Id = Field(description="The operator's id, recorded as the transition's actor.")


class AdminOrderSummary(OrderSummary):
    """One order in the admin list: a user's order summary, and whose it is."""

    user_id: str


class AdminOrdersPage(Body):
    """A page of orders, newest first; ``next`` is the cursor for ``?after=``."""

    orders: list[AdminOrderSummary]
    next: str | None = Field(
        description="Cursor of the next page, or null when this page is the last one."
    )


def add_routes(app: web.Application) -> None:
    """Register the admin routes, each behind the admin token."""
    app.router.add_put("/admin/products/{product_id}", admin_only(put_product))
    app.router.add_get("/admin/orders", admin_only(list_orders))
    app.router.add_post("/admin/orders/{order_id}/status", admin_only(override_status))


async def put_product(request: web.Request) -> web.Response:
    """Publish a stock command for a product: 202 with where it went."""
    product_id = path_id(request, "product_id")
    change = await _validated_body(request, ProductChange, "invalid product change")
    settings = request.app[SETTINGS]
    command = change.command(product_id, settings.currency)
    producer = await _producer(request)
    try:
        [(partition, offset)] = await publish_stock_commands(settings, [command], producer)
    except KafkaError as exc:
        log.warning("stock command for %s not published: %r", product_id, exc)
        raise error(web.HTTPServiceUnavailable, "Kafka unavailable, retry later") from None
    log.info(
        "admin: %s of product %s published at partition %d offset %d",
        command.operation.value,
        product_id,
        partition,
        offset,
    )
    answer = StockCommandPublished(
        product_id=product_id, operation=command.operation, partition=partition, offset=offset
    )
    return model_response(answer, status=202)


async def list_orders(request: web.Request) -> web.Response:
    """Return orders newest first, filtered, a page at a time (keyset pagination).

    Keyset, not offset: a page starts strictly after the previous page's last
    (created_at, order_id), which never changes for an order, so orders arriving during
    a walk never push one onto two pages or past the walk.
    """
    if not set(request.query) <= _LIST_PARAMETERS:
        # A misspelt filter would otherwise list every order as if it were applied.
        known = ", ".join(sorted(_LIST_PARAMETERS))
        raise error(web.HTTPBadRequest, f"unknown query parameter: this route takes {known}")
    conditions: list[sql.Composable] = []
    params: list[Any] = []
    status = query_param(request, "status")
    if status is not None:
        if status not in set(OrderStatus):
            allowed = ", ".join(OrderStatus)
            raise error(web.HTTPBadRequest, f"status must be one of {allowed}")
        conditions.append(sql.SQL("o.status = %s"))
        params.append(status)
    user = query_param(request, "user")
    if user is not None:
        conditions.append(sql.SQL("o.user_id = %s"))
        params.append(checked_id(user, "user"))
    product = query_param(request, "product")
    if product is not None:
        conditions.append(
            sql.SQL(
                "EXISTS (SELECT 1 FROM order_items AS i"
                " WHERE i.order_id = o.order_id AND i.product_id = %s)"
            )
        )
        params.append(checked_id(product, "product"))
    since, until = _timestamp_param(request, "since"), _timestamp_param(request, "until")
    if since is not None:
        conditions.append(sql.SQL("o.created_at >= %s"))
        params.append(since)
    if until is not None:
        conditions.append(sql.SQL("o.created_at < %s"))
        params.append(until)
    limit = int_param(request, "limit", PAGE_DEFAULT, 1, PAGE_MAX)
    after = cursor_param(request, "after")
    if after is not None:
        conditions.append(sql.SQL("(o.created_at, o.order_id) < (%s, %s)"))
        params += after
    where = sql.SQL(" AND ").join(conditions) if conditions else sql.SQL("true")
    query = sql.SQL(
        "SELECT o.order_id, o.user_id, o.status, o.reason, o.created_at, o.updated_at"
        " FROM orders AS o WHERE {} ORDER BY o.created_at DESC, o.order_id DESC LIMIT %s"
    ).format(where)
    async with request.app[POOL].connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        # One more than the page: whether a next page exists, without an empty last one.
        await cur.execute(query, (*params, limit + 1))
        rows = await cur.fetchall()
    page, more = rows[:limit], len(rows) > limit
    next_cursor = encode_cursor(page[-1]["created_at"], page[-1]["order_id"]) if more else None
    return model_response(AdminOrdersPage.model_validate({"orders": page, "next": next_cursor}))


async def override_status(request: web.Request) -> web.Response:
    """Ask the order agent to end a RESERVED order CONFIRMED or CANCELLED: 202.

    404 when PostgreSQL does not know the order, 409 unless it is RESERVED there.
    """
    order_id = path_id(request, "order_id")
    override = await _validated_body(request, StatusOverride, "invalid status override")
    command = OrderCommand(
        order_id=order_id,
        command=OrderCommandKind.OVERRIDE,
        status=override.status,
        detail=override.reason,
        actor=override.by,
    )
    answer = await publish_order_command(request, command, "overridden")
    log.info("admin: %s asked to set order %s %s", override.by, order_id, override.status.value)
    return answer


async def _producer(request: web.Request) -> AIOKafkaProducer:
    try:
        return await request.app[KAFKA].producer()
    except ConnectionError:
        raise error(web.HTTPServiceUnavailable, "Kafka unavailable, retry later") from None


async def _validated_body(request: web.Request, model: type[M], reason: str) -> M:
    # Numbers exact: a price of 19.99 is 19.99, never the float next to it.
    return validated(model, await json_object(request, exact_numbers=True), reason)


def _timestamp_param(request: web.Request, name: str) -> datetime | None:
    """Return the query parameter ``name`` as an aware datetime, or raise 400."""
    raw = query_param(request, name)
    if raw is None:
        return None
    try:
        # upper(): RFC 3339 allows a lowercase t and z, fromisoformat does not.
        moment = datetime.fromisoformat(raw.upper()) if len(raw) <= _TIMESTAMP_MAX_CHARS else None
    except ValueError:
        moment = None
    if moment is None:
        raise error(
            web.HTTPBadRequest, f"{name} must be an ISO 8601 timestamp: 2026-11-26T11:32:22Z"
        )
    if moment.tzinfo is None:
        # PostgreSQL would read it in its session's time zone: say which one is meant.
        raise error(
            web.HTTPBadRequest, f"{name} needs a time zone: Z or +hh:mm (a + encoded as %2B)"
        )
    return moment
