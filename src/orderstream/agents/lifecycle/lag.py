"""The order lifecycle's consumer lag, as a metric: what its group has not committed past.

Faust's consumer lives in a thread of its own, so the lag is read from outside the
group, as `orderstream audit` reads it: the group's committed offsets against the end
offsets of its four source topics, every few seconds. Every lifecycle process reports
the whole group's lag (take the max over processes, not the sum).
"""

from __future__ import annotations

import logging

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from mode import Service

from orderstream.consumer_lag import group_lag
from orderstream.kafka_clients import admin_client
from orderstream.kafka_security import kafka_options
from orderstream.metrics import LifecycleMetrics
from orderstream.settings import Settings
from orderstream.tables import lifecycle_app_id
from orderstream.topics import LINE_OUTCOMES, ORDER_COMMANDS, PAYMENT_REQUESTS, PAYMENT_RESULTS

log = logging.getLogger(__name__)

LAG_EVERY_S = 5.0
_SOURCES = (LINE_OUTCOMES, ORDER_COMMANDS, PAYMENT_RESULTS, PAYMENT_REQUESTS)


class LifecycleLag(Service):
    """Set ``metrics.lag`` to the lifecycle group's lag every LAG_EVERY_S; started and
    stopped with the Faust app (a dependency)."""

    def __init__(self, settings: Settings, metrics: LifecycleMetrics) -> None:
        super().__init__()
        self._settings = settings
        self._gauge = metrics.lag
        self._admin: AIOKafkaAdminClient | None = None
        self._consumer: AIOKafkaConsumer | None = None

    @Service.task
    async def _measure(self) -> None:
        partitions = [
            TopicPartition(self._settings.topic(topic), p)
            for topic in _SOURCES
            for p in range(self._settings.partitions)
        ]
        group = lifecycle_app_id(self._settings)
        while not self.should_stop:
            try:
                admin, consumer = self._admin, self._consumer
                if admin is None or consumer is None:
                    admin, consumer = await self._connect()
                lag = await group_lag(admin, consumer, group, partitions)
                self._gauge.set(lag or 0)
            except (KafkaError, OSError) as exc:
                log.debug("lifecycle lag not measured: %r", exc)
                await self._close()  # connect again next time
            await self.sleep(LAG_EVERY_S)

    async def _connect(self) -> tuple[AIOKafkaAdminClient, AIOKafkaConsumer]:
        self._admin = admin_client(self._settings)
        self._consumer = AIOKafkaConsumer(**kafka_options(self._settings), enable_auto_commit=False)
        await self._admin.start()
        await self._consumer.start()
        return self._admin, self._consumer

    async def _close(self) -> None:
        admin, consumer, self._admin, self._consumer = self._admin, self._consumer, None, None
        for client in (consumer, admin):
            if client is None:
                continue
            try:
                await (client.stop() if isinstance(client, AIOKafkaConsumer) else client.close())
            except (KafkaError, OSError) as exc:
                log.debug("closing a lag client: %r", exc)

    async def on_stop(self) -> None:
        await self._close()
