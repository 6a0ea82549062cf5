"""HTTP routes of the status service; every body in or out is JSON."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from psycopg.rows import dict_row

from orderstream.http import admin, intake, openapi
from orderstream.http.encoding import error, model_response
from orderstream.http.keys import KAFKA, POOL, REGISTRY, ROLES, SETTINGS
from orderstream.http.order_commands import publish_order_command
from orderstream.http.queue import QUEUE
from orderstream.http.schemas import (
    PAGE_DEFAULT,
    PAGE_MAX,
    Health,
    Order,
    OrderQueued,
    ProductStock,
    Readiness,
    ReadinessChecks,
    UserOrdersPage,
)
from orderstream.http.shoppers import shopper
from orderstream.http.stock_view import STOCK_FIGURES
from orderstream.http.validation import (
    checked_id,
    cursor_param,
    encode_cursor,
    int_param,
    path_id,
    query_param,
)
from orderstream.topics import OrderCommand, OrderCommandKind

log = logging.getLogger(__name__)

# The largest Kafka offset (a signed 64-bit integer).
MAX_OFFSET = 2**63 - 1

_READY_TIMEOUT_S = 2.0


def add_routes(app: web.Application) -> None:
    """Register every route on ``app``."""
    app.router.add_get("/orders/{order_id}", get_order)
    intake.add_routes(app)  # POST /orders
    app.router.add_post("/orders/{order_id}/cancel", cancel_order)
    app.router.add_get("/users/{user_id}/orders", get_user_orders)
    app.router.add_get("/products/{product_id}", get_product)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi.serve)
    admin.add_routes(app)  # /admin/..., behind the admin token


async def get_order(request: web.Request) -> web.Response:
    """Return an order, its items and its history; 404 when unknown."""
    user = shopper(request)
    order_id = path_id(request, "order_id")
    place = _place(request)  # checked whether or not the order is known yet
    async with request.app[POOL].connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        # jsonb comes back parsed, numeric as Decimal: the model checks both, and answers
        # money as exact strings.
        await cur.execute(
            "SELECT order_id, user_id, status, reason, detail, total, currency,"
            " shipping_address, billing_address, notes, created_at, updated_at"
            " FROM orders WHERE order_id = %s",
            (order_id,),
        )
        order = await cur.fetchone()
        if order is not None and user is not None and order["user_id"] != user:
            order = None  # another user's: as if unknown
        if order is None:
            if place is not None:
                return model_response(await _queued(request, order_id, *place))
            raise error(web.HTTPNotFound, "order not found", order_id=order_id)
        await cur.execute(
            "SELECT product_id, quantity, status, unit_price, currency FROM order_items"
            " WHERE order_id = %s ORDER BY product_id",
            (order_id,),
        )
        items = await cur.fetchall()
        await cur.execute(
            "SELECT seq, status, reason, detail, actor, occurred_at FROM order_events"
            " WHERE order_id = %s ORDER BY seq",
            (order_id,),
        )
        history = await cur.fetchall()
    return model_response(Order.model_validate({**order, "items": items, "history": history}))


def _place(request: web.Request) -> tuple[int, int, str | None] | None:
    """Return the place in line a status_url names (partition, offset, product id), or
    None when it names none (partition and offset come together); 400 if invalid."""
    settings = request.app[SETTINGS]
    partition = int_param(request, "partition", -1, 0, settings.partitions - 1)
    offset = int_param(request, "offset", -1, 0, MAX_OFFSET)
    product_id = query_param(request, "product_id")
    if product_id is not None:
        product_id = checked_id(product_id, "product_id")
    if partition < 0 or offset < 0:
        return None
    return partition, offset, product_id


async def _queued(
    request: web.Request, order_id: str, partition: int, offset: int, product_id: str | None
) -> OrderQueued:
    """Return where an order not decided yet stands: how many requests are ahead of it."""
    try:
        ahead = await request.app[QUEUE].ahead(partition, offset)
    except ConnectionError as exc:
        raise error(web.HTTPServiceUnavailable, "Kafka unavailable, retry later") from exc
    figure = request.app[STOCK_FIGURES].get(product_id) if product_id else None
    return OrderQueued(
        order_id=order_id,
        status="QUEUED",
        partition=partition,
        offset=offset,
        ahead=ahead,
        product_id=product_id,
        available=figure.change.available if figure is not None else None,
    )


async def get_user_orders(request: web.Request) -> web.Response:
    """Return a user's orders, newest first, a page at a time (keyset pagination)."""
    user = shopper(request)
    user_id = path_id(request, "user_id")
    if user is not None and user_id != user:
        raise error(web.HTTPNotFound, "user not found")
    limit = int_param(request, "limit", PAGE_DEFAULT, 1, PAGE_MAX)
    after = cursor_param(request, "after")
    params: list[Any] = [user_id]
    where = "user_id = %s"
    if after is not None:
        where += " AND (created_at, order_id) < (%s, %s)"
        params += after
    async with request.app[POOL].connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT order_id, status, reason, created_at, updated_at FROM orders"  # noqa: S608
            f" WHERE {where} ORDER BY created_at DESC, order_id DESC LIMIT %s",
            (*params, limit),
        )
        rows = await cur.fetchall()
    next_cursor = None
    if len(rows) == limit:
        next_cursor = encode_cursor(rows[-1]["created_at"], rows[-1]["order_id"])
    page = {"user_id": user_id, "orders": rows, "next": next_cursor}
    return model_response(UserOrdersPage.model_validate(page))


async def get_product(request: web.Request) -> web.Response:
    """Return a product's stock from the live view, else from PostgreSQL; 404 when unknown."""
    product_id = path_id(request, "product_id")
    figures = request.app[STOCK_FIGURES]
    # Before the view has caught up it may hold an old figure: PostgreSQL's is newer then.
    figure = figures.get(product_id) if figures.caught_up else None
    if figure is not None:
        return model_response(figure.product_stock(int(time.time() * 1000)))
    async with request.app[POOL].connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT product_id, available, reserved, sold, total_in, version, price, currency,"
            " max_per_user, updated_at FROM product_stock WHERE product_id = %s",
            (product_id,),
        )
        row = await cur.fetchone()
    if row is None:
        raise error(web.HTTPNotFound, "product not found", product_id=product_id)
    # Aged by this process's clock, as a live figure is.
    age_ms = int(time.time() * 1000 - row["updated_at"].timestamp() * 1000)
    stock = {**row, "age_ms": max(0, age_ms), "source": "database"}
    return model_response(ProductStock.model_validate(stock))


async def healthz(request: web.Request) -> web.Response:
    """Say the process is alive."""
    return model_response(Health(status="ok"))


async def readyz(request: web.Request) -> web.Response:
    """Say whether PostgreSQL and Kafka answer and every role runs; 503 naming what fails."""
    postgres, kafka = await asyncio.gather(
        _check("PostgreSQL", _ping_postgres(request.app)),
        _check("Kafka", _ping_kafka(request.app)),
    )
    ready = postgres == kafka == "ok"
    roles = request.app.get(ROLES)
    if roles is not None:  # beside other roles: each must run too
        ready = ready and roles.all_running()
    answer = Readiness(
        ready=ready,
        checks=ReadinessChecks(postgres=postgres, kafka=kafka),
        roles=None if roles is None else roles.describe(),
        process=os.getpid(),
    )
    return model_response(answer, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    """Expose Prometheus metrics."""
    body = generate_latest(request.app[REGISTRY])
    response = web.Response(body=body)
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


async def _check(what: str, probe: Awaitable[None]) -> str:
    """Return ``ok``, or ``failed: <kind>``: never the error's text, which names hosts,
    ports and users to whoever asks /readyz (the log has it)."""
    try:
        await asyncio.wait_for(probe, _READY_TIMEOUT_S)
    except TimeoutError:
        log.warning("readiness: %s did not answer within %.0f s", what, _READY_TIMEOUT_S)
        return "failed: timeout"
    except Exception as exc:
        log.warning("readiness: %s failed: %r", what, exc)
        return f"failed: {type(exc).__name__}"
    return "ok"


async def _ping_postgres(app: web.Application) -> None:
    async with app[POOL].connection(timeout=_READY_TIMEOUT_S) as conn:
        await conn.execute("SELECT 1")


async def _ping_kafka(app: web.Application) -> None:
    producer = await app[KAFKA].producer()
    await producer.client.fetch_all_metadata()


async def cancel_order(request: web.Request) -> web.Response:
    """Ask to cancel an order not paid yet: 202 (applied if it is still RESERVED when
    the order agent sees it, or when it arrives within the TTL), 409 when settled."""
    user = shopper(request)
    order_id = path_id(request, "order_id")
    command = OrderCommand(order_id=order_id, command=OrderCommandKind.CANCEL)
    # With identity on, only the order's own user may cancel it, once it is known.
    return await publish_order_command(
        request, command, "cancelled", unknown_ok=user is None, owner=user
    )
