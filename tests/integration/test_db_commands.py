"""`orderstream db seed` and `db reset`, run as an operator runs them, on the real stack."""

from __future__ import annotations

import asyncio
import json
import sys
from decimal import Decimal
from typing import Any

import aiohttp
import pytest

from orderstream.seed import sample_price
from orderstream.topics import STOCK_CHANGES
from tests.integration.invariants import assert_invariants
from tests.integration.pipeline import Pipeline, request_json
from tests.integration.test_replay import reset_sink_offsets, sink_caught_up

pytestmark = pytest.mark.integration

SEEDED = 12
SEED_STOCK = 5
SEED = ("db", "seed", "--products", str(SEEDED), "--stock", str(SEED_STOCK), "--prefix", "seed-")
RESET_TABLES = ("orders", "order_items", "order_events", "product_stock", "idempotency_keys")


async def orderstream(pipe: Pipeline, *argv: str, **env: str) -> tuple[int, str, str]:
    """Run an `orderstream` command with the test's settings; return status, stdout, stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "orderstream",
        *argv,
        env=pipe.env() | env,
        cwd=pipe.workdir,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    print(out.decode(), err.decode())  # shown when the test fails
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def stock_rows(pipe: Pipeline) -> dict[str, dict[str, Any]]:
    rows = await pipe.query("SELECT * FROM product_stock")
    return {row["product_id"]: row for row in rows}


async def latest_stock_changes(pipe: Pipeline) -> dict[str, dict[str, Any]]:
    """Return each product's newest record on stock-changes."""
    latest: dict[str, dict[str, Any]] = {}
    for record in await pipe.read_topic(STOCK_CHANGES):
        change = json.loads(record.value)
        if change["version"] >= latest.get(change["product_id"], {"version": -1})["version"]:
            latest[change["product_id"]] = change
    return latest


async def existing_tables(pipe: Pipeline) -> list[str]:
    rows = await pipe.query(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
        (pipe.settings.database_schema,),
    )
    present = {row["table_name"] for row in rows}
    return [table for table in RESET_TABLES if table in present]


async def test_seed_puts_sample_products_on_sale_and_a_second_run_sets_them_again(
    pipeline: Pipeline,
) -> None:
    pipeline.start()
    products = [f"seed-{n:03d}" for n in range(1, SEEDED + 1)]
    status, out, _ = await orderstream(pipeline, *SEED)
    assert status == 0
    lines = out.splitlines()
    assert lines[0] == f"publishing {SEEDED} sample products to {pipeline.topic('stock-commands')}"
    assert f"  {SEEDED}/{SEEDED} published (100 %)" in lines
    assert lines[-1].startswith(f"seeded {SEEDED} products (seed-001 .. seed-012), 5 units each")
    assert lines[-1].endswith("GET /products/seed-001 shows one")

    async def on_sale() -> bool:
        rows = await stock_rows(pipeline)
        return all(p in rows and rows[p]["total_in"] == SEED_STOCK for p in products)

    await pipeline.wait_for("the sample products in product_stock", on_sale)
    assert sorted(await stock_rows(pipeline)) == products
    # Each with its price, in the settings' currency, and no limit of its own.
    changes = await latest_stock_changes(pipeline)
    for number, product_id in enumerate(products, start=1):
        change = changes[product_id]
        assert Decimal(change["price"]) == sample_price(number), change
        assert change["currency"] == "EUR", change
        assert "max_per_user" not in change, change
    if await pipeline.query(
        "SELECT 1 FROM information_schema.columns WHERE table_schema = %s"
        " AND table_name = 'product_stock' AND column_name = 'price'",
        (pipeline.settings.database_schema,),
    ):  # migration 0003: the sink keeps the catalog too
        rows = await stock_rows(pipeline)
        assert {p: (rows[p]["price"], rows[p]["currency"]) for p in products} == {
            p: (sample_price(n), "EUR") for n, p in enumerate(products, start=1)
        }
    url = f"http://127.0.0.1:{pipeline.settings.http_port}/products/seed-001"
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        assert response.status == 200
        assert (await response.json())["available"] == SEED_STOCK

    # An operator changes one product's catalog, and only its catalog.
    status, out, _ = await orderstream(
        pipeline, "stock", "update", "seed-003", "--price", "1.50", "--limit", "2"
    )
    assert status == 0
    assert out.startswith("stock update seed-003 at 1.50 EUR at most 2 per user: published to ")

    async def updated() -> bool:
        change = (await latest_stock_changes(pipeline))["seed-003"]
        return change.get("max_per_user") == 2

    await pipeline.wait_for("the catalog update", updated)
    change = (await latest_stock_changes(pipeline))["seed-003"]
    assert (Decimal(change["price"]), change["total_in"], change["available"]) == (
        Decimal("1.50"),
        SEED_STOCK,
        SEED_STOCK,
    )

    # Something is bought, then the seed runs again: the available stock is set again,
    # what was reserved stays reserved, the samples' catalog is as the seed made it.
    orders = [("seed-001", 1)] * 3 + [("seed-002", 2)] * 2
    await pipeline.publish(
        (p.encode(), request_json(f"o-{n}", f"u-{n}", p, quantity=q))
        for n, (p, q) in enumerate(orders)
    )
    await pipeline.wait_for_orders(len(orders))
    status, out, _ = await orderstream(pipeline, *SEED)
    assert status == 0
    stock_in = dict.fromkeys(products, SEED_STOCK) | {"seed-001": 8, "seed-002": 9}

    async def set_again() -> bool:
        rows = await stock_rows(pipeline)
        if any(rows[p]["total_in"] != total for p, total in stock_in.items()):
            return False
        return "max_per_user" not in (await latest_stock_changes(pipeline))["seed-003"]

    await pipeline.wait_for("the second seed", set_again)
    change = (await latest_stock_changes(pipeline))["seed-003"]
    assert (Decimal(change["price"]), change.get("max_per_user")) == (sample_price(3), None)
    rows = await stock_rows(pipeline)
    assert (rows["seed-001"]["available"], rows["seed-001"]["reserved"]) == (5, 3)
    assert (rows["seed-002"]["available"], rows["seed-002"]["reserved"]) == (5, 4)
    await assert_invariants(pipeline, stock_in, {f"o-{n}" for n in range(len(orders))})


async def test_reset_refuses_without_yes_empties_with_it_and_kafka_rebuilds(
    pipeline: Pipeline,
) -> None:
    pipeline.start()
    await pipeline.set_stock("sku-reset", 3)
    await pipeline.wait_for_stock("sku-reset", 3)
    await pipeline.publish(
        (b"sku-reset", request_json(f"r-{n}", f"u-{n}", "sku-reset")) for n in range(4)
    )
    await pipeline.wait_for_orders(4)
    await pipeline.wait_for("the sink to commit", lambda: sink_caught_up(pipeline))
    accepted = {f"r-{n}" for n in range(4)}  # 3 reserved, 1 OUT_OF_STOCK
    await assert_invariants(pipeline, {"sku-reset": 3}, accepted)
    tables = await existing_tables(pipeline)
    before = {table: await pipeline.count(f"SELECT count(*) FROM {table}") for table in tables}
    assert before["orders"] == before["order_events"] == 4
    assert before["product_stock"] == 1

    # Without --yes: refused, saying what it would delete, and nothing is deleted.
    status, out, err = await orderstream(pipeline, "db", "reset")
    assert (status, out) == (2, "")
    assert err.count("\n") == 1
    assert "would delete every row of orders, order_items, order_events, product_stock" in err
    assert f"in schema {pipeline.settings.database_schema}" in err
    assert "Kafka keeps its history" in err
    assert {t: await pipeline.count(f"SELECT count(*) FROM {t}") for t in tables} == before

    # A schema with none of the tables: nothing to reset, said plainly.
    status, _, err = await orderstream(
        pipeline, "db", "reset", "--yes", ORDERSTREAM_DATABASE_SCHEMA="no_such_schema_here"
    )
    assert status == 1
    assert "schema no_such_schema_here holds none of orders" in err

    # With --yes, the sink stopped first as the help says: every row deleted and counted.
    pipeline.stop()
    status, out, _ = await orderstream(pipeline, "db", "reset", "--yes")
    assert status == 0
    counts = ", ".join(f"{table} {rows}" for table, rows in before.items())
    assert out == f"rows deleted in schema {pipeline.settings.database_schema}: {counts}\n"
    for table in tables:
        assert await pipeline.count(f"SELECT count(*) FROM {table}") == 0, table
    migrated = await pipeline.count("SELECT count(*) FROM schema_migrations")
    assert migrated >= 2  # the schema stays migrated

    # Kafka kept the history: the sink's group reset as the help says rebuilds the tables.
    reset_sink_offsets(pipeline)
    pipeline.start()
    await pipeline.wait_for_orders(4)
    await pipeline.wait_for("the rebuild", lambda: sink_caught_up(pipeline))
    await pipeline.wait_for_stock("sku-reset", 3)
    await assert_invariants(pipeline, {"sku-reset": 3}, accepted)
