"""Our murmur2 must pick the same partition as Kafka's default partitioner."""

from __future__ import annotations

import random
import string

import pytest
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2

from orderstream.domain import key_partition, murmur2, owner_partition
from orderstream.domain.partitioning import kafka_partitioner


def keys() -> list[str]:
    """Every tail length of the hash (0-3 bytes past a 4-byte block), then seeded random keys."""
    rng = random.Random(1)
    alphabet = string.ascii_letters + string.digits + "-_é✓"
    short = ["", "a", "ab", "abc", "abcd", "product-42"]
    return short + ["".join(rng.choices(alphabet, k=rng.randint(0, 40))) for _ in range(500)]


def test_murmur2_matches_aiokafka_for_any_key() -> None:
    for key in keys():
        # aiokafka returns the same 32 bits unsigned; Java (and we) return them signed.
        assert murmur2(key.encode()) & 0xFFFFFFFF == aiokafka_murmur2(key.encode()), key


def test_murmur2_matches_javas_reference_values() -> None:
    # From Kafka's own Utils.murmur2 test (UtilsTest.testMurmur2): signed, as Java returns.
    expected = {
        b"21": -973932308,
        b"foobar": -790332482,
        b"a-little-bit-long-string": -985981536,
        b"a-little-bit-longer-string": -1486304829,
        b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
        b"abc": 479470107,
    }
    assert {key: murmur2(key) for key in expected} == expected


def test_the_owner_partition_is_where_aiokafkas_default_partitioner_puts_the_key() -> None:
    # The stock agent places keyed records itself; they must land where a plain
    # producer.send would have put them (consumers of order-events rely on it).
    partitioner = DefaultPartitioner()
    for partitions in (1, 8, 1024):
        every = list(range(partitions))
        for key in keys():
            owner = owner_partition(key, partitions)
            assert 0 <= owner < partitions
            assert owner == key_partition(key.encode(), partitions)
            assert owner == partitioner(key.encode(), every, every), (key, partitions)


def test_owner_partition_refuses_zero_partitions() -> None:
    with pytest.raises(ValueError, match="partitions"):
        owner_partition("p", 0)


def test_the_producers_partitioner_chooses_as_aiokafkas_default() -> None:
    rng = random.Random(11)
    default = DefaultPartitioner()
    for _ in range(2000):
        key = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 40)))
        partitions = list(range(rng.randrange(1, 64)))
        assert kafka_partitioner(key, partitions, partitions) == default(
            key, partitions, partitions
        )
    # Unkeyed: one of the available partitions, or of all when none is available.
    assert kafka_partitioner(None, [0, 1, 2], [2]) == 2
    assert kafka_partitioner(None, [0, 1, 2], []) in {0, 1, 2}
