"""A shared Kafka producer, connected on first need and again after failures.

The status service publishes with one; the order agent writes its table and effects with
another (agents/faust_io.DirectProducer).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

log = logging.getLogger(__name__)


class KafkaLink:
    """Hand out a started producer; if Kafka was down, try again on the next call."""

    def __init__(self, bootstrap: str, **options: Any) -> None:
        """``options`` go to AIOKafkaProducer, beside acks=all and idempotence."""
        self._bootstrap = bootstrap
        self._options = options
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()

    async def producer(self) -> AIOKafkaProducer:
        """Return a started producer, or raise ConnectionError when Kafka does not answer."""
        if self._producer is not None:  # every request asks: no lock once it is started
            return self._producer
        async with self._lock:
            if self._producer is None:
                producer = AIOKafkaProducer(
                    bootstrap_servers=self._bootstrap,
                    acks="all",  # durable on every in-sync replica before it counts
                    # Retries never reorder or double a partition's records.
                    enable_idempotence=True,
                    **self._options,
                )
                try:
                    await producer.start()
                except (KafkaError, OSError) as exc:
                    await producer.stop()
                    raise ConnectionError(f"Kafka at {self._bootstrap}: {exc!r}") from exc
                self._producer = producer
            return self._producer

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
