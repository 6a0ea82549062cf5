"""Kafka administration: create the topics up front, check their partition counts."""

from __future__ import annotations

import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from orderstream.errors import TopicMismatchError
from orderstream.settings import Settings
from orderstream.topics import TopicSpec, topic_specs

log = logging.getLogger(__name__)


async def create_topics(settings: Settings) -> list[str]:
    """Create every missing topic; return the names created. Existing ones are checked."""
    specs = topic_specs(settings)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [spec for spec in specs if spec.name not in existing]
        if missing:
            try:
                await admin.create_topics(
                    [
                        NewTopic(
                            spec.name,
                            spec.partitions,
                            settings.replication_factor,
                            topic_configs=spec.config,
                        )
                        for spec in missing
                    ]
                )
            except TopicAlreadyExistsError:
                log.info("topics were created concurrently; checking them")
        await _check_partitions(admin, specs)
    finally:
        await admin.close()
    return [spec.name for spec in missing]


async def check_topics(settings: Settings) -> None:
    """Raise TopicMismatchError unless every topic exists with the configured partitions."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        await _check_partitions(admin, topic_specs(settings))
    finally:
        await admin.close()


async def _check_partitions(admin: AIOKafkaAdminClient, specs: list[TopicSpec]) -> None:
    described = await admin.describe_topics([spec.name for spec in specs])
    counts = {t["topic"]: len(t["partitions"]) for t in described if not t["error_code"]}
    problems = []
    for spec in specs:
        found = counts.get(spec.name)
        if found is None:
            problems.append(f"{spec.name}: missing (run `orderstream topics create`)")
        elif found != spec.partitions:
            problems.append(f"{spec.name}: {found} partitions, expected {spec.partitions}")
    if problems:
        raise TopicMismatchError(
            "topics do not match ORDERSTREAM_PARTITIONS: " + "; ".join(problems)
        )
