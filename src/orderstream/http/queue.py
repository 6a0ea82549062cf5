"""Place in line: where a published request stands before the stock agent decides it.

A one-line order published over HTTP lands at an offset of its product's partition of
``order-requests``; the stock agent decides that partition in offset order. Its committed
offset (the next request it will decide, as of its last commit) tells how many requests
are still ahead: ``offset - committed``. The 202 gives the order's partition and offset,
and its status_url carries them, so any service process can answer GET /orders/{id}
with QUEUED and ``ahead`` until the order is decided (no state kept per order). The
committed offsets are read at most every REFRESH_S, and only while someone asks.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from orderstream.kafka_clients import admin_client
from orderstream.settings import Settings
from orderstream.topics import ORDER_REQUESTS

log = logging.getLogger(__name__)

__all__ = ["QUEUE", "QueueProgress"]

REFRESH_S = 0.25


class QueueProgress:
    """The stock agent's committed offset per partition of order-requests, kept fresh."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._topic = settings.topic(ORDER_REQUESTS)
        self._committed: dict[int, int] = {}
        self._read_at = float("-inf")
        self._lock = asyncio.Lock()
        self._admin: AIOKafkaAdminClient | None = None

    async def ahead(self, partition: int, offset: int) -> int:
        """Return how many requests of ``partition`` before ``offset`` are still to decide
        (0 once the stock agent has committed past it); ConnectionError if Kafka is down."""
        async with self._lock:
            if time.monotonic() - self._read_at >= REFRESH_S:
                await self._refresh()
        return max(0, offset - self._committed.get(partition, 0))

    async def _refresh(self) -> None:
        try:
            if self._admin is None:
                self._admin = admin_client(self._settings)
                await self._admin.start()
            committed = await self._admin.list_consumer_group_offsets(self._settings.app_id)
        except (KafkaError, OSError) as exc:
            await self.close()
            raise ConnectionError(f"Kafka does not answer: {type(exc).__name__}") from exc
        self._committed = {
            tp.partition: meta.offset
            for tp, meta in committed.items()
            if tp.topic == self._topic and meta.offset >= 0
        }
        self._read_at = time.monotonic()

    async def close(self) -> None:
        admin, self._admin = self._admin, None
        if admin is not None:
            try:
                await admin.close()
            except (KafkaError, OSError) as exc:
                log.debug("closing the queue's admin client: %r", exc)


QUEUE = web.AppKey("queue", QueueProgress)
