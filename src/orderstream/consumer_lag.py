"""A consumer group member's lag, from what its own fetches already told it."""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer
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
