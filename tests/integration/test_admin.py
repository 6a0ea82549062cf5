"""The admin routes on the real stack: the token, restock and price, every order listed, override.

`orderstream run` (stock agent, sink, status service) serves with an admin token; the
stock agent applies what PUT /admin/products publishes, the listing pages over orders
the real pipeline decided while more arrive.
"""

from __future__ import annotations

import asyncio
import json
import random
from datetime import timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from orderstream.http import create_app
from orderstream.topics import ORDER_COMMANDS, PAYMENT_REQUESTS, STOCK_CHANGES, STOCK_COMMANDS
from tests.integration.invariants import assert_invariants
from tests.integration.pipeline import Pipeline, request_json
from tests.integration.test_lifecycle import LIFECYCLE_ENV, _assert_settled, _wait_settled

pytestmark = pytest.mark.integration

TOKEN = "t0ken-for-the-admin-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ROUTES = [
    ("PUT", "/admin/products/sku-any", {"set": 1}),
    ("GET", "/admin/orders", None),
    ("POST", "/admin/orders/o-any/status", {"status": "CANCELLED", "reason": "r", "by": "op"}),
]


async def serve(pipe: Pipeline, **env: str) -> str:
    """Start `orderstream run` with the admin token; return the status service's URL."""
    pipe.start(ORDERSTREAM_ADMIN_TOKEN=TOKEN, **env)
    return await pipe.wait_for_status_service()


async def call(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    body: Any = None,
    headers: dict[str, str] | None = AUTH,
) -> tuple[int, Any]:
    async with http.request(method, url, json=body, headers=headers) as response:
        return response.status, await response.json()


async def latest_stock_change(pipe: Pipeline, product_id: str) -> dict[str, Any]:
    changes = [
        json.loads(record.value)
        for record in await pipe.read_topic(STOCK_CHANGES)
        if record.key == product_id.encode()
    ]
    return max(changes, key=lambda change: change["version"])


async def test_the_token_guards_every_route_and_a_product_is_restocked_and_priced(
    pipeline: Pipeline,
) -> None:
    base = await serve(pipeline)
    async with aiohttp.ClientSession() as http:
        for method, path, body in ROUTES:
            status, answer = await call(http, method, base + path, body, headers=None)
            assert status == 401, (path, answer)
            wrong = {"Authorization": f"Bearer {TOKEN}x"}
            status, answer = await call(http, method, base + path, body, headers=wrong)
            assert (status, answer) == (403, {"error": "wrong admin token"}), path
        # The right token: each route does its work (the order is unknown: 404).
        status, answer = await call(http, "GET", f"{base}/admin/orders")
        assert (status, answer) == (200, {"orders": [], "next": None})
        status, answer = await call(http, "POST", base + ROUTES[2][1], ROUTES[2][2])
        assert (status, answer["error"]) == (404, "order not found")

        # A JSON float price stays exact; the currency defaults to the service's.
        url = f"{base}/admin/products/sku-adm"
        status, restocked = await call(http, "PUT", url, {"set": 10, "price": 19.99})
        assert (status, restocked["operation"]) == (202, "set"), restocked
        await pipeline.wait_for_stock("sku-adm", 10)
        status, added = await call(http, "PUT", url, {"add": 5})
        assert (status, added["operation"]) == (202, "add")
        await pipeline.wait_for_stock("sku-adm", 15)
        priced = {"price": "21.50", "currency": "USD", "max_per_user": 2}
        status, updated = await call(http, "PUT", url, priced)
        assert (status, updated["operation"]) == (202, "update")
        for body, reason in (
            ({}, "nothing to change"),
            ({"set": 1, "add": 1}, "not both"),
            ({"price": 0.00001}, "decimal places"),
            ({"sett": 1}, "Extra inputs"),
        ):
            status, answer = await call(http, "PUT", url, body)
            assert status == 422, (body, answer)
            assert reason in json.dumps(answer), (body, answer)

    # Each answer said where its command went: it is there, exact.
    commands = {
        (record.partition, record.offset): json.loads(record.value)
        for record in await pipeline.read_topic(STOCK_COMMANDS)
    }
    # Each carries an id of its own: the owner applies it once by it (then compared exactly).
    ids = {command.pop("command_id") for command in commands.values()}
    assert len(ids) == len(commands)
    assert commands[answer_at(restocked)] == {
        "product_id": "sku-adm",
        "operation": "set",
        "quantity": 10,
        "order_id": None,
        "price": "19.99",
        "currency": "EUR",
    }
    assert commands[answer_at(added)] == {
        "product_id": "sku-adm",
        "operation": "add",
        "quantity": 5,
        "order_id": None,
    }
    assert commands[answer_at(updated)] == {
        "product_id": "sku-adm",
        "operation": "update",
        "quantity": None,
        "order_id": None,
        "price": "21.5",
        "currency": "USD",
        "max_per_user": 2,
    }
    assert len(commands) == 3  # nothing of a refused body was published

    async def updated_applied() -> bool:
        change = await latest_stock_change(pipeline, "sku-adm")
        return change.get("max_per_user") == 2

    await pipeline.wait_for("the update on stock-changes", updated_applied, timeout=60)
    change = await latest_stock_change(pipeline, "sku-adm")
    assert (change["price"], change["currency"], change["total_in"]) == ("21.5", "USD", 15)

    await pipeline.publish(
        [(b"sku-adm", request_json(f"o-adm-{n}", f"u-{n}", "sku-adm")) for n in range(20)]
    )
    await pipeline.wait_for_orders(20)
    await assert_invariants(pipeline, {"sku-adm": 15}, {f"o-adm-{n}" for n in range(20)})
    assert TOKEN not in pipeline.logs()


def answer_at(answer: dict[str, Any]) -> tuple[int, int]:
    return answer["partition"], answer["offset"]


async def test_kafka_down_is_a_json_503(pipeline: Pipeline) -> None:
    settings = pipeline.settings.model_copy(
        update={"kafka_bootstrap": "127.0.0.1:1", "admin_token": SecretStr(TOKEN)}
    )
    async with (
        TestClient(TestServer(create_app(settings, CollectorRegistry()))) as client,
        client.put("/admin/products/p", json={"set": 1}, headers=AUTH) as response,
    ):
        assert response.status == 503
        assert await response.json() == {"error": "Kafka unavailable, retry later"}


PRODUCTS = {"sku-many": 200, "sku-few": 20}
FIRST = 250


def _orders(start: int, stop: int) -> list[tuple[bytes, bytes]]:
    messages = []
    for n in range(start, stop):
        product = "sku-few" if n % 5 == 0 else "sku-many"
        value = request_json(f"o-{n:04d}", f"u-{n % 13}", product)
        messages.append((product.encode(), value))
    return messages


async def test_every_order_is_listed_once_newest_first_while_more_arrive(
    pipeline: Pipeline,
) -> None:
    base = await serve(pipeline)
    for product_id, quantity in PRODUCTS.items():
        await pipeline.set_stock(product_id, quantity)
        await pipeline.wait_for_stock(product_id, quantity)
    # In batches: many orders share a created_at (ms), so pages split ties on order_id.
    for start in range(0, FIRST, 50):
        await pipeline.publish(_orders(start, start + 50))
    await pipeline.wait_for_orders(FIRST)
    before = {row["order_id"] for row in await pipeline.query("SELECT order_id FROM orders")}
    more = 100

    async def arrive() -> None:
        for start in range(FIRST, FIRST + more, 10):
            await pipeline.publish(_orders(start, start + 10))
            await asyncio.sleep(random.uniform(0, 0.05))

    async with aiohttp.ClientSession() as http:
        arriving = asyncio.create_task(arrive())
        listed: list[dict[str, Any]] = []
        query = "limit=7"
        while True:
            status, page = await call(http, "GET", f"{base}/admin/orders?{query}")
            assert status == 200, page
            assert len(page["orders"]) <= 7
            listed += page["orders"]
            if page["next"] is None:
                break
            query = f"limit=7&after={page['next']}"
            await asyncio.sleep(0.05)  # let orders arrive between the pages
        during = await pipeline.count("SELECT count(*) FROM orders") - len(before)
        await arriving
        assert during > 0, "no order arrived during the walk: it proves nothing"
        ids = [order["order_id"] for order in listed]
        assert len(ids) == len(set(ids)), "an order was listed twice"
        assert before <= set(ids), f"missing: {sorted(before - set(ids))}"
        keys = [(order["created_at"], order["order_id"]) for order in listed]
        assert keys == sorted(keys, reverse=True), "not newest first"
        await pipeline.wait_for_orders(FIRST + more)
        await _filters(pipeline, http, base)

    stock_in = PRODUCTS
    await assert_invariants(pipeline, stock_in, {f"o-{n:04d}" for n in range(FIRST + more)})


async def _walk(http: aiohttp.ClientSession, base: str, query: str) -> list[str]:
    ids: list[str] = []
    after = ""
    while True:
        status, page = await call(http, "GET", f"{base}/admin/orders?{query}&after={after}")
        assert status == 200, (query, page)
        ids += [order["order_id"] for order in page["orders"]]
        if page["next"] is None:
            return ids
        after = page["next"]


async def _filters(pipe: Pipeline, http: aiohttp.ClientSession, base: str) -> None:
    """Each filter lists what PostgreSQL holds for it, newest first, and only that."""
    rows = await pipe.query(
        "SELECT o.order_id, o.user_id, o.status, o.created_at, i.product_id"
        " FROM orders o JOIN order_items i USING (order_id)"
        " ORDER BY o.created_at DESC, o.order_id DESC"
    )
    assert {row["status"] for row in rows} == {"RESERVED", "REJECTED"}
    middle = rows[len(rows) // 2]["created_at"]
    since = (middle - timedelta(milliseconds=1)).isoformat()
    until = (middle + timedelta(milliseconds=1)).isoformat()
    cases: dict[str, tuple[dict[str, str], Any]] = {
        "status": ({"status": "REJECTED"}, lambda row: row["status"] == "REJECTED"),
        "product": ({"product": "sku-few"}, lambda row: row["product_id"] == "sku-few"),
        "user": ({"user": "u-3"}, lambda row: row["user_id"] == "u-3"),
        "since": ({"since": since}, lambda row: row["created_at"] >= middle - _MS),
        "until": ({"until": until}, lambda row: row["created_at"] < middle + _MS),
        "all at once": (
            {"status": "RESERVED", "product": "sku-many", "user": "u-5", "until": until},
            lambda row: (
                (row["status"], row["product_id"], row["user_id"])
                == ("RESERVED", "sku-many", "u-5")
                and row["created_at"] < middle + _MS
            ),
        ),
    }
    for name, (params, keeps) in cases.items():
        query = "limit=9&" + "&".join(
            f"{key}={aiohttp.helpers.quote(value, safe='')}" for key, value in params.items()
        )
        expected = [row["order_id"] for row in rows if keeps(row)]
        assert expected, name  # a filter that keeps nothing would prove nothing
        assert await _walk(http, base, query) == expected, name
    for query, reason in (
        ("status=LOST", "status must be one of"),
        ("since=yesterday", "since must be an ISO 8601 timestamp"),
        ("until=2026-11-26T11:32:22", "until needs a time zone"),
        ("limit=101", "limit must be between 1 and 100"),
        ("after=nope!", "after is not a cursor"),
        ("stauts=REJECTED", "unknown query parameter: this route takes after, limit,"),
    ):
        status, answer = await call(http, "GET", f"{base}/admin/orders?{query}")
        assert status == 400, (query, answer)
        assert reason in answer["error"], (query, answer)


_MS = timedelta(milliseconds=1)


async def test_an_operator_overrides_a_reserved_order_only(pipeline: Pipeline) -> None:
    base = await serve(pipeline)
    await pipeline.set_stock("sku-o", 1)
    await pipeline.wait_for_stock("sku-o", 1)
    for order_id in ("o-reserved", "o-rejected"):  # one at a time: the second finds none
        await pipeline.publish([(b"sku-o", request_json(order_id, "u-o", "sku-o"))])
        await pipeline.wait_for_orders(1 if order_id == "o-reserved" else 2)
    override = {"status": "CONFIRMED", "reason": "paid by bank transfer\nticket 42", "by": "op-ann"}
    async with aiohttp.ClientSession() as http:
        url = f"{base}/admin/orders/%s/status"
        status, answer = await call(http, "POST", url % "o-reserved", override)
        assert (status, answer) == (
            202,
            {"order_id": "o-reserved", "status_url": "/orders/o-reserved"},
        )
        status, answer = await call(http, "POST", url % "o-rejected", override)
        assert status == 409, answer
        assert answer["error"] == "order is REJECTED: only a RESERVED order can be overridden"
        status, answer = await call(http, "POST", url % "o-never", override)
        assert (status, answer["error"]) == (404, "order not found")
        for body in (
            override | {"status": "EXPIRED"},
            override | {"reason": "x" * 1001},
            {"status": "CANCELLED", "reason": "no operator"},
        ):
            status, answer = await call(http, "POST", url % "o-reserved", body)
            assert (status, answer["error"]) == (422, "invalid status override"), body

    commands = [
        (record.key, json.loads(record.value))
        for record in await pipeline.read_topic(ORDER_COMMANDS)
    ]
    assert commands == [
        (
            b"o-reserved",
            {
                "order_id": "o-reserved",
                "command": "override",
                "detail": "paid by bank transfer\nticket 42",
                "status": "CONFIRMED",
                "actor": "op-ann",
            },
        )
    ]
    # Without the order agent (the stock path's test), the order stays where it was.
    await assert_invariants(pipeline, {"sku-o": 1}, {"o-reserved", "o-rejected"})


async def test_an_override_reaches_the_order_agent_and_the_orders_history(
    pipeline: Pipeline,
) -> None:
    base = await serve(pipeline)
    # Payments that take a minute: the orders stay RESERVED until the operator acts.
    slow = {"ORDERSTREAM_PAYMENT_DELAY_MIN_S": "60", "ORDERSTREAM_PAYMENT_DELAY_MAX_S": "60"}
    pipeline.start("orders", **(LIFECYCLE_ENV | slow), ORDERSTREAM_PAYMENT_TIMEOUT_S="120")
    await pipeline.set_stock("sku-ov", 5)
    await pipeline.wait_for_stock("sku-ov", 5)
    await pipeline.publish(
        [
            (b"sku-ov", request_json("o-paid", "u-1", "sku-ov", quantity=2)),
            (b"sku-ov", request_json("o-called", "u-2", "sku-ov", quantity=1)),
        ]
    )
    await pipeline.wait_for_orders(2)

    async def charged() -> bool:
        # The order agent knows both orders once it has asked for their payment: an
        # override reaching it before would find no RESERVED order, and be ignored.
        requests = await pipeline.read_topic(PAYMENT_REQUESTS)
        return {json.loads(record.value)["order_id"] for record in requests} == set(overrides)

    overrides = {
        "o-paid": {"status": "CONFIRMED", "reason": "paid by bank transfer", "by": "op-ann"},
        "o-called": {"status": "CANCELLED", "reason": "the customer called", "by": "op-bob"},
    }
    await pipeline.wait_for("the payments to be asked for", charged, timeout=60, watch="orders")
    async with aiohttp.ClientSession() as http:
        for order_id, override in overrides.items():
            url = f"{base}/admin/orders/{order_id}/status"
            status, answer = await call(http, "POST", url, override)
            assert status == 202, answer
        await _wait_settled(pipeline, 2)
        for order_id, override in overrides.items():
            status, order = await call(http, "GET", f"{base}/orders/{order_id}", headers=None)
            assert status == 200, order
            assert (order["status"], order["reason"]) == (override["status"], "ADMIN_OVERRIDE")
            last = order["history"][-1]
            assert (last["status"], last["reason"], last["detail"], last["actor"]) == (
                override["status"],
                "ADMIN_OVERRIDE",
                override["reason"],
                override["by"],
            )
            # Terminal now: its stock is settled, no override moves it again.
            url = f"{base}/admin/orders/{order_id}/status"
            status, answer = await call(http, "POST", url, override)
            assert status == 409, answer
    allowed = {("CONFIRMED", "ADMIN_OVERRIDE"), ("CANCELLED", "ADMIN_OVERRIDE")}
    await _assert_settled(pipeline, {"sku-ov": 5}, set(overrides), allowed)
    [level] = await pipeline.query("SELECT available, sold FROM product_stock")
    assert level == {"available": 3, "sold": 2}
