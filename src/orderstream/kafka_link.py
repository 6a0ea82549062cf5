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

from orderstream.kafka_clients import durable_producer
from orderstream.settings import Settings

log = logging.getLogger(__name__)


class KafkaLink:
    """Hand out a started producer; if Kafka was down, try again on the next call."""

    def __init__(self, settings: Settings, **options: Any) -> None:
        """``options`` go to the durable producer (kafka_clients.py) beside its rules."""
        self._settings = settings
        self._options = options
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()

    async def producer(self) -> AIOKafkaProducer:
        """Return a started producer, or raise ConnectionError when Kafka does not answer."""
        if self._producer is not None:  # every request asks: no lock once it is started
            return self._producer
        async with self._lock:
            if self._producer is None:
                producer = durable_producer(self._settings, **self._options)
                try:
                    await producer.start()
                except (KafkaError, OSError) as exc:
                    await producer.stop()
                    bootstrap = self._settings.kafka_bootstrap
                    raise ConnectionError(f"Kafka at {bootstrap}: {exc!r}") from exc
                self._producer = producer
            return self._producer

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
