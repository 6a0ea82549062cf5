"""The stock agent's partition store: stock levels in memory, holds in RocksDB, one changelog.

Every change goes to the partition's one changelog partition, in the order it was made:
a hold as it is recorded (with the stock version its reservation produced) and again
when a commit or a release settles it (with the version of that event too), a stock
snapshot when a stock command applies and once per batch for the products whose stock
the batch changed, a tombstone when a final hold leaves the dedup window. So a snapshot
of a product always follows every hold record whose events it contains, and a restore
takes the last snapshot of each product and folds in the events of the holds written
after it (a hold's last record carries all of its events; those the snapshot already
contains are older than it and skipped): whatever prefix of the log survived a crash,
the stock restored is exactly the effect of the holds and commands that survived.
"""

from __future__ import annotations

import logging
import shutil
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import rocksdict

from orderstream.domain import (
    CatalogUpdated,
    Released,
    Reserved,
    StockAdded,
    StockEvent,
    StockLevel,
    StockSet,
    evolve,
    fold_newer,
)
from orderstream.tables import (
    FENCE_KEY,
    HELD_KEY,
    HOLD_KEY,
    NO_EPOCH,
    STOCK_KEY,
    HeldCount,
    Hold,
    decode_hold,
    encode_hold,
    held_key,
    hold_product,
    record_epoch,
)

log = logging.getLogger(__name__)

__all__ = ["Append", "PartitionStore", "RestoreReport"]

# Append(key, value) adds a record to the partition's changelog (value None: a tombstone).
Append = Callable[[bytes, bytes | None], None]

# A hold is stored behind the time it last changed (8 bytes), which is all that expiry
# needs to read of most holds.
_TIME = struct.Struct(">Q")
# A rejection's hold changed no stock: a restore need not keep it to fold (with a crowd
# of rejections for a product that has no stock, keeping them would fill the memory).
# A JSON hold (written before the compact form) says so in its text, without or with
# its null fields.
_STOCK_EVENT = b'"stock_version":'
_NO_STOCK_EVENT = b'"stock_version":null'


def _changed_stock(value: bytes) -> bool:
    """Whether a stored hold records a stock event (a reservation)."""
    if value[:1] == b"{":
        return _STOCK_EVENT in value and _NO_STOCK_EVENT not in value
    return decode_hold(value).stock_version is not None


@dataclass
class RestoreReport:
    """What a restore read, for the log line an operator sees."""

    records: int = 0
    snapshots: int = 0  # products with a stock snapshot
    holds: int = 0  # hold records read
    fenced: int = 0  # records of a writer fenced off by a later epoch, dropped
    epoch: int = NO_EPOCH  # the highest writer epoch read
    replayed: int = 0  # stock events newer than their product's last snapshot
    orphans: list[str] = field(default_factory=list)  # reservations of unknown products


class PartitionStore:
    """Stock and holds of the products one partition owns.

    Holds live in a RocksDB cache on disk (every order in the dedup window: keeping them
    in Python objects would grow the worker's memory with the sale); the stock, a record
    per product, stays in a dict. The cache is wiped when opened: the changelog is the
    truth, and this process cannot know what a previous one wrote to it last.
    """

    def __init__(self, path: Path) -> None:
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        self._path = path
        self._db = rocksdict.Rdict(str(path), _options())
        write_options = rocksdict.WriteOptions()
        # No write-ahead log: a crash loses the cache, and the next start rebuilds it.
        write_options.disable_wal = True  # type: ignore[method-assign,assignment]
        self._db.set_write_options(write_options)
        self.stock: dict[str, StockLevel] = {}
        self._dirty: set[str] = set()  # products changed since the last snapshot
        # Per (user, product) key: what the user holds or bought, and as of which stock
        # version it was last written to the changelog (see _append_stock).
        self._held: dict[bytes, HeldCount] = {}
        self._dirty_held: dict[str, set[bytes]] = {}  # product -> its counts changed since
        # During a restore: per product, the holds read since its last snapshot.
        self._since_snapshot: dict[bytes, dict[bytes, bytes]] = {}
        self._report = RestoreReport()
        self._expiry_cursor = b""
        # The highest writer epoch the restore read: the new owner's is above it.
        self.restored_epoch = NO_EPOCH

    # --- reading (the processor's PartitionView) ------------------------------------

    def level(self, product_id: str) -> StockLevel | None:
        """Return a product's stock level, or None if it never had stock."""
        return self.stock.get(product_id)

    def hold(self, key: bytes) -> bytes | None:
        """Return the encoded hold under ``key``, if any."""
        stored = self._db.get(key)
        return stored[_TIME.size :] if isinstance(stored, bytes) else None

    def held(self, user_id: str, product_id: str) -> int:
        """Return what ``user_id`` holds (reserved) or bought of ``product_id``."""
        count = self._held.get(held_key(user_id, product_id))
        if count is None or count.sale != self._sale_of(product_id):
            return 0  # nothing yet, or only in an earlier sale of the product
        return count.held

    def _sale_of(self, product_id: str) -> int:
        """Return the stock version at which the product's current sale began."""
        level = self.stock.get(product_id)
        return level.sale_started if level is not None else 0

    # --- writing ----------------------------------------------------------------------

    def put_hold(self, key: bytes, hold: Hold, append: Append) -> None:
        """Record a new or changed hold, in the cache and the changelog."""
        encoded = encode_hold(hold)
        # Stamped with its last change, as a restore stamps it with its last record's time:
        # a settled hold stays for a dedup window after its settlement.
        self._db[key] = _TIME.pack(hold.changed_at_ms) + encoded
        append(HOLD_KEY + key, encoded)

    def apply(self, product_id: str, event: StockEvent, append: Append) -> None:
        """Apply a stock event; a stock command's result goes to the changelog at once."""
        previous = self.stock.get(product_id)
        level = evolve(previous, event)
        command = isinstance(event, StockSet | StockAdded | CatalogUpdated)
        if command:
            # The counts as of the stock before the command, which changes none of them.
            self._append_held(product_id, previous.version if previous else 0, append)
        self.stock[product_id] = level
        self._dirty.add(product_id)  # snapshotted at the end of the batch, for the sink too
        if command:
            # Now as well: the reservations this restock allows (at this price) must
            # come after it in the changelog.
            append(STOCK_KEY + product_id.encode(), level.model_dump_json().encode())

    def change_held(self, user_id: str, product_id: str, delta: int) -> None:
        """Add ``delta`` to what a user holds of a product (a reservation +, a release -).

        Written to the changelog with the product's next stock snapshot. Never below
        zero: a release always follows its reservation, so a negative count is a bug,
        logged rather than allowed to refuse a later request.
        """
        key = held_key(user_id, product_id)
        current = self._held.get(key)
        sale = self._sale_of(product_id)
        held = (current.held if current is not None and current.sale == sale else 0) + delta
        if held < 0:
            log.error("user %s would hold %d of %s; counted as 0", user_id, held, product_id)
            held = 0
        version = current.version if current is not None else 0
        self._held[key] = HeldCount(held=held, version=version, sale=sale)
        self._dirty_held.setdefault(product_id, set()).add(key)

    def snapshot_changed(self, append: Append) -> list[tuple[str, StockLevel]]:
        """Snapshot every product changed since the last call; return them for the sink."""
        changed = [(product_id, self.stock[product_id]) for product_id in self._dirty]
        for product_id, level in changed:
            self._append_held(product_id, level.version, append)
            append(STOCK_KEY + product_id.encode(), level.model_dump_json().encode())
        self._dirty.clear()
        return changed

    def _append_held(self, product_id: str, version: int, append: Append) -> None:
        """Append the changed counts of a product's users, as of its stock ``version``.

        Called before every stock snapshot of the product, so that a snapshot is always
        preceded by the counts of every reservation and release it contains, and a
        restore need fold into a count only the holds written after the product's last
        snapshot that are newer than the count (see finish_restore).
        """
        for key in self._dirty_held.pop(product_id, ()):
            count = self._held[key].model_copy(update={"version": version})
            self._held[key] = count
            append(HELD_KEY + key, count.model_dump_json().encode())

    def expire(self, before_ms: int, scan: int, append: Append) -> int:
        """Scan up to ``scan`` holds on from the last call; drop the final ones decided
        before ``before_ms`` and tombstone them in the changelog; return how many.

        The scan goes round the key space a slice at a time, so a pass over a million
        holds costs a few milliseconds per call instead of one long pause.
        """
        old: list[bytes] = []
        scanned = 0
        for key, stored in self._db.items(from_key=self._expiry_cursor):
            if not isinstance(key, bytes) or not isinstance(stored, bytes):
                continue  # raw mode: always bytes; this keeps mypy and us honest
            if scanned >= scan:
                self._expiry_cursor = key
                break
            scanned += 1
            (decided_at_ms,) = _TIME.unpack_from(stored)
            if decided_at_ms < before_ms and decode_hold(stored[_TIME.size :]).is_final:
                old.append(key)
        else:
            self._expiry_cursor = b""  # the end: start over next time
        for key in old:
            del self._db[key]
            append(HOLD_KEY + key, None)
        return len(old)

    # --- restoring --------------------------------------------------------------------

    def restore(
        self,
        key: bytes,
        value: bytes | None,
        timestamp_ms: int,
        headers: Iterable[tuple[str, bytes]] = (),
    ) -> None:
        """Apply one changelog record, in log order, unless a later writer fenced its own."""
        self._report.records += 1
        epoch = record_epoch(headers)
        if epoch < self._report.epoch:
            self._report.fenced += 1  # written by an owner that had lost the partition
            return
        self._report.epoch = epoch
        kind, rest = key[:1], key[1:]
        if kind == FENCE_KEY:
            return  # its epoch is all it says
        if kind == HOLD_KEY:
            if value is None:  # a hold that left the dedup window
                self._db.delete(rest)
                self._since_snapshot.get(hold_product(rest), {}).pop(rest, None)
                return
            self._report.holds += 1
            # Stamped with the changelog record's time (written when it was decided), so
            # that restoring need not parse the hold.
            self._db[rest] = _TIME.pack(timestamp_ms) + value
            if _changed_stock(value):
                self._since_snapshot.setdefault(hold_product(rest), {})[rest] = value
        elif kind == HELD_KEY and value is not None:
            self._held[rest] = HeldCount.model_validate_json(value)
        elif kind == STOCK_KEY and value is not None:
            # Later in the log means later in time: the last snapshot wins, and it
            # contains every hold written before it.
            self.stock[rest.decode()] = StockLevel.model_validate_json(value)
            self._since_snapshot.pop(rest, None)
        else:
            log.warning("ignoring changelog record with key %r", key[:40])

    def finish_restore(self) -> RestoreReport:
        """Fold in the stock events of the holds newer than their product's last snapshot."""
        report, self._report = self._report, RestoreReport()
        report.snapshots = len(self.stock)
        self.restored_epoch = report.epoch
        for product, values in self._since_snapshot.items():
            # Parsed once: their events move the stock and their users' counts.
            holds = [(hold, hold.stock_events()) for hold in map(decode_hold, values.values())]
            events = [event for _, hold_events in holds for event in hold_events]
            if not events:
                continue
            product_id = product.decode()
            level = self.stock.get(product_id)
            if level is None:
                # Cannot happen with an ordered log (a restock's snapshot precedes every
                # reservation it allows); say so loudly rather than invent a stock level.
                report.orphans.append(product_id)
                continue
            self.stock[product_id], applied = fold_newer(level, events)
            report.replayed += applied
            self._fold_held(holds)
        self._since_snapshot.clear()
        return report

    def _fold_held(self, holds: Iterable[tuple[Hold, list[StockEvent]]]) -> None:
        """Add to each user's count the reservations and releases newer than it, of the
        product's current sale (a line of an earlier sale counts in none)."""
        for hold, events in holds:
            level = self.stock[hold.product_id]
            if hold.stock_version is None or not level.in_current_sale(hold.stock_version):
                continue
            key = held_key(hold.user_id, hold.product_id)
            count = self._held.get(key)
            since = count.version if count is not None else 0
            sale = level.sale_started
            current = count is not None and count.sale == sale
            held = count.held if count is not None and current else 0
            for event in events:
                if event.version <= since:
                    continue
                if isinstance(event, Reserved):
                    held += event.quantity
                elif isinstance(event, Released):
                    held -= event.quantity
            if count is None or not current or held != count.held:
                # Dirty: written before the product's next snapshot, with its version.
                self._held[key] = HeldCount(held=max(held, 0), version=since, sale=sale)
                self._dirty_held.setdefault(hold.product_id, set()).add(key)

    def close(self) -> None:
        """Close the RocksDB cache and delete it."""
        self._db.close()
        shutil.rmtree(self._path, ignore_errors=True)


# One block cache for every partition's database of the process, so that owning more
# partitions does not multiply it.
_BLOCK_CACHE = rocksdict.Cache(32 * 1024**2)


def _options() -> rocksdict.Options:
    # A cache of a few hundred bytes per order: small memtables and a shared block cache
    # keep the worker's memory flat over a sale, however many partitions it owns (8 MiB
    # memtables and a cache per partition grow it with every partition a sale touches).
    options = rocksdict.Options(raw_mode=True)
    options.create_if_missing(True)
    options.set_write_buffer_size(2 * 1024**2)
    options.set_max_write_buffer_number(2)
    table = rocksdict.BlockBasedOptions()
    table.set_block_cache(_BLOCK_CACHE)
    # Nearly every lookup is a miss (a new order); a bloom filter answers most of them
    # without reading a block, which makes a miss among flushed holds ~2.5 times cheaper.
    table.set_bloom_filter(10, False)
    options.set_block_based_table_factory(table)
    return options
