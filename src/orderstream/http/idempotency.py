"""POST /orders' Idempotency-Key: claimed in PostgreSQL with the order's digest, then published.

The claim (an INSERT of the key and the digest) and the publish share one transaction:
it commits once the order is on Kafka, and rolls back when publishing fails, so a retry
may go through. A concurrent request with the same key waits on the uncommitted row
(PostgreSQL's unique index) until the first one commits, then finds the key taken, or
rolls back, then takes it itself: one of them publishes, none answers 202 for an order
that was never published.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from aiohttp import web
from psycopg_pool import AsyncConnectionPool

from orderstream.http.encoding import error
from orderstream.topics import OrderRequest

log = logging.getLogger(__name__)

# How long a request waits for a connection, then for a concurrent request with its key
# (that one is publishing): past either, it is answered 503 (retry) rather than left hanging.
CONNECTION_TIMEOUT_S = 5.0
LOCK_TIMEOUT_MS = 10_000
# Expired keys are deleted this many at a time: a pass stays short, and one comes again
# soon while a backlog remains.
_EXPIRE_BATCH = 5_000
_EXPIRE_EVERY_S = 60.0
_EXPIRE_BACKLOG_EVERY_S = 1.0

_CLAIM = (
    "INSERT INTO idempotency_keys (key, body_sha256) VALUES (%s, %s)"
    " ON CONFLICT (key) DO NOTHING RETURNING true"
)
_LOCK_TIMEOUT = "SELECT set_config('lock_timeout', %s, true)"  # true: this transaction only
_CLAIMED_WITH = "SELECT body_sha256 FROM idempotency_keys WHERE key = %s"
# SKIP LOCKED: processes expiring at the same time share the work instead of queueing.
_EXPIRE = """
DELETE FROM idempotency_keys WHERE key IN (
    SELECT key FROM idempotency_keys
    WHERE created_at < now() - make_interval(secs => %s)
    LIMIT %s FOR UPDATE SKIP LOCKED
)
"""


def order_digest(lines: Sequence[OrderRequest]) -> bytes:
    """Return the SHA-256 of the validated order: its lines and metadata, canonically.

    Not of the body's bytes: the same order with its fields or items in another order,
    other whitespace or defaults spelt out has the same digest.
    """
    canonical = sorted((line.model_dump(mode="json") for line in lines), key=_product)
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).digest()


def _product(line: dict[str, object]) -> str:
    return str(line["product_id"])


class IdempotencyKeys:
    """Claims of Idempotency-Keys, and their expiry after ``window_s``."""

    def __init__(self, window_s: float) -> None:
        self._window_s = window_s
        self._next_expiry = 0.0  # monotonic: expire on the first claim, then now and then

    @asynccontextmanager
    async def claim(
        self, pool: AsyncConnectionPool, key: str, digest: bytes
    ) -> AsyncIterator[bool]:
        """Claim ``key`` for an order of ``digest`` around its publishing.

        Yield True when this request claimed the key: publish in the block; the claim
        commits when the block ends, and is dropped if it raises. Yield False when an
        earlier request with the same order holds it: the order is published already.
        Raise 422 when the key was claimed for another order, 503 when a request with
        the key is still publishing after LOCK_TIMEOUT_MS.
        """
        async with pool.connection(timeout=CONNECTION_TIMEOUT_S) as conn:
            async with conn.transaction():
                await conn.execute(_LOCK_TIMEOUT, (f"{LOCK_TIMEOUT_MS}ms",))
                claimed = await self._claim(conn, key, digest)
                yield claimed
            await self._expire(conn)

    async def _claim(self, conn: psycopg.AsyncConnection[Any], key: str, digest: bytes) -> bool:
        # Twice at most: the key may expire between the INSERT that found it and the
        # SELECT that reads it; then the second INSERT takes it.
        for _ in range(2):
            try:
                cursor = await conn.execute(_CLAIM, (key, digest))
            except psycopg.errors.LockNotAvailable:
                raise error(
                    web.HTTPServiceUnavailable,
                    "a request with this Idempotency-Key is still being published: retry later",
                    order_id=key,
                ) from None
            if await cursor.fetchone() is not None:
                return True
            cursor = await conn.execute(_CLAIMED_WITH, (key,))
            row = await cursor.fetchone()
            if row is None:
                continue
            if bytes(row[0]) != digest:
                raise error(
                    web.HTTPUnprocessableEntity,
                    f"Idempotency-Key {key!r} was used with a different body",
                    order_id=key,
                )
            return False
        raise RuntimeError(f"Idempotency-Key {key!r} neither claimed nor found")

    async def _expire(self, conn: psycopg.AsyncConnection[Any]) -> None:
        if time.monotonic() < self._next_expiry:
            return
        try:
            cursor = await conn.execute(_EXPIRE, (self._window_s, _EXPIRE_BATCH))
            await conn.commit()
        except psycopg.Error as exc:
            # The order is published and its key committed: the answer stays a 202.
            # The pool rolls the failed transaction back when the connection returns.
            log.warning("expired Idempotency-Keys not deleted: %r", exc)
            self._next_expiry = time.monotonic() + _EXPIRE_EVERY_S
            return
        backlog = cursor.rowcount >= _EXPIRE_BATCH
        self._next_expiry = time.monotonic() + (
            _EXPIRE_BACKLOG_EVERY_S if backlog else _EXPIRE_EVERY_S
        )
        if cursor.rowcount > 0:
            log.info("deleted %d expired Idempotency-Keys", cursor.rowcount)
