"""The batch engine's partition state: restore from its changelog, and the holds cache."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from orderstream.agents.state import PartitionState, RestoreReport
from orderstream.domain import OrderStatus, RejectReason, StockLevel, replay_reservation
from orderstream.tables import HOLD_KEY, STOCK_KEY, Hold, hold_key

Record = tuple[bytes, bytes | None]


def snapshot(
    product_id: str, *, available: int, version: int, reserved: int = 0, sold: int = 0
) -> Record:
    """A stock snapshot record, keyed and encoded as the batch engine writes it."""
    level = StockLevel(
        available=available,
        reserved=reserved,
        sold=sold,
        total_in=available + reserved + sold,
        version=version,
    )
    return STOCK_KEY + product_id.encode(), level.model_dump_json().encode()


def hold(order_id: str, product_id: str, quantity: int, stock_version: int | None) -> Record:
    """A hold record: a reservation with its stock version, or a rejection (None)."""
    rejected = stock_version is None
    value = Hold(
        order_id=order_id,
        user_id="u1",
        product_id=product_id,
        quantity=quantity,
        status=OrderStatus.REJECTED if rejected else OrderStatus.RESERVED,
        reason=RejectReason.OUT_OF_STOCK if rejected else None,
        requested_at_ms=1_000,
        decided_at_ms=1_001,
        stock_version=stock_version,
    )
    return HOLD_KEY + hold_key(order_id, product_id), value.model_dump_json().encode()


@pytest.fixture
def state(tmp_path: Path) -> Iterator[PartitionState]:
    partition_state = PartitionState(tmp_path / "state")
    yield partition_state
    partition_state.close()


def restore(state: PartitionState, *records: Record) -> RestoreReport:
    for key, value in records:
        state.restore(key, value)
    report = RestoreReport()
    state.finish_restore(report)
    return report


# replay_reservation


def test_replay_of_a_newer_reservation_moves_available_to_reserved() -> None:
    level = StockLevel(available=10, reserved=1, sold=2, total_in=13, version=3)
    replayed = replay_reservation(level, 4, 7)
    assert (replayed.available, replayed.reserved, replayed.sold) == (6, 5, 2)
    assert replayed.version == 7
    assert replayed.total_in == 13
    assert replayed.is_conserved


@pytest.mark.parametrize("stock_version", [2, 3])
def test_replay_of_a_reservation_not_newer_than_the_level_changes_nothing(
    stock_version: int,
) -> None:
    level = StockLevel(available=10, reserved=1, total_in=11, version=3)
    assert replay_reservation(level, 4, stock_version) == level


# PartitionState.restore / finish_restore


def test_restore_reapplies_reservations_after_the_last_snapshot(state: PartitionState) -> None:
    # A crash cut the log after o2 and o3, before their end-of-batch snapshot.
    report = restore(
        state,
        snapshot("p1", available=10, version=1),
        hold("o1", "p1", 2, 2),
        snapshot("p1", available=8, reserved=2, version=2),
        hold("o2", "p1", 3, 3),
        hold("o3", "p1", 1, 4),
    )
    level = state.stock["p1"]
    assert (level.available, level.reserved, level.sold) == (4, 6, 0)
    assert level.version == 4
    assert level.total_in == 10
    assert level.is_conserved
    assert (report.snapshots, report.holds, report.replayed) == (1, 3, 2)
    assert report.orphans == []


def test_restore_replays_each_product_against_its_own_snapshot(state: PartitionState) -> None:
    report = restore(
        state,
        snapshot("p1", available=5, version=1),
        snapshot("p2", available=7, version=4),
        hold("o1", "p1", 1, 2),
        hold("o2", "p2", 2, 5),
        snapshot("p1", available=4, reserved=1, version=2),
    )
    assert (state.stock["p1"].available, state.stock["p1"].version) == (4, 2)
    assert (state.stock["p2"].available, state.stock["p2"].reserved) == (5, 2)
    assert state.stock["p2"].version == 5
    assert report.replayed == 1


def test_a_hold_written_twice_is_replayed_once(state: PartitionState) -> None:
    twice = hold("o1", "p1", 2, 2)
    report = restore(state, snapshot("p1", available=10, version=1), twice, twice)
    assert (state.stock["p1"].available, state.stock["p1"].reserved) == (8, 2)
    assert report.replayed == 1


def test_restore_skips_reservations_the_last_snapshot_contains(state: PartitionState) -> None:
    last = snapshot("p1", available=5, reserved=5, version=3)
    report = restore(
        state,
        snapshot("p1", available=10, version=1),
        hold("o1", "p1", 2, 2),
        hold("o2", "p1", 3, 3),
        last,
    )
    assert state.stock["p1"] == StockLevel.model_validate_json(last[1] or b"")
    assert report.replayed == 0


def test_restore_of_a_compacted_log_reapplies_nothing(state: PartitionState) -> None:
    # Compaction removed the earlier snapshots: the only one left follows its holds.
    last = snapshot("p1", available=5, reserved=5, version=3)
    report = restore(state, hold("o1", "p1", 2, 2), hold("o2", "p1", 3, 3), last)
    assert state.stock["p1"] == StockLevel.model_validate_json(last[1] or b"")
    assert (report.snapshots, report.holds, report.replayed) == (1, 2, 0)
    assert report.orphans == []


def test_rejected_holds_never_change_the_stock(state: PartitionState) -> None:
    first = snapshot("p1", available=1, version=1)
    report = restore(state, first, hold("o1", "p1", 5, None), hold("o2", "p1", 3, None))
    assert state.stock["p1"] == StockLevel.model_validate_json(first[1] or b"")
    assert (report.holds, report.replayed) == (2, 0)


def test_rejected_hold_of_an_unknown_product_is_not_an_orphan(state: PartitionState) -> None:
    report = restore(state, hold("o1", "ghost", 1, None))
    assert report.orphans == []
    assert state.stock == {}


def test_reservation_of_a_product_without_snapshot_is_an_orphan(state: PartitionState) -> None:
    report = restore(state, snapshot("p1", available=3, version=1), hold("o1", "ghost", 1, 2))
    assert report.orphans == ["ghost"]
    assert "ghost" not in state.stock
    assert report.replayed == 0


def test_tombstones_and_unknown_keys_are_ignored(
    state: PartitionState, caplog: pytest.LogCaptureFixture
) -> None:
    first = snapshot("p1", available=3, version=1)
    tombstone_key, _ = hold("o1", "p1", 1, 2)
    with caplog.at_level(logging.WARNING, logger="orderstream.agents.state"):
        report = restore(
            state,
            first,
            (STOCK_KEY + b"p1", None),
            (tombstone_key, None),
            (b"x-something", b"not json"),
            (b"", b"{}"),
        )
    assert state.stock == {"p1": StockLevel.model_validate_json(first[1] or b"")}
    assert state.hold(hold_key("o1", "p1")) is None
    assert (report.holds, report.replayed, report.orphans) == (0, 0, [])
    assert "unknown key" in caplog.text


# PartitionState holds cache


def test_hold_returns_the_bytes_restored(state: PartitionState) -> None:
    key, value = hold("o1", "p1", 2, 2)
    restore(state, snapshot("p1", available=10, version=1), (key, value))
    assert state.hold(key[len(HOLD_KEY) :]) == value


def test_hold_returns_the_bytes_recorded(state: PartitionState) -> None:
    _, value = hold("o1", "p1", 2, 2)
    state.record_hold(hold_key("o1", "p1"), value or b"")
    assert state.hold(hold_key("o1", "p1")) == value


def test_hold_of_an_unknown_key_is_none(state: PartitionState) -> None:
    assert state.hold(hold_key("o1", "p1")) is None


def test_a_new_state_on_the_same_path_starts_empty(tmp_path: Path) -> None:
    path = tmp_path / "state"
    first = PartitionState(path)
    first.record_hold(b"k", b"v")
    first._holds.close()  # a crash: the cache is left on disk, not deleted
    (path / "leftover").write_bytes(b"x")
    second = PartitionState(path)
    try:
        assert second.hold(b"k") is None
        assert second.stock == {}
        assert not (path / "leftover").exists()
    finally:
        second.close()


def test_close_removes_the_directory(tmp_path: Path) -> None:
    path = tmp_path / "state"
    partition_state = PartitionState(path)
    partition_state.record_hold(b"k", b"v")
    assert path.is_dir()
    partition_state.close()
    assert not path.exists()
