"""`orderstream topics create` on a deployment whose topics predate their config here."""

from __future__ import annotations

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from orderstream.admin import config_drift, create_topics
from tests.integration.pipeline import Pipeline

pytestmark = pytest.mark.integration


async def _set_policy(pipe: Pipeline, topic: str, policy: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=pipe.settings.kafka_bootstrap)
    await admin.start()
    try:
        resource = ConfigResource(
            ConfigResourceType.TOPIC, topic, configs={"cleanup.policy": policy}
        )
        await admin.alter_configs([resource])
    finally:
        await admin.close()


async def test_a_stock_changes_topic_that_is_not_compacted_is_reported_with_the_fix(
    pipeline: Pipeline,
) -> None:
    settings = pipeline.settings
    assert await config_drift(settings) == []  # as created: nothing to say
    stock_changes = pipeline.topic("stock-changes")
    # As a deployment from before stock-changes was compacted has it.
    await _set_policy(pipeline, stock_changes, "delete")

    assert await create_topics(settings) == []  # exists: never altered

    async def reported() -> bool:  # a config change takes a moment to show
        return bool(await config_drift(settings))

    await pipeline.wait_for("the drift to show", reported, timeout=30, watch=None)
    [drift] = await config_drift(settings)
    assert drift.startswith(f"{stock_changes} has cleanup.policy=delete, expected compact: ")
    assert f"--entity-name {stock_changes} --add-config cleanup.policy=compact" in drift

    await _set_policy(pipeline, stock_changes, "compact")  # what the printed command does

    async def in_line() -> bool:
        return await config_drift(settings) == []

    await pipeline.wait_for("the fix to show", in_line, timeout=30, watch=None)
