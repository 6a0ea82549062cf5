"""Our murmur2 must pick the same partition as Kafka's default partitioner."""

from __future__ import annotations

import random
import string

import pytest
from aiokafka.partitioner import murmur2 as aiokafka_murmur2

from orderstream.domain import key_partition, murmur2, owner_partition


def random_keys(count: int) -> list[str]:
    rng = random.Random(1)
    alphabet = string.ascii_letters + string.digits + "-_é✓"
    return ["".join(rng.choices(alphabet, k=rng.randint(0, 40))) for _ in range(count)]


@pytest.mark.parametrize("key", ["", "a", "ab", "abc", "abcd", "product-42", *random_keys(500)])
def test_murmur2_matches_aiokafka(key: str) -> None:
    # aiokafka returns the same 32 bits unsigned; Java (and we) return them signed.
    assert murmur2(key.encode()) & 0xFFFFFFFF == aiokafka_murmur2(key.encode())


def test_java_reference_values() -> None:
    # Values from Kafka's own Utils.murmur2 test (UtilsTest.testMurmur2).
    assert murmur2(b"21") == -973932308
    assert murmur2(b"foobar") == -790332482
    assert murmur2(b"a-little-bit-long-string") == -985981536
    assert murmur2(b"a-little-bit-longer-string") == -1486304829
    assert murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") == -58897971
    assert murmur2(b"abc") == 479470107


def test_owner_partition_is_in_range_and_stable() -> None:
    for key in random_keys(200):
        partition = owner_partition(key, 8)
        assert 0 <= partition < 8
        assert partition == owner_partition(key, 8)


def test_owner_partition_refuses_zero_partitions() -> None:
    with pytest.raises(ValueError, match="partitions"):
        owner_partition("p", 0)


def test_key_partition_matches_aiokafkas_default_partitioner() -> None:
    # The batch engine places keyed records itself; they must land where a plain
    # producer.send would have put them (consumers of order-events rely on it).
    from aiokafka.partitioner import DefaultPartitioner

    partitioner = DefaultPartitioner()
    partitions = list(range(8))
    for key in random_keys(300):
        raw = key.encode()
        assert key_partition(raw, 8) == partitioner(raw, partitions, partitions)
        assert key_partition(raw, 8) == owner_partition(key, 8)
