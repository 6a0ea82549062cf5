"""Run the audit's queries on PostgreSQL, counting what they find as violations."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any, LiteralString

from psycopg import AsyncCursor, sql

from orderstream.audit.report import EXAMPLES, Check

log = logging.getLogger(__name__)

_SLOW_QUERY_S = 1.0  # a query that took longer is logged


class Reader:
    """Run the audit's queries in one transaction, saying how long each took."""

    def __init__(self, cur: AsyncCursor[dict[str, Any]]) -> None:
        self._cur = cur

    async def rows(
        self, what: str, query: LiteralString | sql.Composed, params: Sequence[Any] = ()
    ) -> list[dict[str, Any]]:
        started = time.monotonic()
        await self._cur.execute(query, params)
        found = await self._cur.fetchall()
        took = time.monotonic() - started
        if took >= _SLOW_QUERY_S:
            log.info("PostgreSQL: %s took %.0f s", what, took)
        return found

    async def count(self, what: str, query: LiteralString) -> int:
        (row,) = await self.rows(what, query)
        return int(row["n"])

    async def violations(
        self,
        check: Check,
        what: str,
        query: LiteralString | sql.Composable,
        params: Sequence[Any] = (),
    ) -> list[dict[str, Any]]:
        """Count the rows of ``query`` as violations of ``check``; return the first few."""
        limited = sql.SQL(
            "SELECT v.*, count(*) OVER () AS total_found FROM ({}) v ORDER BY 1 LIMIT {}"
        ).format(sql.SQL(query) if isinstance(query, str) else query, sql.Literal(EXAMPLES))
        found = await self.rows(what, limited, params)
        check.violations += found[0]["total_found"] if found else 0
        return found
