"""Publishing one-line orders from the door: many requests in flight, never a queue.

Every request hands its record to the process's one producer and waits for the broker's
acknowledgement of it; records sent while a produce request is in flight travel
together in the next one (aiokafka keeps one in flight per broker), so concurrent
requests share produce requests instead of waiting their turn.

When Kafka is the limit (slow acks, a full producer buffer), waiting would only grow a
queue until the clients time out. So past ``limit`` publishes in flight the door refuses
at once: 503 with Retry-After, which a client retries, and the queue stays bounded.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import Gauge

from orderstream import tracing
from orderstream.kafka_link import KafkaLink

__all__ = ["BUSY_RETRY_AFTER_S", "ORDER_PUBLISHER", "OrderPublisher", "PublisherBusyError"]

# Whole seconds, as Retry-After says them: in-flight publishes clear in milliseconds,
# but a client retrying sooner than a second only adds to the crowd.
BUSY_RETRY_AFTER_S = 1


class PublisherBusyError(Exception):
    """Too many publishes in flight: the record was not sent; retry later."""


class OrderPublisher:
    """Send order records through the process's producer, at most ``limit`` unacknowledged."""

    def __init__(self, link: KafkaLink, limit: int, in_flight: Gauge) -> None:
        self._link = link
        self._limit = limit
        self._in_flight = 0
        self._gauge = in_flight
        in_flight.set_function(lambda: self._in_flight)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def publish(self, topic: str, key: bytes, value: bytes) -> tuple[int, int]:
        """Send one record and wait for its acknowledgement; return its partition and offset.

        Raise PublisherBusyError at once when ``limit`` records are in flight already,
        ConnectionError when Kafka does not answer, KafkaError when it refuses the record.
        """
        if self._in_flight >= self._limit:
            raise PublisherBusyError(f"{self._in_flight} publishes in flight")
        # Counted before the first await: concurrent requests see each other at once.
        self._in_flight += 1
        try:
            producer = await self._link.producer()
            # send() only appends to the producer's batch (it waits only while the
            # buffer is full); the future resolves when the broker has acknowledged.
            delivered = await producer.send(topic, key=key, value=value, headers=tracing.inject())
            metadata = await delivered
        finally:
            self._in_flight -= 1
        return metadata.partition, metadata.offset


ORDER_PUBLISHER = web.AppKey("order_publisher", OrderPublisher)
