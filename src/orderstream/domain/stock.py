"""The stock rules: decide a line, settle it, apply a stock command, and fold stock events.

Every change to a product's stock is a ``StockEvent``; ``evolve`` is the only code that
applies one. The stock agent decides with it, and a restore re-applies recorded events
with it, so deciding and restoring can never disagree about what an event does.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum

from orderstream.domain.models import (
    Decision,
    LineRequest,
    LineStatus,
    OrderStatus,
    RejectReason,
    StockLevel,
    StockOperation,
)


@dataclass(frozen=True, slots=True)
class Reserved:
    """``quantity`` moved from available to reserved."""

    quantity: int
    version: int  # the product's stock version after this event


@dataclass(frozen=True, slots=True)
class Released:
    """``quantity`` moved from reserved back to available (cancel, expiry, rejection)."""

    quantity: int
    version: int


@dataclass(frozen=True, slots=True)
class Committed:
    """``quantity`` moved from reserved to sold (a paid order)."""

    quantity: int
    version: int


@dataclass(frozen=True, slots=True)
class CatalogPatch:
    """What a stock command changes of a product's catalog; None leaves a field as it is.

    ``price`` and ``currency`` change together. ``max_per_user`` 0 removes the product's
    own limit (the default setting applies again).
    """

    price: Decimal | None = None
    currency: str | None = None
    max_per_user: int | None = None

    def __post_init__(self) -> None:
        if (self.price is None) != (self.currency is None):
            raise ValueError("a price and its currency are set together")
        if self.max_per_user is not None and self.max_per_user < 0:
            raise ValueError(f"max_per_user must be >= 0 (0: no limit), got {self.max_per_user}")

    @property
    def is_empty(self) -> bool:
        return self.price is None and self.max_per_user is None


@dataclass(frozen=True, slots=True)
class StockSet:
    """Available stock set to ``quantity`` by the stock command at ``offset``."""

    quantity: int
    version: int
    offset: int
    catalog: CatalogPatch | None = None
    command_id: str | None = None
    # A new sale of the product begins: per-user counts start again from zero.
    new_sale: bool = False


@dataclass(frozen=True, slots=True)
class StockAdded:
    """``quantity`` added to available stock by the stock command at ``offset``."""

    quantity: int
    version: int
    offset: int
    catalog: CatalogPatch | None = None
    command_id: str | None = None


@dataclass(frozen=True, slots=True)
class CatalogUpdated:
    """The price, currency or per-user limit changed by the stock command at ``offset``."""

    catalog: CatalogPatch
    version: int
    offset: int
    command_id: str | None = None


StockEvent = Reserved | Released | Committed | StockSet | StockAdded | CatalogUpdated


class SettleOutcome(StrEnum):
    """What a commit or a release did to its line: a small fixed set, safe as a metric label."""

    APPLIED = "applied"  # the reserved line moved on: sold, or available again
    ALREADY_APPLIED = "already_applied"  # the same command settled it before
    NOT_RESERVED = "not_reserved"  # no line here was ever reserved: rejected, or never decided
    # Settled the other way before (a release of a sold line, a commit of a released one).
    CONFLICTING = "conflicting"


# Where a commit and a release move a reserved line.
_SETTLES_TO = {
    StockOperation.COMMIT: LineStatus.COMMITTED,
    StockOperation.RELEASE: LineStatus.RELEASED,
}

_EMPTY = StockLevel(available=0, total_in=0)
# How many stock command ids a product remembers: a command comes again within moments
# (a forward re-sent after a crash, a retried send), not after dozens of others.
RECENT_COMMANDS = 16
# The two decisions of a flash sale, made once (decisions are immutable).
_RESERVED = Decision(status=OrderStatus.RESERVED)
_OUT_OF_STOCK = Decision(status=OrderStatus.REJECTED, reason=RejectReason.OUT_OF_STOCK)


def evolve(level: StockLevel | None, event: StockEvent) -> StockLevel:
    """Return the stock level after ``event``; raise ValueError if it cannot apply.

    An event never makes a figure negative: the decision that produced it checked, and
    this check makes a replayed or corrupted log fail loudly instead of overselling.
    """
    current = level or _EMPTY
    available, reserved, sold, total_in = (
        current.available,
        current.reserved,
        current.sold,
        current.total_in,
    )
    offset = current.last_command_offset
    recent = current.recent_commands
    catalog: CatalogPatch | None = None
    match event:
        case Reserved(quantity=q):
            available, reserved = available - q, reserved + q
        case Released(quantity=q):
            available, reserved = available + q, reserved - q
        case Committed(quantity=q):
            reserved, sold = reserved - q, sold + q
        case StockSet(quantity=q, offset=offset, catalog=catalog):
            total_in += q - available
            available = q
        case StockAdded(quantity=q, offset=offset, catalog=catalog):
            available, total_in = available + q, total_in + q
        case CatalogUpdated(offset=offset, catalog=catalog):
            pass
    if min(available, reserved, sold, total_in) < 0:
        raise ValueError(f"{event} cannot apply to {current}")
    sale_started = current.sale_started
    if isinstance(event, StockSet) and event.new_sale:
        sale_started = event.version
    if isinstance(event, StockSet | StockAdded | CatalogUpdated) and event.command_id:
        recent = (*recent, event.command_id)[-RECENT_COMMANDS:]
    price, currency, max_per_user = current.price, current.currency, current.max_per_user
    if catalog is not None:
        if catalog.price is not None:
            price, currency = catalog.price, catalog.currency
        if catalog.max_per_user is not None:
            max_per_user = catalog.max_per_user or None
    return StockLevel(
        available=available,
        reserved=reserved,
        sold=sold,
        total_in=total_in,
        version=event.version,
        last_command_offset=offset,
        recent_commands=recent,
        price=price,
        currency=currency,
        max_per_user=max_per_user,
        sale_started=sale_started,
    )


def reserve_line(
    level: StockLevel | None,
    line: LineRequest,
    max_line_quantity: int,
    held: int = 0,
    default_max_per_user: int | None = None,
) -> tuple[Decision, Reserved | None]:
    """Decide one order line against a product's stock.

    ``held`` is what the line's user already holds or bought of the product; the product's
    own ``max_per_user``, else ``default_max_per_user`` (None: no limit), bounds it.
    Return the decision and the event that reserves it, or ``None`` when rejected.
    """
    if level is None:
        return _reject(RejectReason.UNKNOWN_PRODUCT, "no stock was ever set for this product")
    if line.quantity < 1:
        raise ValueError(f"a line of {line.quantity} units: requests are validated before this")
    if line.quantity > max_line_quantity:
        return _reject(
            RejectReason.LIMIT_EXCEEDED,
            f"quantity {line.quantity} is above the limit of {max_line_quantity} per line",
        )
    limit = level.max_per_user or default_max_per_user
    if limit is not None and held + line.quantity > limit:
        return _reject(
            RejectReason.LIMIT_EXCEEDED,
            f"the user holds or bought {held} of this product; {line.quantity} more would "
            f"pass the limit of {limit} per user",
        )
    if line.quantity > level.available:
        return _OUT_OF_STOCK, None
    return _RESERVED, Reserved(line.quantity, level.version + 1)


def settle_line(
    level: StockLevel | None, operation: StockOperation, line: LineStatus | None, quantity: int
) -> tuple[SettleOutcome, Committed | Released | None]:
    """Decide a commit or a release of one order's line of a product.

    ``line`` is where the line's stock stands (None: no line of that order was ever
    decided here) and ``quantity`` what it holds. Return the outcome and the event that
    moves the reserved quantity, or ``None`` when nothing changes: a line is settled at
    most once, whatever arrives after. Raise ValueError for an operation that settles
    no line (set, add).
    """
    settles_to = _SETTLES_TO.get(operation)
    if settles_to is None:
        raise ValueError(f"stock {operation} does not settle an order's line")
    if line is None or line is LineStatus.REJECTED:
        return SettleOutcome.NOT_RESERVED, None
    if line is settles_to:
        return SettleOutcome.ALREADY_APPLIED, None
    if line is not LineStatus.RESERVED:
        return SettleOutcome.CONFLICTING, None
    version = (level.version if level is not None else 0) + 1
    if settles_to is LineStatus.COMMITTED:
        return SettleOutcome.APPLIED, Committed(quantity, version)
    return SettleOutcome.APPLIED, Released(quantity, version)


def stock_command(
    level: StockLevel | None,
    operation: StockOperation,
    quantity: int | None,
    offset: int,
    catalog: CatalogPatch | None = None,
    *,
    command_id: str | None = None,
    new_sale: bool = False,
) -> StockSet | StockAdded | CatalogUpdated | None:
    """Return the event of the stock command at ``offset``; ``None`` if applied before:
    at or below the last command's offset, or ``command_id`` among the recent commands'.

    Raise ValueError for a quantity the operation cannot take, an update of a product
    that has no stock yet or that changes nothing, or an operation that settles an
    order's line (commit, release: see ``settle_line``), or a new sale begun by anything
    but a set.
    """
    if new_sale and operation is not StockOperation.SET:
        raise ValueError(f"a new sale begins with a stock set, not a stock {operation}")
    if operation.settles_line:
        raise ValueError(f"stock {operation} settles an order's line: see settle_line")
    if level is not None and offset <= level.last_command_offset:
        return None
    if level is not None and command_id is not None and command_id in level.recent_commands:
        return None
    version = (level.version if level is not None else 0) + 1
    catalog = catalog if catalog is not None and not catalog.is_empty else None
    if operation is StockOperation.UPDATE:
        if catalog is None:
            raise ValueError("stock update needs a price, a currency or a max_per_user")
        if level is None:
            raise ValueError("stock update of a product that has no stock: set its stock first")
        return CatalogUpdated(catalog, version, offset, command_id)
    if quantity is None:
        raise ValueError(f"stock {operation} needs a quantity")
    if operation is StockOperation.SET:
        if quantity < 0:
            raise ValueError(f"stock cannot be set below zero, got {quantity}")
        return StockSet(quantity, version, offset, catalog, command_id, new_sale)
    if quantity < 1:
        raise ValueError(f"stock add needs a quantity >= 1, got {quantity}")
    return StockAdded(quantity, version, offset, catalog, command_id)


def apply_stock_operation(
    level: StockLevel | None,
    operation: StockOperation,
    quantity: int | None,
    offset: int,
    catalog: CatalogPatch | None = None,
) -> StockLevel | None:
    """Apply a stock command found at ``offset``; return ``None`` when it was applied before."""
    event = stock_command(level, operation, quantity, offset, catalog)
    return evolve(level, event) if event is not None else None


def fold_newer(level: StockLevel, events: list[StockEvent]) -> tuple[StockLevel, int]:
    """Apply, in version order, the events newer than ``level``; return it and how many."""
    applied = 0
    for event in sorted(events, key=lambda e: e.version):
        if event.version > level.version:
            level = evolve(level, event)
            applied += 1
    return level, applied


def _reject(reason: RejectReason, detail: str | None) -> tuple[Decision, None]:
    return Decision(status=OrderStatus.REJECTED, reason=reason, detail=detail), None
