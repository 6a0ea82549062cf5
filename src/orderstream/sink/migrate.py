"""Apply the numbered SQL migrations in ``migrations/``, each once, in order."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import resources

import psycopg
from psycopg import sql

from orderstream.db import connection_kwargs
from orderstream.settings import Settings

log = logging.getLogger(__name__)

_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
# Any constant shared by every migrating process: concurrent `db migrate`s queue on it.
_ADVISORY_LOCK = 7_311_001


@dataclass(frozen=True)
class Migration:
    """One numbered SQL file."""

    version: int
    name: str
    sql: str


def load_migrations() -> list[Migration]:
    """Return the packaged migrations sorted by number."""
    found = []
    for entry in resources.files("orderstream.sink").joinpath("migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), entry.name, entry.read_text()))
    return sorted(found, key=lambda m: m.version)


async def migrate(settings: Settings) -> list[str]:
    """Create the schema if needed and apply pending migrations; return the names applied."""
    applied_now = []
    kwargs = connection_kwargs(settings) | {"autocommit": True}
    async with await psycopg.AsyncConnection.connect(
        settings.database_url.get_secret_value(), **kwargs
    ) as conn:
        await conn.execute("SELECT pg_advisory_lock(%s)", (_ADVISORY_LOCK,))
        try:
            await conn.execute(
                sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(
                    sql.Identifier(settings.database_schema)
                )
            )
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            cursor = await conn.execute("SELECT version FROM schema_migrations")
            done = {row[0] for row in await cursor.fetchall()}
            for migration in load_migrations():
                if migration.version in done:
                    continue
                async with conn.transaction():
                    await conn.execute(migration.sql.encode())
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                        (migration.version, migration.name),
                    )
                log.info("applied migration %s", migration.name)
                applied_now.append(migration.name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (_ADVISORY_LOCK,))
    return applied_now


async def drop_schema(settings: Settings) -> None:
    """Drop the deployment's schema and everything in it (tests and benchmarks: their own)."""
    async with await psycopg.AsyncConnection.connect(
        settings.database_url.get_secret_value(), autocommit=True
    ) as conn:
        await conn.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                sql.Identifier(settings.database_schema)
            )
        )
