"""PostgreSQL connections: one pool per process, tables found through the settings' schema."""

from __future__ import annotations

from typing import Any

from psycopg_pool import AsyncConnectionPool

from orderstream.settings import Settings


def connection_kwargs(settings: Settings) -> dict[str, Any]:
    """Return psycopg connect() keyword arguments that select the settings' schema."""
    # The schema name is validated by Settings (lowercase identifier), so it is safe here.
    return {"options": f"-c search_path={settings.database_schema}", "autocommit": False}


def make_pool(settings: Settings, max_size: int = 4) -> AsyncConnectionPool:
    """Return a closed pool; open it with ``await pool.open(wait=True)``."""
    return AsyncConnectionPool(
        settings.database_url.get_secret_value(),
        kwargs=connection_kwargs(settings),
        min_size=1,
        max_size=max_size,
        open=False,
        name="orderstream",
    )
