"""Which partition owns a key: Kafka's default partitioner (murmur2), written out.

Every Kafka client's default partitioner (Java, librdkafka's "murmur2_random",
aiokafka) maps a keyed message to ``murmur2(key) & 0x7fffffff % partitions``. The
stock agent uses the same function to tell whether a request arrived on the
partition that owns its product.
"""

from __future__ import annotations

import random

from murmurhash2 import murmurhash2

_SEED = 0x9747B28C  # Kafka's


def murmur2(data: bytes) -> int:
    """Return Kafka's 32-bit murmur2 hash of ``data`` (as a signed int, like Java)."""
    # MurmurHash2 in C, a tenth of the cost of the same loop in Python: it runs once per
    # keyed record the stock agent sends. tests/unit/test_partitioning.py holds it to
    # aiokafka's and to Java's reference values.
    h: int = murmurhash2(data, _SEED)
    return h - (1 << 32) if h & 0x80000000 else h


def owner_partition(key: str, partitions: int) -> int:
    """Return the partition that Kafka's default partitioner picks for ``key``."""
    return key_partition(key.encode(), partitions)


def key_partition(key: bytes, partitions: int) -> int:
    """Return the partition that Kafka's default partitioner picks for the key bytes."""
    if partitions < 1:
        raise ValueError(f"partitions must be >= 1, got {partitions}")
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def kafka_partitioner(key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
    """aiokafka's default partitioner with the hash in C: a producer's ``partitioner``.

    The same choice as ``aiokafka.partitioner.DefaultPartitioner`` (a keyed record by
    murmur2, an unkeyed one at random among the available), at a tenth of its cost per
    keyed record: the door pays it once per order it publishes.
    """
    if key is None:
        return random.choice(available or all_partitions)  # noqa: S311 (spreading, not secrecy)
    return all_partitions[key_partition(key, len(all_partitions))]
