"""Baseline "aiohttp + row lock": the order service a team would write first.

    python -m bench.baseline_http_rowlock --port P --schema S --connections K

POST /orders takes the same JSON as orderstream's door and runs the row-lock baseline's
transaction (bench/baseline_pg.py: lock the product row, check and take the stock,
insert the order, COMMIT) on a connection from a pool, then answers 202 with the
decision. Several processes may serve one port (SO_REUSEPORT), as orderstream's door.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import uvloop
from aiohttp import web
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from bench.baseline_pg import INSERT_ORDER, LOCK_STOCK, TAKE_STOCK

SYSTEM = "aiohttp+pg-rowlock"
POOL = web.AppKey("pool", AsyncConnectionPool)


async def post_order(request: web.Request) -> web.Response:
    try:
        body = json.loads(await request.read())
        order = (str(body["order_id"]), str(body["user_id"]), str(body["product_id"]))
        quantity = int(body["quantity"])
    except (ValueError, KeyError, TypeError):
        return web.json_response({"error": "invalid order request"}, status=422)
    order_id, user_id, product_id = order
    async with request.app[POOL].connection() as conn, conn.transaction():
        cursor = await conn.execute(LOCK_STOCK, (product_id,))
        row = await cursor.fetchone()
        reserved = row is not None and row[0] >= quantity
        if reserved:
            await conn.execute(TAKE_STOCK, (quantity, product_id))
        status = "RESERVED" if reserved else "REJECTED"
        await conn.execute(INSERT_ORDER, (order_id, user_id, product_id, status))
    return web.json_response({"order_id": order_id, "status": status}, status=202)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def create_app(database_url: str, schema: str, connections: int) -> web.Application:
    app = web.Application()

    async def configure(conn: AsyncConnection[Any]) -> None:
        await conn.set_autocommit(True)  # conn.transaction() makes BEGIN ... COMMIT

    async def pool_ctx(app: web.Application) -> Any:
        pool = AsyncConnectionPool(
            database_url,
            min_size=connections,
            max_size=connections,
            kwargs={"options": f"-c search_path={schema}"},
            configure=configure,
            open=False,
        )
        await pool.open(wait=True)
        app[POOL] = pool
        yield
        await pool.close()

    app.cleanup_ctx.append(pool_ctx)
    app.router.add_post("/orders", post_order)
    app.router.add_get("/healthz", healthz)
    return app


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--schema", required=True)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    app = create_app(args.database_url, args.schema, args.connections)
    web.run_app(
        app,
        host=args.host,
        port=args.port,
        reuse_port=True,
        access_log=None,
        print=None,
        loop=uvloop.new_event_loop(),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
