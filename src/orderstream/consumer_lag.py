"""Consumer lag: a group member's, from what its own fetches told it; a group's, from outside."""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import IllegalStateError


async def consumer_lag(consumer: AIOKafkaConsumer) -> int:
    """Return the records on this member's partitions it has not read yet.

    After a fetch the high water mark and the position are known locally: no round trip
    (one, should an out-of-range offset be being reset).
    """
    lag = 0
    # Read before the first await: a rebalance may revoke partitions meanwhile.
    highwaters = {tp: consumer.highwater(tp) for tp in consumer.assignment()}
    for tp, highwater in highwaters.items():
        if highwater is None:
            continue  # not fetched yet
        try:
            position = await consumer.position(tp)
        except IllegalStateError:
            continue  # revoked meanwhile: no longer ours to count
        lag += max(0, highwater - position)
    return lag


async def group_lag(
    admin: AIOKafkaAdminClient,
    consumer: AIOKafkaConsumer,
    group: str,
    partitions: list[TopicPartition],
) -> int | None:
    """Return the records of ``partitions`` that ``group`` has not committed past, seen
    from outside the group (its committed offsets against the end offsets); None if the
    group never committed (it never ran). A partition it never committed is behind by
    everything it holds."""
    committed = await admin.list_consumer_group_offsets(group)
    if not committed:
        return None
    starts = await consumer.beginning_offsets(partitions)
    ends = await consumer.end_offsets(partitions)
    behind: int = sum(
        max(0, ends[tp] - (committed[tp].offset if tp in committed else starts[tp]))
        for tp in partitions
    )
    return behind
