"""Every table of the worker, its key, and the type of its values.

Table names are spelled here only. Values are JSON bytes, a hold compact (encode_hold);
the changelog topic (``{app_id}-{table}-changelog``) is the truth, the local RocksDB
store a cache that recovery rebuilds.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from decimal import Decimal
from typing import Annotated

import msgspec
from pydantic import BaseModel, ConfigDict, Field

from orderstream.codec import DecisionEvent, LineOutcome, RequestLine, WireAddress
from orderstream.domain import (
    Committed,
    Decision,
    LineStatus,
    OrderStatus,
    RejectReason,
    Released,
    Reserved,
    StockEvent,
    StockLevel,
)
from orderstream.field_copy import copier
from orderstream.settings import Settings
from orderstream.topics import TopicSpec

# The stock agent keeps stock and holds in one changelog, so that one partition's records
# stay in the order they were made: key STOCK_KEY + product id -> StockLevel JSON,
# HOLD_KEY + hold_key(...) -> Hold JSON. A restore that reads it in order never sees a
# reservation before the restock that allowed it.
STOCK_CHANGELOG = "stock-changelog"
# The order lifecycle's Faust table: order id -> StoredOrder JSON (agents/lifecycle/orders.py).
ORDERS_TABLE = "orders"
LIFECYCLE_APP_SUFFIX = "-orders"
STOCK_KEY = b"s"
HOLD_KEY = b"h"
# HELD_KEY + held_key(user, product) -> HeldCount JSON: what one user holds or bought of
# a product, for the per-user limit (written before the product's stock snapshot).
HELD_KEY = b"u"
# Fencing a writer that lost its partition but does not know it yet (paused past its
# session: GC, SIGSTOP, a slow disk): every changelog record carries its writer's epoch
# in the EPOCH_HEADER (8 bytes, big-endian), and an owner that takes a partition over
# writes FENCE_KEY + its epoch first, its epoch above every one the restore saw. A
# restore drops a record whose epoch is below one read before it: the stale snapshot of
# a paused writer, landing after the new owner's holds, can no longer undo them.
FENCE_KEY = b"f"
EPOCH_HEADER = "orderstream-epoch"
EPOCH = struct.Struct(">q")
NO_EPOCH = -1  # records written before epochs existed: older than any epoch


def record_epoch(headers: Iterable[tuple[str, bytes]]) -> int:
    """Return the writer epoch of a changelog record, from its headers."""
    return next((EPOCH.unpack(v)[0] for k, v in headers if k == EPOCH_HEADER), NO_EPOCH)


# (settled, final_version given, settled_at_ms given) of a hold: unsettled, or settled whole.
_SETTLED_SHAPES = {
    (None, False, False),
    (LineStatus.COMMITTED, True, True),
    (LineStatus.RELEASED, True, True),
}

# What a hold takes from its request line, as the shop sent it.
REQUESTED_FIELDS = (
    "order_id",
    "user_id",
    "product_id",
    "quantity",
    "line_count",
    "shipping_address",
    "billing_address",
    "notes",
)
# What a hold announces as it recorded it: the fields its order event (a single-line
# order) and its line decision (an order of several lines) copy. A field a line carries
# on to the order agent and the sink is named here once; test_line_fields fails until
# the structs on the way have it.
ANNOUNCED_FIELDS = (
    "order_id",
    "user_id",
    "product_id",
    "quantity",
    "status",
    "reason",
    "detail",
    "requested_at_ms",
    "decided_at_ms",
    "unit_price",
    "currency",
    "shipping_address",
    "billing_address",
    "notes",
)

__all__ = [
    "HeldCount",
    "Hold",
    "StockLevel",
    "changelog_specs",
    "decode_hold",
    "encode_hold",
    "held_key",
    "hold_key",
    "lifecycle_app_id",
    "orders_changelog",
    "stock_changelog",
]


class HeldCount(BaseModel):
    """What one user holds (reserved) or bought of one product, as of a stock version.

    ``version`` is the product's stock version when this count was written: a restore
    adds the reservations and releases of the user's holds newer than it.
    """

    model_config = ConfigDict(frozen=True)

    held: int = Field(ge=0)
    version: int = Field(ge=0)
    # The sale it counts in (StockLevel.sale_started then): one of an earlier sale
    # counts as nothing.
    sale: int = Field(default=0, ge=0)


class Hold(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True, array_like=True):
    """One (order, product) line at the stock agent: its decision, and where its stock stands.

    The decision (``status``: RESERVED or REJECTED) never changes once recorded: a
    duplicate request re-emits it, whatever happened to the line since. A reserved line
    moves on once more, by a commit or a release, and the hold is rewritten with that
    (``settled``) and the stock version it produced (``final_version``).

    Stored compact (encode_hold): a MessagePack array of the fields in this order, no
    names, trailing absent ones left out. Holds written before that are JSON objects;
    decode_hold reads both.
    """

    order_id: str
    user_id: str
    product_id: str
    quantity: Annotated[int, msgspec.Meta(ge=1)]
    # Lines of the order: 1 is decided in one hop (an order event), more are assembled
    # by the order agent (a line decision on line-outcomes).
    line_count: Annotated[int, msgspec.Meta(ge=1)] = 1
    status: OrderStatus  # the decision announced
    reason: RejectReason | None = None
    detail: str | None = None
    requested_at_ms: int
    decided_at_ms: int
    # The product's stock version after this reservation (None: the stock did not
    # change). A restore re-applies a hold newer than the last stock snapshot it read.
    stock_version: int | None = None
    # COMMITTED or RELEASED once a commit or a release moved the reserved line, with the
    # product's stock version after that event and when it happened (None: not yet).
    settled: LineStatus | None = None
    final_version: int | None = None
    settled_at_ms: int | None = None
    # The product's unit price when the line was decided: a later price change never
    # alters a placed order.
    unit_price: Decimal | None = None
    currency: str | None = None
    # The order's metadata as this line carried it, announced with the decision.
    shipping_address: WireAddress | None = None
    billing_address: WireAddress | None = None
    notes: str | None = None

    def __post_init__(self) -> None:
        # A restore re-applies what a hold records: half a settlement would be a guess.
        shape = (self.settled, self.final_version is not None, self.settled_at_ms is not None)
        if shape not in _SETTLED_SHAPES or (self.settled and self.stock_version is None):
            raise ValueError(
                "settled (COMMITTED or RELEASED), final_version and settled_at_ms come"
                f" together, on a reservation; got settled={self.settled},"
                f" final_version={self.final_version}, settled_at_ms={self.settled_at_ms},"
                f" stock_version={self.stock_version}"
            )

    @classmethod
    def of(
        cls,
        request: RequestLine,
        decision: Decision,
        requested_at_ms: int,
        decided_at_ms: int,
        *,
        stock_version: int | None = None,
        level: StockLevel | None = None,
    ) -> Hold:
        """Record ``decision`` on ``request``, at the price of ``level`` (the product's stock)."""
        return _hold_of_request(
            request,
            decision.status,
            decision.reason,
            decision.detail,
            requested_at_ms,
            decided_at_ms,
            stock_version,
            level.price if level is not None else None,
            level.currency if level is not None else None,
        )

    @property
    def line_status(self) -> LineStatus:
        """Return where the line's stock stands now."""
        if self.settled is not None:
            return self.settled
        return LineStatus.RESERVED if self.status is OrderStatus.RESERVED else LineStatus.REJECTED

    @property
    def is_final(self) -> bool:
        """Whether nothing can change this hold any more (it may then expire)."""
        return self.line_status is not LineStatus.RESERVED

    @property
    def changed_at_ms(self) -> int:
        """Return when this hold was last written: the dedup window counts from then."""
        return self.settled_at_ms if self.settled_at_ms is not None else self.decided_at_ms

    def settled_by(self, event: Committed | Released, at_ms: int) -> Hold:
        """Return this reserved line moved on by ``event`` at ``at_ms``."""
        settled = LineStatus.COMMITTED if isinstance(event, Committed) else LineStatus.RELEASED
        return msgspec.structs.replace(
            self, settled=settled, final_version=event.version, settled_at_ms=at_ms
        )

    def stock_events(self) -> list[StockEvent]:
        """Return the stock events this hold records, for a restore to re-apply."""
        if self.stock_version is None:
            return []  # a rejection changed no stock
        reserved = Reserved(self.quantity, self.stock_version)
        if self.final_version is None:
            return [reserved]
        settled = Committed if self.settled is LineStatus.COMMITTED else Released
        return [reserved, settled(self.quantity, self.final_version)]

    def line_decision(self) -> LineOutcome:
        """Return the decision of this line, for the order agent (orders of several lines)."""
        return _line_decision_of_hold(self, self.line_count)

    def decision_event(self) -> DecisionEvent:
        """Return the order event that announces this decision."""
        # A single-line order is decided in one hop: its first and only stock decision
        # is the order's transition number 1.
        total = self.unit_price * self.quantity if self.unit_price is not None else None
        return _decision_event_of_hold(self, 1, None, total)


_hold_of_request = copier(
    Hold,
    REQUESTED_FIELDS,
    "status",
    "reason",
    "detail",
    "requested_at_ms",
    "decided_at_ms",
    "stock_version",
    "unit_price",
    "currency",
)
_line_decision_of_hold = copier(LineOutcome, ANNOUNCED_FIELDS, "line_count")
_decision_event_of_hold = copier(DecisionEvent, ANNOUNCED_FIELDS, "seq", "stock", "total")


class _JsonHold(Hold, frozen=True, array_like=False):
    """A hold as written before the compact form: a JSON object."""


_hold_packer = msgspec.msgpack.Encoder(decimal_format="string")
_hold_unpacker = msgspec.msgpack.Decoder(Hold)
_json_hold_decoder = msgspec.json.Decoder(_JsonHold)


def encode_hold(hold: Hold) -> bytes:
    """Return ``hold`` in its compact stored form (changelog and RocksDB)."""
    return _hold_packer.encode(hold)


def decode_hold(raw: bytes) -> Hold:
    """Return the hold stored as ``raw``: the compact form, or the JSON of older holds."""
    if raw[:1] == b"{":
        legacy = _json_hold_decoder.decode(raw)
        return Hold(**msgspec.structs.asdict(legacy))
    return _hold_unpacker.decode(raw)


def hold_key(order_id: str, product_id: str) -> bytes:
    """Return the table key of one (order, product) hold."""
    # Length-prefixed, so ("ab", "c") and ("a", "bc") never share a key. The length is of
    # the encoded order id, so that hold_product can find the product without decoding.
    order = order_id.encode()
    return b"%d:%b%b" % (len(order), order, product_id.encode())


def held_key(user_id: str, product_id: str) -> bytes:
    """Return the key of what one user holds of one product (as ``hold_key``)."""
    return hold_key(user_id, product_id)


def hold_product(key: bytes) -> bytes:
    """Return the encoded product id of a hold key or a held key (a restore sorts by product)."""
    length, _, rest = key.partition(b":")
    return rest[int(length) :]


def stock_changelog(settings: Settings) -> str:
    """Return the name of the stock agent's changelog topic."""
    return f"{settings.app_id}-{STOCK_CHANGELOG}"


def lifecycle_app_id(settings: Settings) -> str:
    """Return the order lifecycle's Faust app id (its consumer group, its changelogs' prefix).

    Never the stock agent's group (the app id itself), whose partitions are another agent's.
    """
    return f"{settings.app_id}{LIFECYCLE_APP_SUFFIX}"


def orders_changelog(settings: Settings) -> str:
    """Return the name of the orders table's changelog topic, as Faust names it."""
    return f"{lifecycle_app_id(settings)}-{ORDERS_TABLE}-changelog"


def changelog_specs(settings: Settings) -> list[TopicSpec]:
    """Return every changelog topic, created up front with the sources' partition count.

    The orders table's too: Faust writes an order's changelog record to the partition
    number of the order-keyed input being processed.
    """
    compacted = {"cleanup.policy": "compact"}
    return [
        TopicSpec(name, settings.partitions, compacted)
        for name in (stock_changelog(settings), orders_changelog(settings))
    ]
