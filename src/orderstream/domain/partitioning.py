"""Which partition owns a key: Kafka's default partitioner (murmur2), written out.

Every Kafka client's default partitioner (Java, librdkafka's "murmur2_random",
aiokafka) maps a keyed message to ``murmur2(key) & 0x7fffffff % partitions``. The
stock agent uses the same function to tell whether a request arrived on the
partition that owns its product.
"""

from __future__ import annotations

_SEED = 0x9747B28C
_M = 0x5BD1E995
_MASK32 = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Return Kafka's 32-bit murmur2 hash of ``data`` (as a signed int, like Java)."""
    length = len(data)
    h = (_SEED ^ length) & _MASK32
    full = length - (length % 4)
    for i in range(0, full, 4):
        k = data[i] | (data[i + 1] << 8) | (data[i + 2] << 16) | (data[i + 3] << 24)
        k = (k * _M) & _MASK32
        k ^= k >> 24
        k = (k * _M) & _MASK32
        h = (h * _M) & _MASK32
        h ^= k
    rest = length % 4
    if rest == 3:
        h ^= data[full + 2] << 16
    if rest >= 2:
        h ^= data[full + 1] << 8
    if rest >= 1:
        h ^= data[full]
        h = (h * _M) & _MASK32
    h ^= h >> 13
    h = (h * _M) & _MASK32
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def owner_partition(key: str, partitions: int) -> int:
    """Return the partition that Kafka's default partitioner picks for ``key``."""
    return key_partition(key.encode(), partitions)


def key_partition(key: bytes, partitions: int) -> int:
    """Return the partition that Kafka's default partitioner picks for the key bytes."""
    if partitions < 1:
        raise ValueError(f"partitions must be >= 1, got {partitions}")
    return (murmur2(key) & 0x7FFFFFFF) % partitions
