"""How the sink finds the records PostgreSQL refuses, and which errors are a record's fault."""

from __future__ import annotations

from collections.abc import Sequence

import psycopg
import pytest
from psycopg import errors
from psycopg_pool import PoolTimeout

from orderstream.domain import OrderStatus
from orderstream.sink.base import (
    RecordRejectedError,
    SinkBatch,
    SinkUnavailableError,
    write_isolating,
)
from orderstream.sink.postgres import REASON_MAX_CHARS, PostgresSink, describe
from tests.unit.test_sink_batches import event


class FakeDestination:
    """Writes a batch all or nothing; refuses any batch holding a poisoned item."""

    def __init__(self, poisoned: set[int]) -> None:
        self.poisoned = poisoned
        self.landed: list[int] = []
        self.attempts = 0

    async def write(self, items: Sequence[int]) -> None:
        self.attempts += 1
        bad = sorted(self.poisoned.intersection(items))
        if bad:
            raise RecordRejectedError(f"poison {bad[0]}")
        self.landed += items


@pytest.mark.parametrize(
    "poisoned",
    [set(), {0}, {999}, {500}, {3, 4}, {0, 999}, {10, 400, 401, 998}, set(range(0, 1000, 7))],
    ids=["none", "first", "last", "middle", "adjacent", "both-ends", "scattered", "many"],
)
async def test_every_good_item_lands_in_order_and_only_poison_is_refused(
    poisoned: set[int],
) -> None:
    items = list(range(1000))
    destination = FakeDestination(poisoned)
    refused = await write_isolating(items, destination.write)

    assert destination.landed == [i for i in items if i not in poisoned]
    assert [item for item, _ in refused] == sorted(poisoned)
    assert all(exc.reason == f"poison {item}" for item, exc in refused)


async def test_the_fast_path_is_one_write_and_one_poison_costs_a_few_more() -> None:
    clean = FakeDestination(set())
    await write_isolating(list(range(1000)), clean.write)
    assert clean.attempts == 1

    one_bad = FakeDestination({617})
    await write_isolating(list(range(1000)), one_bad.write)
    # Halving 1000 down to 1 is 10 levels; at most two writes per level, plus the whole.
    assert one_bad.attempts <= 1 + 2 * 10


async def test_a_refusal_that_needs_two_items_together_refuses_neither() -> None:
    async def write(items: Sequence[int]) -> None:
        if {1, 2} <= set(items):
            raise RecordRejectedError("conflict")
        landed.extend(items)

    landed: list[int] = []
    assert await write_isolating([0, 1, 2, 3], write) == []
    assert landed == [0, 1, 2, 3]


async def test_other_errors_are_not_swallowed() -> None:
    async def write(items: Sequence[int]) -> None:
        raise OSError("down")

    with pytest.raises(OSError, match="down"):
        await write_isolating([1, 2], write)


def test_a_reason_is_the_class_and_the_first_line_bounded() -> None:
    exc = errors.CheckViolation(
        'new row for relation "orders" violates check constraint "no_poison"\n'
        "DETAIL:  Failing row contains (poison-1, ...)."
    )
    assert describe(exc) == (
        'CheckViolation: new row for relation "orders" violates check constraint "no_poison"'
    )
    assert len(describe(psycopg.DataError("x" * 5000))) == REASON_MAX_CHARS


class RaisingPool:
    """Stands in for the pool: every connection attempt fails with ``exc``."""

    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def connection(self, timeout: float | None = None) -> object:
        raise self.exc


@pytest.mark.parametrize(
    ("exc", "record_fault"),
    [
        (errors.CheckViolation("check"), True),
        (errors.UniqueViolation("unique"), True),
        (errors.NumericValueOutOfRange("integer out of range"), True),
        (psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes"), True),
        (psycopg.OperationalError("connection refused"), False),
        (PoolTimeout("couldn't get a connection after 5.00 sec"), False),
        (errors.UndefinedTable('relation "orders" does not exist'), False),
        (errors.InsufficientPrivilege("permission denied"), False),
        (errors.ReadOnlySqlTransaction("read-only transaction"), False),
        (errors.SerializationFailure("could not serialize"), False),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else str(v),
)
async def test_only_data_and_integrity_errors_are_the_records_fault(
    exc: Exception, record_fault: bool
) -> None:
    sink = PostgresSink(RaisingPool(exc))  # type: ignore[arg-type]
    batch = SinkBatch(order_events=[event("o1", 1, OrderStatus.RESERVED, 0)])
    expected = RecordRejectedError if record_fault else SinkUnavailableError
    with pytest.raises(expected) as raised:
        await sink.write(batch)
    assert raised.value.__cause__ is exc
    assert type(exc).__name__ in str(raised.value)
