"""HTTP routes of the status service; every body in or out is JSON."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
from datetime import datetime
from typing import Any

import psycopg
from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from psycopg.rows import dict_row
from pydantic import ValidationError

from orderstream.http.keys import KAFKA, POOL, REGISTRY, SETTINGS
from orderstream.topics import ORDER_REQUESTS, OrderRequest

log = logging.getLogger(__name__)

_PAGE_DEFAULT = 20
_PAGE_MAX = 100
_READY_TIMEOUT_S = 2.0


def add_routes(app: web.Application) -> None:
    """Register every route on ``app``."""
    app.router.add_get("/orders/{order_id}", get_order)
    app.router.add_post("/orders", post_order)
    app.router.add_get("/users/{user_id}/orders", get_user_orders)
    app.router.add_get("/products/{product_id}", get_product)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)


def _error(status: type[web.HTTPException], reason: str, **extra: Any) -> web.HTTPException:
    return status(text=json.dumps({"error": reason, **extra}), content_type="application/json")


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer every error with a JSON reason, never an HTML page or a bare traceback."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.content_type == "application/json" or exc.status < 400:
            raise
        raise _error(type(exc), exc.reason) from None
    except psycopg.OperationalError as exc:
        log.warning("PostgreSQL unavailable for %s: %s", request.path, exc)
        raise _error(web.HTTPServiceUnavailable, "database unavailable, retry later") from None


async def get_order(request: web.Request) -> web.Response:
    """Return an order, its items and its history; 404 when unknown."""
    order_id = request.match_info["order_id"]
    async with request.app[POOL].connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT order_id, user_id, status, reason, detail, created_at, updated_at"
            " FROM orders WHERE order_id = %s",
            (order_id,),
        )
        order = await cur.fetchone()
        if order is None:
            raise _error(web.HTTPNotFound, "order not found", order_id=order_id)
        await cur.execute(
            "SELECT product_id, quantity, status FROM order_items WHERE order_id = %s"
            " ORDER BY product_id",
            (order_id,),
        )
        items = await cur.fetchall()
        await cur.execute(
            "SELECT seq, status, reason, occurred_at FROM order_events WHERE order_id = %s"
            " ORDER BY seq",
            (order_id,),
        )
        history = await cur.fetchall()
    return _json({**order, "items": items, "history": history})


async def get_user_orders(request: web.Request) -> web.Response:
    """Return a user's orders, newest first, a page at a time (keyset pagination)."""
    user_id = request.match_info["user_id"]
    limit = _int_param(request, "limit", _PAGE_DEFAULT, 1, _PAGE_MAX)
    after = request.query.get("after")
    params: list[Any] = [user_id]
    where = "user_id = %s"
    if after:
        created_at, order_id = _decode_cursor(after)
        where += " AND (created_at, order_id) < (%s, %s)"
        params += [created_at, order_id]
    async with request.app[POOL].connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT order_id, status, reason, created_at, updated_at FROM orders"  # noqa: S608
            f" WHERE {where} ORDER BY created_at DESC, order_id DESC LIMIT %s",
            (*params, limit),
        )
        rows = await cur.fetchall()
    next_cursor = _encode_cursor(rows[-1]) if len(rows) == limit else None
    return _json({"user_id": user_id, "orders": rows, "next": next_cursor})


async def get_product(request: web.Request) -> web.Response:
    """Return a product's stock as PostgreSQL last saw it; 404 when unknown."""
    product_id = request.match_info["product_id"]
    async with request.app[POOL].connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT product_id, available, reserved, sold, total_in, version, updated_at"
            " FROM product_stock WHERE product_id = %s",
            (product_id,),
        )
        row = await cur.fetchone()
    if row is None:
        raise _error(web.HTTPNotFound, "product not found", product_id=product_id)
    return _json(row)


async def post_order(request: web.Request) -> web.Response:
    """Validate an order request and publish it; 202 with where to ask for its status."""
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise _error(web.HTTPBadRequest, "body is not JSON") from None
    if not isinstance(body, dict):
        raise _error(web.HTTPBadRequest, "body must be a JSON object")
    key = request.headers.get("Idempotency-Key")
    if key is not None and body.setdefault("order_id", key) != key:
        raise _error(
            web.HTTPUnprocessableEntity, "Idempotency-Key and order_id differ", order_id=key
        )
    try:
        order = OrderRequest.model_validate(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False, include_context=False)
        raise _error(web.HTTPUnprocessableEntity, "invalid order request", details=errors) from None
    try:
        producer = await request.app[KAFKA].producer()
    except ConnectionError:
        raise _error(web.HTTPServiceUnavailable, "Kafka unavailable, retry later") from None
    settings = request.app[SETTINGS]
    # Retrying with the same order_id is safe: the stock agent decides an order line once.
    await producer.send_and_wait(
        settings.topic(ORDER_REQUESTS),
        key=order.product_id.encode(),
        value=order.model_dump_json().encode(),
    )
    return _json(
        {"order_id": order.order_id, "status_url": f"/orders/{order.order_id}"}, status=202
    )


async def healthz(request: web.Request) -> web.Response:
    """Say the process is alive."""
    return _json({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Say whether PostgreSQL and Kafka answer; 503 with the failing checks when not."""
    checks = {
        "postgres": await _check(_ping_postgres(request.app)),
        "kafka": await _check(_ping_kafka(request.app)),
    }
    ready = all(value == "ok" for value in checks.values())
    return _json({"ready": ready, "checks": checks}, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    """Expose Prometheus metrics."""
    body = generate_latest(request.app[REGISTRY])
    response = web.Response(body=body)
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


async def _check(probe: Any) -> str:
    try:
        await asyncio.wait_for(probe, _READY_TIMEOUT_S)
    except Exception as exc:
        return f"failed: {exc!r}"
    return "ok"


async def _ping_postgres(app: web.Application) -> None:
    async with app[POOL].connection(timeout=_READY_TIMEOUT_S) as conn:
        await conn.execute("SELECT 1")


async def _ping_kafka(app: web.Application) -> None:
    producer = await app[KAFKA].producer()
    await producer.client.fetch_all_metadata()


def _int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _error(web.HTTPBadRequest, f"{name} must be an integer") from None
    if not low <= value <= high:
        raise _error(web.HTTPBadRequest, f"{name} must be between {low} and {high}")
    return value


def _encode_cursor(row: dict[str, Any]) -> str:
    raw = json.dumps([row["created_at"].isoformat(), row["order_id"]])
    return base64.urlsafe_b64encode(raw.encode()).decode()


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        created_at, order_id = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        return datetime.fromisoformat(created_at), str(order_id)
    except (ValueError, TypeError, binascii.Error):
        raise _error(web.HTTPBadRequest, "after is not a cursor this service gave") from None


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda d: json.dumps(d, default=str))
