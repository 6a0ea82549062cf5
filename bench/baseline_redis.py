"""Baseline "Redis Lua + PostgreSQL": the fast-path flash-sale design.

An atomic Lua script decides against stock held in Redis; the order row is then
written to PostgreSQL. Decisions are fast, but the two stores are not one
transaction: a crash between the script and the INSERT leaves stock taken with no
order row (or a row with no stock if the order were reversed). This benchmark measures
the happy path only, with Redis persistence off (scripts/redis.sh).
"""

from __future__ import annotations

import contextlib

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from bench.baseline_common import (
    Connection,
    Decide,
    check_final_stock,
    check_orders,
    connect,
    event_loop_name,
    measure,
    recreate_schema,
    server_settings,
)
from bench.result import Result
from bench.workload import Request, Workload, combine

SYSTEM = "redis-lua+pg"
SCHEMA = "bench_redis"
KEY_PREFIX = "bench:stock:"
LOAD_CHUNK = 1_000

# Check and decrement in one step: Redis runs a script atomically, so two clients can
# never both take the last unit. A missing key (unknown product) rejects.
RESERVE_LUA = """
local stock = tonumber(redis.call('GET', KEYS[1]))
local quantity = tonumber(ARGV[1])
if stock and stock >= quantity then
    redis.call('DECRBY', KEYS[1], quantity)
    return 1
end
return 0
"""
INSERT_ORDER = "INSERT INTO orders (order_id, user_id, product_id, status) VALUES (%s, %s, %s, %s)"


async def _load_redis(client: aioredis.Redis, workload: Workload) -> None:
    # Only this benchmark's keys: the database may hold other people's data.
    stale = [key async for key in client.scan_iter(match=f"{KEY_PREFIX}*", count=LOAD_CHUNK)]
    for start in range(0, len(stale), LOAD_CHUNK):
        await client.delete(*stale[start : start + LOAD_CHUNK])
    items = [(KEY_PREFIX + product, stock) for product, stock in workload.stock.items()]
    for start in range(0, len(items), LOAD_CHUNK):
        await client.mset(dict(items[start : start + LOAD_CHUNK]))


def _decider(conn: Connection, reserve: AsyncScript) -> Decide:
    async def decide(request: Request) -> None:
        # register_script's call is EVALSHA (EVAL only on the first NOSCRIPT).
        taken = await reserve(keys=[KEY_PREFIX + request.product_id], args=[request.quantity])
        status = "RESERVED" if taken == 1 else "REJECTED"
        # Autocommit: one durable single-row transaction per order.
        await conn.execute(
            INSERT_ORDER, (request.order_id, request.user_id, request.product_id, status)
        )

    return decide


async def _check(conn: Connection, client: aioredis.Redis, workload: Workload) -> list[str]:
    problems, reserved = await check_orders(conn, workload)
    products = list(workload.stock)
    values = await client.mget([KEY_PREFIX + product for product in products])
    final = {p: None if v is None else int(v) for p, v in zip(products, values, strict=True)}
    return problems + check_final_stock(workload, final, reserved)


async def _redis_settings(client: aioredis.Redis) -> dict[str, object]:
    info = await client.info("server")
    config = await client.config_get("save")
    config.update(await client.config_get("appendonly"))
    return {
        "redis_version": info.get("redis_version"),
        "redis_save": config.get("save"),
        "redis_appendonly": config.get("appendonly"),
    }


async def run_redis_lua(
    workload: Workload,
    latency_workload: Workload,
    latency_rate: float,
    database_url: str,
    redis_url: str = "redis://127.0.0.1:56379/0",
    clients: int = 32,
) -> Result:
    """Decide with a Redis Lua script and record orders in PostgreSQL; check both phases."""
    everything = combine(workload, latency_workload)
    async with contextlib.AsyncExitStack() as stack:
        # One connection per client, as for PostgreSQL: no client waits for another's.
        client = aioredis.Redis.from_url(redis_url, max_connections=clients + 1)
        stack.push_async_callback(client.aclose)
        admin = await connect(database_url, SCHEMA)
        stack.push_async_callback(admin.close)
        await recreate_schema(admin, SCHEMA)
        await _load_redis(client, everything)
        reserve = client.register_script(RESERVE_LUA)
        await client.script_load(RESERVE_LUA)  # loaded up front: every timed call is EVALSHA
        connections = []
        for _ in range(clients):  # opened before the clock starts: setup is not measured
            conn = await connect(database_url, SCHEMA)
            stack.push_async_callback(conn.close)
            connections.append(conn)
        result = await measure(
            SYSTEM,
            workload,
            latency_workload,
            latency_rate,
            [_decider(c, reserve) for c in connections],
            database_url,
            SCHEMA,
        )
        result.problems = await _check(admin, client, everything)
        result.correct = not result.problems
        result.settings |= {
            "event_loop": event_loop_name(),
            **await _redis_settings(client),
            **await server_settings(admin),
        }
    return result
