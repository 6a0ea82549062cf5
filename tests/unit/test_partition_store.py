"""The stock agent's partition store: its changelog, restore as a fold, the holds cache."""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from prometheus_client import CollectorRegistry

from orderstream.agents.stock.processor import SourceRecord, StockProcessor
from orderstream.agents.stock.store import PartitionStore, RestoreReport
from orderstream.domain import (
    Committed,
    LineStatus,
    OrderStatus,
    RejectReason,
    Released,
    Reserved,
    StockAdded,
    StockLevel,
    StockSet,
    owner_partition,
)
from orderstream.metrics import WorkerMetrics
from orderstream.settings import Settings
from orderstream.tables import (
    EPOCH,
    EPOCH_HEADER,
    FENCE_KEY,
    HOLD_KEY,
    STOCK_KEY,
    Hold,
    decode_hold,
    encode_hold,
    hold_key,
)
from orderstream.topics import ORDER_REQUESTS, STOCK_COMMANDS

# A changelog record as the consumer reads it back: key, value (None: tombstone), timestamp.
Record = tuple[bytes, bytes | None, int]


class Changelog:
    """An Append callback that keeps what it is given, stamped like the broker would."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.now_ms = 1_000

    def __call__(self, key: bytes, value: bytes | None) -> None:
        self.records.append((key, value, self.now_ms))


def snapshot(
    product_id: str,
    *,
    available: int,
    version: int,
    reserved: int = 0,
    sold: int = 0,
    at_ms: int = 1_000,
) -> Record:
    """A stock snapshot record, keyed and encoded as the store writes it."""
    level = StockLevel(
        available=available,
        reserved=reserved,
        sold=sold,
        total_in=available + reserved + sold,
        version=version,
    )
    return STOCK_KEY + product_id.encode(), level.model_dump_json().encode(), at_ms


def make_hold(
    order_id: str, product_id: str, quantity: int, stock_version: int | None, decided_at_ms: int
) -> Hold:
    """A reservation with the stock version it produced, or a rejection (None)."""
    rejected = stock_version is None
    return Hold(
        order_id=order_id,
        user_id="u1",
        product_id=product_id,
        quantity=quantity,
        status=OrderStatus.REJECTED if rejected else OrderStatus.RESERVED,
        reason=RejectReason.OUT_OF_STOCK if rejected else None,
        requested_at_ms=decided_at_ms - 1,
        decided_at_ms=decided_at_ms,
        stock_version=stock_version,
    )


def hold_record(
    order_id: str, product_id: str, quantity: int, stock_version: int | None, at_ms: int = 1_000
) -> Record:
    value = make_hold(order_id, product_id, quantity, stock_version, at_ms)
    return HOLD_KEY + hold_key(order_id, product_id), encode_hold(value), at_ms


def legacy_fields(hold: Hold, *, nulls: bool) -> dict[str, Any]:
    """A hold's fields as the JSON object written before the compact form: first with
    every null spelled out, later without the null fields."""
    fields = json.loads(msgspec.json.encode(msgspec.structs.asdict(hold)))
    return fields if nulls else {name: value for name, value in fields.items() if value is not None}


def legacy_json(hold: Hold, *, nulls: bool) -> bytes:
    return json.dumps(legacy_fields(hold, nulls=nulls), separators=(",", ":")).encode()


def settled_record(
    order_id: str,
    product_id: str,
    quantity: int,
    versions: tuple[int, int],
    settled: LineStatus,
    at_ms: int = 1_000,
) -> Record:
    """The record of a reservation (at versions[0]) that a commit or a release settled."""
    event = Committed if settled is LineStatus.COMMITTED else Released
    reservation = make_hold(order_id, product_id, quantity, versions[0], at_ms - 10)
    hold = reservation.settled_by(event(quantity, versions[1]), at_ms)
    return HOLD_KEY + hold_key(order_id, product_id), encode_hold(hold), at_ms


def tombstone(order_id: str, product_id: str, at_ms: int = 1_000) -> Record:
    return HOLD_KEY + hold_key(order_id, product_id), None, at_ms


@pytest.fixture
def store(tmp_path: Path) -> Iterator[PartitionStore]:
    partition_store = PartitionStore(tmp_path / "store")
    yield partition_store
    partition_store.close()


def restore(store: PartitionStore, *records: Record) -> RestoreReport:
    for key, value, timestamp_ms in records:
        store.restore(key, value, timestamp_ms)
    return store.finish_restore()


def level_of(record: Record) -> StockLevel:
    assert record[1] is not None
    return StockLevel.model_validate_json(record[1])


# --- writing: what reaches the changelog, and when ---------------------------------


def test_stock_commands_are_snapshotted_at_once_and_reservations_at_the_end_of_a_batch(
    store: PartitionStore,
) -> None:
    changelog = Changelog()
    store.apply("p1", StockSet(10, 1, offset=0), changelog)
    [(key, _, _)] = changelog.records
    assert key == STOCK_KEY + b"p1"
    assert level_of(changelog.records[0]) == store.stock["p1"]
    store.apply("p1", Reserved(2, 2), changelog)
    store.put_hold(hold_key("o1", "p1"), make_hold("o1", "p1", 2, 2, 1_000), changelog)
    store.apply("p2", StockAdded(4, 1, offset=1), changelog)
    assert [key for key, *_ in changelog.records] == [
        STOCK_KEY + b"p1",
        HOLD_KEY + hold_key("o1", "p1"),  # the reservation itself wrote no stock record
        STOCK_KEY + b"p2",
    ]
    changed = store.snapshot_changed(changelog)
    assert dict(changed) == {"p1": store.stock["p1"], "p2": store.stock["p2"]}
    assert {(record[0], level_of(record)) for record in changelog.records[3:]} == {
        (STOCK_KEY + b"p1", store.stock["p1"]),
        (STOCK_KEY + b"p2", store.stock["p2"]),
    }
    assert store.snapshot_changed(changelog) == []  # nothing changed since


def test_an_event_the_stock_cannot_take_raises_and_changes_nothing(
    store: PartitionStore,
) -> None:
    changelog = Changelog()
    store.apply("p1", StockSet(1, 1, offset=0), changelog)
    store.snapshot_changed(changelog)
    before, written = dict(store.stock), len(changelog.records)
    with pytest.raises(ValueError, match="cannot apply"):
        store.apply("p1", Reserved(2, 2), changelog)
    assert store.stock == before
    assert len(changelog.records) == written
    assert store.snapshot_changed(changelog) == []


# --- restore -------------------------------------------------------------------------


def test_restore_reapplies_reservations_after_the_last_snapshot(store: PartitionStore) -> None:
    # A crash cut the log after o2 and o3, before their end-of-batch snapshot.
    report = restore(
        store,
        snapshot("p1", available=10, version=1),
        hold_record("o1", "p1", 2, 2),
        snapshot("p1", available=8, reserved=2, version=2),
        hold_record("o2", "p1", 3, 3),
        hold_record("o3", "p1", 1, 4),
    )
    level = store.stock["p1"]
    assert (level.available, level.reserved, level.sold, level.total_in) == (4, 6, 0, 10)
    assert level.version == 4
    assert (report.records, report.snapshots, report.holds, report.replayed) == (5, 1, 3, 2)
    assert report.orphans == []


def test_restore_drops_what_a_fenced_writer_appended_after_the_new_owners_epoch(
    store: PartitionStore,
) -> None:
    """Issue 21, item 3: writer 1 paused past its session; writer 2 restored, fenced the
    partition with epoch 2 and reserved o2; writer 1 woke and appended its stale
    snapshot (it had not seen o2). Without epochs that snapshot was the last, and o2's
    unit came back: oversold."""

    def stamped(record: Record, epoch: int) -> tuple[bytes, bytes | None, int, list[Any]]:
        return (*record, [(EPOCH_HEADER, EPOCH.pack(epoch))])

    records = [
        (*snapshot("p2", available=3, version=1), []),  # written before epochs: kept
        stamped(snapshot("p1", available=10, version=1), 1),
        stamped(hold_record("o1", "p1", 1, 2), 1),
        stamped(snapshot("p1", available=9, reserved=1, version=2), 1),
        stamped((FENCE_KEY + EPOCH.pack(2), EPOCH.pack(2), 1_000), 2),  # writer 2 takes over
        stamped(hold_record("o2", "p1", 1, 3), 2),
        stamped(snapshot("p1", available=8, reserved=2, version=3), 2),
        stamped(hold_record("o3", "p1", 1, 3), 1),  # writer 1, stale: its own o3 at v3
        stamped(snapshot("p1", available=8, reserved=2, version=3), 1),
        stamped(hold_record("o4", "p1", 1, 4), 2),  # writer 2 goes on
    ]
    for key, value, timestamp_ms, headers in records:
        store.restore(key, value, timestamp_ms, headers)
    report = store.finish_restore()
    level = store.stock["p1"]
    assert (level.available, level.reserved, level.total_in) == (7, 3, 10)
    assert store.hold(hold_key("o3", "p1")) is None  # writer 1's decision is not the truth
    assert store.hold(hold_key("o2", "p1")) is not None
    assert (report.fenced, report.epoch, store.restored_epoch) == (2, 2, 2)
    assert store.stock["p2"].available == 3


def test_restore_folds_each_product_against_its_own_snapshot(store: PartitionStore) -> None:
    report = restore(
        store,
        snapshot("p1", available=5, version=1),
        snapshot("p2", available=7, version=4),
        hold_record("o1", "p1", 1, 2),
        hold_record("o2", "p2", 2, 5),
        snapshot("p1", available=4, reserved=1, version=2),
    )
    assert (store.stock["p1"].available, store.stock["p1"].version) == (4, 2)
    assert (store.stock["p2"].available, store.stock["p2"].reserved) == (5, 2)
    assert store.stock["p2"].version == 5
    assert report.replayed == 1


def test_a_hold_written_twice_is_folded_once(store: PartitionStore) -> None:
    twice = hold_record("o1", "p1", 2, 2)
    report = restore(store, snapshot("p1", available=10, version=1), twice, twice)
    assert (store.stock["p1"].available, store.stock["p1"].reserved) == (8, 2)
    assert report.replayed == 1


@pytest.mark.parametrize(
    "log",
    [
        pytest.param(
            [
                snapshot("p1", available=10, version=1),
                hold_record("o1", "p1", 2, 2),
                hold_record("o2", "p1", 3, 3),
                snapshot("p1", available=5, reserved=5, version=3),
            ],
            id="whole-log",
        ),
        # Compaction removed the earlier snapshot: the one left follows its holds.
        pytest.param(
            [
                hold_record("o1", "p1", 2, 2),
                hold_record("o2", "p1", 3, 3),
                snapshot("p1", available=5, reserved=5, version=3),
            ],
            id="compacted-log",
        ),
    ],
)
def test_reservations_the_last_snapshot_contains_are_not_reapplied(
    store: PartitionStore, log: list[Record]
) -> None:
    report = restore(store, *log)
    assert store.stock == {"p1": level_of(log[-1])}
    assert (report.holds, report.replayed, report.orphans) == (2, 0, [])


@pytest.mark.parametrize(
    ("settled", "after"),
    [
        pytest.param(LineStatus.COMMITTED, (8, 0, 2), id="committed"),
        pytest.param(LineStatus.RELEASED, (10, 0, 0), id="released"),
    ],
)
@pytest.mark.parametrize(
    ("log", "replayed"),
    [
        # Reserved and settled in one batch, cut before its snapshot: both events re-applied.
        pytest.param(
            [snapshot("p1", available=10, version=1), "reserved", "settled"], 2, id="no-snapshot"
        ),
        # The snapshot between holds the reservation: only the settlement is re-applied.
        pytest.param(
            [
                snapshot("p1", available=10, version=1),
                "reserved",
                snapshot("p1", available=8, reserved=2, version=2),
                "settled",
            ],
            1,
            id="reservation-snapshotted",
        ),
        # Compaction kept the hold's last record and the last snapshot, which holds both.
        pytest.param(["settled", "final-snapshot"], 0, id="compacted"),
    ],
)
def test_restore_folds_a_settled_hold_exactly_once(
    store: PartitionStore,
    settled: LineStatus,
    after: tuple[int, int, int],
    log: list[Record | str],
    replayed: int,
) -> None:
    available, reserved, sold = after
    records = {
        "reserved": hold_record("o1", "p1", 2, 2),
        "settled": settled_record("o1", "p1", 2, (2, 3), settled),
        "final-snapshot": snapshot(
            "p1", available=available, reserved=reserved, sold=sold, version=3
        ),
    }
    report = restore(store, *(records[r] if isinstance(r, str) else r for r in log))
    level = store.stock["p1"]
    assert (level.available, level.reserved, level.sold, level.version) == (*after, 3)
    assert level.is_conserved
    assert report.replayed == replayed
    assert store.hold(hold_key("o1", "p1")) == records["settled"][1]


def test_a_hold_written_before_settlements_existed_restores_as_unsettled(
    store: PartitionStore,
) -> None:
    key, _, at_ms = hold_record("o1", "p1", 2, 2)
    older = legacy_fields(make_hold("o1", "p1", 2, 2, at_ms), nulls=True)
    for field in ("settled", "final_version", "settled_at_ms"):
        del older[field]
    restore(
        store, snapshot("p1", available=10, version=1), (key, json.dumps(older).encode(), at_ms)
    )
    assert (store.stock["p1"].available, store.stock["p1"].reserved) == (8, 2)
    recorded = store.hold(key[1:])
    assert recorded is not None
    assert decode_hold(recorded).line_status is LineStatus.RESERVED


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"settled": "COMMITTED"}, id="no-final-version"),
        pytest.param({"final_version": 3, "settled_at_ms": 5}, id="no-settled-status"),
        pytest.param({"settled": "REJECTED", "final_version": 3, "settled_at_ms": 5}, id="bad"),
        pytest.param(
            {"stock_version": None, "settled": "RELEASED", "final_version": 3, "settled_at_ms": 5},
            id="settled-rejection",
        ),
    ],
)
def test_a_half_settled_hold_is_refused(fields: dict[str, object]) -> None:
    hold = legacy_fields(make_hold("o1", "p1", 2, 2, 1_000), nulls=True) | fields
    with pytest.raises(msgspec.ValidationError, match="come together"):
        decode_hold(json.dumps(hold).encode())


def test_rejected_holds_never_change_the_stock(store: PartitionStore) -> None:
    first = snapshot("p1", available=1, version=1)
    report = restore(
        store,
        first,
        hold_record("o1", "p1", 5, None),
        hold_record("o2", "p1", 3, None),
        hold_record("o3", "ghost", 1, None),  # a rejection of a product never stocked
    )
    assert store.stock == {"p1": level_of(first)}
    assert (report.holds, report.replayed, report.orphans) == (3, 0, [])


def test_a_reservation_of_a_product_without_snapshot_is_an_orphan(store: PartitionStore) -> None:
    report = restore(
        store, snapshot("p1", available=3, version=1), hold_record("o1", "ghost", 1, 2)
    )
    assert isinstance(report, RestoreReport)
    assert report.orphans == ["ghost"]
    assert "ghost" not in store.stock
    assert report.replayed == 0


def test_a_hold_tombstone_removes_the_hold(store: PartitionStore) -> None:
    report = restore(
        store,
        snapshot("p1", available=3, version=1),
        hold_record("o1", "p1", 5, None),
        tombstone("o1", "p1"),
        tombstone("o2", "p1"),  # of a hold this prefix never saw
    )
    assert store.hold(hold_key("o1", "p1")) is None
    assert store.stock["p1"].available == 3
    assert (report.records, report.holds) == (4, 1)


def test_unknown_keys_are_ignored_with_a_warning(
    store: PartitionStore, caplog: pytest.LogCaptureFixture
) -> None:
    first = snapshot("p1", available=3, version=1)
    with caplog.at_level(logging.WARNING, logger="orderstream.agents.stock.store"):
        report = restore(
            store,
            first,
            (STOCK_KEY + b"p1", None, 1_000),
            (b"x-something", b"not json", 1_000),
            (b"", b"{}", 1_000),
        )
    assert store.stock == {"p1": level_of(first)}
    assert (report.records, report.holds, report.replayed, report.orphans) == (4, 0, 0, [])
    assert caplog.text.count("ignoring changelog record") == 3


def test_restore_matches_the_live_store_after_every_prefix_of_its_changelog(
    tmp_path: Path,
) -> None:
    """Wherever a crash cuts the changelog, restore gives the stock that prefix implies.

    Decide a seeded random stream (restocks, reservations, rejections, duplicates,
    misrouted and stale requests, commits and releases of reserved, rejected and unknown
    lines and their redeliveries, expiry) exactly as the engine does, keeping every record
    the changelog got and the live stock right after it; then restore a fresh store from
    each prefix.
    """
    rng = random.Random(41)
    sales = random.Random(5)  # its own: the rest of the stream stays what it was
    window_s = 30
    settings = Settings(
        partitions=8,
        topic_prefix="",
        dedup_window_s=window_s,
        max_line_quantity=4,
        max_per_user=6,  # some requests pass it: a user's count decides them too
    )
    registry = CollectorRegistry()
    processor = StockProcessor(settings, WorkerMetrics.register(registry))
    owned = [p for p in (f"p{i}" for i in range(50)) if owner_partition(p, 8) == 0][:4]
    stocked, never_stocked = owned[:3], owned[3]
    elsewhere = next(p for p in (f"q{i}" for i in range(50)) if owner_partition(p, 8) != 0)
    live = PartitionStore(tmp_path / "live")
    changelog = Changelog()
    live_after: list[dict[str, StockLevel]] = []  # store.stock right after each record

    def append(key: bytes, value: bytes | None) -> None:
        changelog(key, value)
        live_after.append(dict(live.stock))

    def command(operation: str, product_id: str, quantity: int, now_ms: int) -> SourceRecord:
        # Now and then a set begins a new sale: the users' counts start from zero.
        new_sale = operation == "set" and commands and sales.random() < 0.4
        value = b'{"product_id":"%s","operation":"%s","quantity":%d%s}' % (
            product_id.encode(),
            operation.encode(),
            quantity,
            b',"new_sale":true' if new_sale else b"",
        )
        return SourceRecord(STOCK_COMMANDS, 0, len(commands), now_ms, None, value)

    def reprice(product_id: str, now_ms: int) -> SourceRecord:
        """A catalog update: a new price, sometimes a limit of the product's own."""
        value = b'{"product_id":"%s","operation":"update","price":"%d.%02d","currency":"EUR"%s}' % (
            product_id.encode(),
            rng.randint(0, 99),
            rng.randint(0, 99),
            rng.choice([b"", b"", b',"max_per_user":%d' % rng.choice([0, 4, 8])]),
        )
        return SourceRecord(STOCK_COMMANDS, 0, len(commands), now_ms, None, value)

    def request(product_id: str, quantity: int, requested_at_ms: int) -> SourceRecord:
        value = b'{"order_id":"o%d","user_id":"u%d","product_id":"%s","quantity":%d}' % (
            len(requests),
            rng.randint(0, 3),
            product_id.encode(),
            quantity,
        )
        lines.append((f"o{len(requests)}", product_id, quantity))
        return SourceRecord(ORDER_REQUESTS, 0, len(requests), requested_at_ms, None, value)

    def settle(operation: str, now_ms: int) -> SourceRecord:
        """A commit or a release of a line requested before, or of an order never seen."""
        roll = rng.random()
        if roll < 0.3 and settling:  # again, maybe the other way
            order_id, product_id, quantity = rng.choice(settling)
        elif roll < 0.9 and lines:
            order_id, product_id, quantity = rng.choice(lines)
            settling.append((order_id, product_id, quantity))
        else:
            order_id, product_id, quantity = "nobody", stocked[0], 1
        given = rng.choice([None, None, quantity, quantity + 1])  # + 1: a dead letter
        value = b'{"product_id":"%s","operation":"%s","order_id":"%s"%s}' % (
            product_id.encode(),
            operation.encode(),
            order_id.encode(),
            b"" if given is None else b',"quantity":%d' % given,
        )
        return SourceRecord(STOCK_COMMANDS, 0, len(commands), now_ms, None, value)

    commands: list[SourceRecord] = []
    requests: list[SourceRecord] = []
    lines: list[tuple[str, str, int]] = []  # (order id, product id, quantity) of each request
    settling: list[tuple[str, str, int]] = []  # the lines a commit or a release was sent for
    for batch in range(40):
        changelog.now_ms += rng.randint(1, 6_000)
        now_ms = changelog.now_ms
        records: list[SourceRecord] = []
        if batch == 0:
            for product_id in stocked:
                commands.append(command("set", product_id, 8, now_ms))
            records += commands
        if batch == 1:
            records.append(commands[0])  # a restock redelivered, whatever the dice say
        for _ in range(rng.randint(1, 6)):
            roll = rng.random()
            if roll < 0.1:
                operation = rng.choice(["set", "add"])
                quantity = rng.randint(0, 8) if operation == "set" else rng.randint(1, 4)
                commands.append(command(operation, rng.choice(stocked), quantity, now_ms))
                records.append(commands[-1])
            elif roll < 0.13:
                commands.append(reprice(rng.choice(stocked), now_ms))
                records.append(commands[-1])
            elif roll < 0.15:
                records.append(rng.choice(commands))  # redelivered: applied once
            elif roll < 0.3 and requests:
                records.append(rng.choice(requests))  # a duplicate, maybe stale by now
            elif roll < 0.5:
                commands.append(settle(rng.choice(["commit", "release"]), now_ms))
                records.append(commands[-1])
            else:
                product_id = rng.choice([*stocked * 4, never_stocked, elsewhere])
                quantity = rng.choice([1, 1, 2, 2, 3, 4, 5])  # 5 is over the line limit
                requests.append(request(product_id, quantity, now_ms - rng.randint(0, 500)))
                records.append(requests[-1])
        for record in records:
            effects = processor.process(record, live, now_ms)
            for product_id, event in effects.stock:  # stock first, as the engine does
                live.apply(product_id, event, append)
            for key, hold in effects.holds:
                live.put_hold(key, hold, append)
            for user_id, product_id, quantity in effects.held:
                live.change_held(user_id, product_id, quantity)
        live.snapshot_changed(append)
        if rng.random() < 0.3:
            live.expire(now_ms - window_s * 1000, rng.randint(4, 16), append)
    live.close()

    # Holds in every form a changelog may hold: compact, and the JSON written before it
    # (with and without its null fields), mixed in one log.
    forms = random.Random(7)
    log = [
        (key, legacy_json(decode_hold(value), nulls=forms.random() < 0.5), at_ms)
        if key[:1] == HOLD_KEY and value is not None and forms.random() < 0.5
        else (key, value, at_ms)
        for key, value, at_ms in changelog.records
    ]
    assert any(value and value[:1] == b"{" for key, value, _ in log if key[:1] == HOLD_KEY)
    hold_keys = {key[1:] for key, _, _ in log if key[:1] == HOLD_KEY}
    written = [(key, decode_hold(value)) for key, value, _ in log if key[:1] == HOLD_KEY and value]
    # The stream went through every kind of record a changelog holds.
    assert any(value is None for _, value, _ in log)
    assert any(hold.status is OrderStatus.REJECTED for _, hold in written)
    assert any(hold.reason is RejectReason.LIMIT_EXCEEDED for _, hold in written)
    assert any(hold.unit_price is not None for _, hold in written)  # priced holds
    assert any(hold.status is OrderStatus.RESERVED for _, hold in written)
    assert sum(key[:1] == STOCK_KEY for key, _, _ in log) > 10
    assert registry.get_sample_value("orderstream_duplicate_requests_total")
    assert sum(level.sale_started > 0 for level in live_after[-1].values()) >= 1  # new sales
    assert any(hold.settled is LineStatus.COMMITTED for _, hold in written)
    assert any(hold.settled is LineStatus.RELEASED for _, hold in written)
    settled_keys = {key for key, hold in written if hold.settled is not None}
    assert any(value is None and key in settled_keys for key, value, _ in log)  # expired
    for operation, result in [
        ("set", "already_applied"),
        ("commit", "applied"),
        ("release", "applied"),
        ("commit", "already_applied"),
        ("release", "already_applied"),
        ("commit", "not_reserved"),
        ("release", "not_reserved"),
    ]:
        labels = {"operation": operation, "result": result}
        assert registry.get_sample_value("orderstream_stock_commands_total", labels), labels
    assert any(
        registry.get_sample_value(
            "orderstream_stock_commands_total", {"operation": operation, "result": "conflicting"}
        )
        for operation in ("commit", "release")
    )
    for cut in range(len(log) + 1):
        prefix = log[:cut]
        restored = PartitionStore(tmp_path / f"restored-{cut}")
        report = restore(restored, *prefix)
        assert restored.stock == (live_after[cut - 1] if cut else {}), f"cut at {cut}"
        assert report.orphans == []
        present: dict[bytes, bytes | None] = {}
        for key, value, _ in prefix:
            if key[:1] == HOLD_KEY:
                present[key[1:]] = value
        for key in hold_keys:
            assert restored.hold(key) == present.get(key)
        holds = [decode_hold(value) for value in present.values() if value]
        # What each user holds or bought in the product's current sale: the last record
        # of each of its holds, expired (final) ones included, counting reserved and
        # committed lines reserved since the sale began.
        last: dict[bytes, Hold] = {}
        for key, value, _ in prefix:
            if key[:1] == HOLD_KEY and value is not None:
                last[key] = decode_hold(value)
        counted: dict[tuple[str, str], int] = {}
        for hold in last.values():
            if hold.line_status not in (LineStatus.RESERVED, LineStatus.COMMITTED):
                continue
            assert hold.stock_version is not None
            if restored.stock[hold.product_id].in_current_sale(hold.stock_version):
                user_product = (hold.user_id, hold.product_id)
                counted[user_product] = counted.get(user_product, 0) + hold.quantity
        for user_id in ("u0", "u1", "u2", "u3"):
            for product_id in stocked:
                expected = counted.get((user_id, product_id), 0)
                assert restored.held(user_id, product_id) == expected, (cut, user_id, product_id)
        for product_id, level in restored.stock.items():
            mine = [h for h in holds if h.product_id == product_id]
            # Reservations are never expired: the reserved figure is exactly theirs. Sold
            # lines may have left the dedup window: the sold figure is at least theirs.
            reserved = sum(h.quantity for h in mine if h.line_status is LineStatus.RESERVED)
            sold = sum(h.quantity for h in mine if h.line_status is LineStatus.COMMITTED)
            assert level.reserved == reserved
            assert level.sold >= sold
            assert level.available == level.total_in - reserved - level.sold
            assert level.is_conserved
        restored.close()


# --- expiry ----------------------------------------------------------------------------


def test_expire_drops_old_final_holds_a_bounded_slice_at_a_time_and_tombstones_them(
    store: PartitionStore,
) -> None:
    changelog = Changelog()
    old = [hold_key(f"o{i}", "p1") for i in range(5)]
    for i, key in enumerate(old):
        store.put_hold(key, make_hold(f"o{i}", "p1", 1, None, 1_000 + i), changelog)
    kept = [hold_key("old-reserved", "p1"), hold_key("new", "p1")]
    store.put_hold(kept[0], make_hold("old-reserved", "p1", 1, 2, 500), changelog)
    store.put_hold(kept[1], make_hold("new", "p1", 1, None, 5_000), changelog)
    del changelog.records[:]

    # Each call looks at no more than `scan` holds and goes on where the last one stopped:
    # one pass over the seven holds takes four calls.
    dropped = [store.expire(5_000, 2, changelog) for _ in range(4)]
    assert all(count <= 2 for count in dropped)
    assert sum(dropped) == len(old)
    assert sorted(changelog.records) == sorted(
        (HOLD_KEY + key, None, changelog.now_ms) for key in old
    )
    assert all(store.hold(key) is None for key in old)
    assert all(store.hold(key) is not None for key in kept)
    assert store.expire(5_000, 100, changelog) == 0  # the next pass finds nothing more


def test_expire_after_a_restore_leaves_reservations_alone(store: PartitionStore) -> None:
    # A restore stamps every hold with its changelog time, reservations too.
    restore(
        store,
        snapshot("p1", available=10, version=1),
        hold_record("o1", "p1", 2, 2, at_ms=1_000),
        hold_record("o2", "p1", 1, None, at_ms=1_500),
        hold_record("o3", "p1", 3, 3, at_ms=2_000),
        hold_record("o4", "p1", 1, None, at_ms=9_000),
    )
    stock = dict(store.stock)
    changelog = Changelog()
    assert store.expire(5_000, 10, changelog) == 1
    assert changelog.records == [(HOLD_KEY + hold_key("o2", "p1"), None, changelog.now_ms)]
    assert store.expire(10_000, 10, changelog) == 1  # o4 only: reservations are never final
    assert store.expire(10_000, 10, changelog) == 0
    for order_id in ("o1", "o3"):
        assert store.hold(hold_key(order_id, "p1")) is not None
    assert store.stock == stock


def test_a_settled_hold_expires_a_dedup_window_after_its_settlement(
    store: PartitionStore,
) -> None:
    changelog = Changelog()
    reservation = make_hold("o1", "p1", 2, 2, 1_000)
    store.put_hold(hold_key("o1", "p1"), reservation, changelog)
    assert store.expire(50_000, 10, changelog) == 0  # a reservation is never final
    store.put_hold(hold_key("o1", "p1"), reservation.settled_by(Committed(2, 3), 40_000), changelog)
    assert store.expire(40_000, 10, changelog) == 0  # decided long ago, settled just now
    assert store.expire(40_001, 10, changelog) == 1
    assert changelog.records[-1] == (HOLD_KEY + hold_key("o1", "p1"), None, changelog.now_ms)


# --- the holds cache -------------------------------------------------------------------


def test_hold_returns_the_bytes_recorded_or_restored(store: PartitionStore) -> None:
    changelog = Changelog()
    recorded = make_hold("o1", "p1", 2, 2, 1_000)
    store.put_hold(hold_key("o1", "p1"), recorded, changelog)
    encoded = encode_hold(recorded)
    assert store.hold(hold_key("o1", "p1")) == encoded
    assert decode_hold(encoded) == recorded
    assert len(encoded) < len(legacy_json(recorded, nulls=False)) / 2  # the compact form
    assert changelog.records == [(HOLD_KEY + hold_key("o1", "p1"), encoded, 1_000)]
    key, value, _ = hold_record("o2", "p1", 1, None)
    restore(store, (key, value, 1_000))
    assert store.hold(hold_key("o2", "p1")) == value
    assert store.hold(hold_key("o3", "p1")) is None


def test_a_restore_keeps_no_rejection_to_fold_whichever_way_it_was_written(
    store: PartitionStore, tmp_path: Path
) -> None:
    """Rejections change no stock: a restore keeps none of them in memory, whether the
    hold is compact (newer), or JSON spelling its null stock_version out (oldest) or
    leaving it out."""
    writer = PartitionStore(tmp_path / "writer")
    changelog = Changelog()
    writer.put_hold(hold_key("o1", "p1"), make_hold("o1", "p1", 1, None, 1_000), changelog)
    writer.close()
    rejection = make_hold("o2", "p1", 1, None, 1_000)
    oldest, older = legacy_json(rejection, nulls=True), legacy_json(rejection, nulls=False)
    assert b'"stock_version":null' in oldest
    assert b'"stock_version"' not in older
    rejected = HOLD_KEY + hold_key("o2", "p1")
    for key, value, at_ms in (changelog.records[0], (rejected, oldest, 1), (rejected, older, 2)):
        store.restore(key, value, at_ms)
    assert store._since_snapshot == {}  # what finish_restore would fold: nothing
    reservation = encode_hold(make_hold("o3", "p1", 1, 2, 1_000))
    store.restore(HOLD_KEY + hold_key("o3", "p1"), reservation, 3)
    assert list(store._since_snapshot[b"p1"].values()) == [reservation]


def test_a_new_store_on_the_same_path_starts_empty(tmp_path: Path) -> None:
    path = tmp_path / "store"
    first = PartitionStore(path)
    first.put_hold(hold_key("o1", "p1"), make_hold("o1", "p1", 1, None, 1_000), Changelog())
    first.apply("p1", StockSet(3, 1, offset=0), Changelog())
    first._db.close()  # a crash: the cache is left on disk, not deleted
    (path / "leftover").write_bytes(b"x")
    second = PartitionStore(path)
    try:
        assert second.hold(hold_key("o1", "p1")) is None
        assert second.stock == {}
        assert not (path / "leftover").exists()
    finally:
        second.close()


def test_close_removes_the_directory(tmp_path: Path) -> None:
    path = tmp_path / "store"
    partition_store = PartitionStore(path)
    partition_store.put_hold(hold_key("o1", "p1"), make_hold("o1", "p1", 1, 2, 1_000), Changelog())
    assert path.is_dir()
    partition_store.close()
    assert not path.exists()


def test_a_new_sale_counts_from_zero_in_every_restore_of_its_changelog(tmp_path: Path) -> None:
    """A user buys up to the limit, a new sale begins, the user buys again; a line of the
    first sale given back after that frees no place in the second. Wherever the changelog
    is cut, the restored store counts what the live one counted there."""
    settings = Settings(partitions=1, topic_prefix="", max_line_quantity=4)
    processor = StockProcessor(settings, WorkerMetrics.register(CollectorRegistry()))
    live = PartitionStore(tmp_path / "live")
    changelog = Changelog()
    counted: dict[int, int] = {}  # changelog length after a record's effects -> u1's count
    offsets = iter(range(1_000))

    def feed(topic: str, value: bytes) -> OrderStatus | None:
        changelog.now_ms += 10
        record = SourceRecord(topic, 0, next(offsets), changelog.now_ms, None, value)
        effects = processor.process(record, live, changelog.now_ms)
        for product_id, event in effects.stock:
            live.apply(product_id, event, changelog)
        for key, hold in effects.holds:
            live.put_hold(key, hold, changelog)
        for user_id, product_id, quantity in effects.held:
            live.change_held(user_id, product_id, quantity)
        live.snapshot_changed(changelog)
        counted[len(changelog.records)] = live.held("u1", "p1")
        return effects.holds[0][1].status if topic == ORDER_REQUESTS else None

    def buy(order_id: str) -> OrderStatus | None:
        return feed(
            ORDER_REQUESTS,
            b'{"order_id":"%s","user_id":"u1","product_id":"p1","quantity":1}' % order_id.encode(),
        )

    def stock(operation: str, order_id: str = "", extra: bytes = b"") -> None:
        order = b',"order_id":"%s"' % order_id.encode() if order_id else b""
        feed(STOCK_COMMANDS, b'{"product_id":"p1","operation":"%s"%s%s}' % (
            operation.encode(), order, extra
        ))  # fmt: skip

    stock("set", extra=b',"quantity":10,"max_per_user":2')
    assert [buy("a"), buy("b"), buy("c")] == [OrderStatus.RESERVED] * 2 + [OrderStatus.REJECTED]
    stock("set", extra=b',"quantity":10,"new_sale":true')
    assert live.held("u1", "p1") == 0
    assert buy("d") is OrderStatus.RESERVED
    stock("release", "a")  # a line of the first sale: its unit back, no place in this sale
    stock("commit", "b")
    assert live.held("u1", "p1") == 1
    assert [buy("e"), buy("f")] == [OrderStatus.RESERVED, OrderStatus.REJECTED]
    stock("release", "d")  # this sale's: a place again
    assert [buy("g"), buy("h")] == [OrderStatus.RESERVED, OrderStatus.REJECTED]
    live.close()

    log = changelog.records
    for cut in range(1, len(log) + 1):
        restored = PartitionStore(tmp_path / f"restored-{cut}")
        restore(restored, *log[:cut])
        # u1's lines of the current sale in the prefix, as their last records say.
        last = {key: value for key, value, _ in log[:cut] if key[:1] == HOLD_KEY and value}
        level = restored.stock["p1"]
        expected = sum(
            hold.quantity
            for hold in map(decode_hold, last.values())
            if hold.line_status in (LineStatus.RESERVED, LineStatus.COMMITTED)
            and level.in_current_sale(hold.stock_version or 0)
        )
        assert restored.held("u1", "p1") == expected, f"cut after record {cut}"
        if cut in counted:  # between two records' effects: what the live store counted
            assert expected == counted[cut], f"cut after record {cut}"
        restored.close()
    assert len(counted) == 13  # every record had effects
