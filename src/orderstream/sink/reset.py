"""Empty the tables the sink writes, for a fresh start or a rebuild from Kafka."""

from __future__ import annotations

import logging

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

from orderstream.db import connection_kwargs
from orderstream.errors import ConfigurationError
from orderstream.settings import Settings

log = logging.getLogger(__name__)

# Every table the sink (and the HTTP intake's idempotency keys, from migration 0004)
# writes; schema_migrations stays, so the schema is still up to date afterwards.
RESET_TABLES = ("orders", "order_items", "order_events", "product_stock", "idempotency_keys")


async def reset_tables(settings: Settings) -> dict[str, int]:
    """Empty the tables of ``RESET_TABLES`` that exist; return the rows each held.

    Raise ConfigurationError when the settings' schema holds none of them (not migrated,
    or the wrong schema), and ConnectionError when PostgreSQL does not answer.
    """
    try:
        async with await psycopg.AsyncConnection.connect(
            settings.database_url.get_secret_value(), **connection_kwargs(settings)
        ) as conn:
            counts = await _empty(conn, settings.database_schema)
    except psycopg.OperationalError as exc:
        raise ConnectionError(f"PostgreSQL: {exc}") from exc
    log.info("reset schema %s: %s", settings.database_schema, counts)
    return counts


async def _empty(conn: psycopg.AsyncConnection[TupleRow], schema: str) -> dict[str, int]:
    # One transaction: a sink writing meanwhile waits for the lock, and every row counted
    # is a row deleted.
    async with conn.transaction():
        cursor = await conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relname = ANY(%s) AND c.relkind IN ('r', 'p')",
            (schema, list(RESET_TABLES)),
        )
        present = {row[0] for row in await cursor.fetchall()}
        tables = [table for table in RESET_TABLES if table in present]
        if not tables:
            raise ConfigurationError(
                f"schema {schema} holds none of {', '.join(RESET_TABLES)}: nothing reset "
                "(is ORDERSTREAM_DATABASE_SCHEMA right? `orderstream db migrate` creates them)"
            )
        names = sql.SQL(", ").join(sql.Identifier(schema, table) for table in tables)
        await conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(names))
        counts = {}
        for table in tables:
            cursor = await conn.execute(
                sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table))
            )
            row = await cursor.fetchone()
            counts[table] = int(row[0]) if row else 0
        await conn.execute(sql.SQL("TRUNCATE {}").format(names))
    return counts
