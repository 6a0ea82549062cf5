"""Kafka administration: create the topics up front, check their partition counts."""

from __future__ import annotations

import asyncio
import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from orderstream.errors import TopicMismatchError
from orderstream.kafka_clients import admin_client
from orderstream.settings import Settings
from orderstream.tables import changelog_specs
from orderstream.topics import TopicSpec, topic_specs

log = logging.getLogger(__name__)

_CREATE_WAIT_S = 30.0


def all_topic_specs(settings: Settings) -> list[TopicSpec]:
    """Return the pipeline's topics and the workers' table changelogs."""
    return topic_specs(settings) + changelog_specs(settings)


async def create_topics(settings: Settings) -> list[str]:
    """Create every missing topic; return the names created. Existing ones are checked."""
    specs = all_topic_specs(settings)
    admin = admin_client(settings)
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
        await _check_partitions(admin, specs, wait_s=_CREATE_WAIT_S)
    finally:
        await admin.close()
    return [spec.name for spec in missing]


async def config_drift(settings: Settings) -> list[str]:
    """Return a line per existing topic whose config differs from what it is created with.

    ``topics create`` never alters a topic that exists (Kafka's AlterConfigs would also
    reset the topic's other overrides): a topic made before its config changed here (a
    ``stock-changes`` from before it was compacted) is reported, with the command to fix it.
    """
    specs = [spec for spec in all_topic_specs(settings) if spec.config]
    admin = admin_client(settings)
    await admin.start()
    try:
        resources = [ConfigResource(ConfigResourceType.TOPIC, spec.name) for spec in specs]
        responses = await admin.describe_configs(resources)
    finally:
        await admin.close()
    found: dict[str, dict[str, str]] = {}
    for response in responses:
        for resource in response.to_object()["resources"]:
            entries = resource["config_entries"]
            found[resource["resource_name"]] = {
                entry["config_names"]: entry["config_value"] for entry in entries
            }
    drift = []
    for spec in specs:
        for name, wanted in spec.config.items():
            actual = found.get(spec.name, {}).get(name)
            if actual is not None and actual != wanted:
                drift.append(
                    f"{spec.name} has {name}={actual}, expected {wanted}: "
                    f"scripts/kafka-tool.sh kafka-configs --bootstrap-server "
                    f"{settings.kafka_bootstrap} --alter --entity-type topics "
                    f"--entity-name {spec.name} --add-config {name}={wanted}"
                )
    return drift


async def delete_topics(settings: Settings) -> list[str]:
    """Delete every topic of the deployment that exists; return their names.

    Its own (``all_topic_specs``) and Faust's, which the lifecycle names after the app
    id (its tables' changelogs, its internal topics): so also any other topic whose name
    starts with the app id. For tests and benchmarks, which make a deployment of their
    own with a unique app id.
    """
    admin = admin_client(settings)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        ours = {spec.name for spec in all_topic_specs(settings)}
        faust = {name for name in existing if name.startswith(settings.app_id)}
        names = sorted((ours | faust) & existing)
        if names:
            await admin.delete_topics(names)
    finally:
        await admin.close()
    return names


async def check_topics(settings: Settings) -> None:
    """Raise TopicMismatchError unless every topic exists with the configured partitions."""
    admin = admin_client(settings)
    await admin.start()
    try:
        await _check_partitions(admin, all_topic_specs(settings))
    finally:
        await admin.close()


async def _check_partitions(
    admin: AIOKafkaAdminClient, specs: list[TopicSpec], wait_s: float = 0.0
) -> None:
    # A topic just created takes a moment to appear in metadata: poll up to wait_s.
    deadline = asyncio.get_running_loop().time() + wait_s
    while True:
        described = await admin.describe_topics([spec.name for spec in specs])
        counts = {t["topic"]: len(t["partitions"]) for t in described if not t["error_code"]}
        if len(counts) == len(specs) or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.2)
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


async def await_topics(settings: Settings, max_wait_s: float = 30.0) -> None:
    """Check the topics as ``check_topics`` does, waiting for Kafka while it does not answer.

    A worker started before the broker (or while it restarts) waits for it instead of
    exiting; a topic that is missing or has the wrong partitions is still an error at once.
    """
    delay = 0.5
    while True:
        try:
            await check_topics(settings)
        except (KafkaError, OSError) as exc:
            log.warning(
                "Kafka at %s does not answer (%r); trying again in %.1f s",
                settings.kafka_bootstrap,
                exc,
                delay,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_wait_s)
        else:
            return
