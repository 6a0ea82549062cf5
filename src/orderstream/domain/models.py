"""Value types of the domain: stock levels, order statuses, decisions."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

# Money is exact: a price is a decimal of at most 4 places (enough for every ISO 4217
# currency's minor unit) and 14 digits, as PostgreSQL's numeric(14, 4) keeps it; never a float.
PRICE_DIGITS = 14
PRICE_PLACES = 4
Price = Annotated[Decimal, Field(ge=0, max_digits=PRICE_DIGITS, decimal_places=PRICE_PLACES)]
# An ISO 4217 code: three capital letters (EUR, USD, JPY).
Currency = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]


class OrderStatus(StrEnum):
    """Where an order stands; the last four are terminal."""

    RESERVED = "RESERVED"
    PAID = "PAID"
    CONFIRMED = "CONFIRMED"
    REJECTED = "REJECTED"
    CANCELLED = "CANCELLED"
    EXPIRED = "EXPIRED"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset(
    {OrderStatus.CONFIRMED, OrderStatus.REJECTED, OrderStatus.CANCELLED, OrderStatus.EXPIRED}
)


class RejectReason(StrEnum):
    """Why a line or an order was turned down."""

    OUT_OF_STOCK = "OUT_OF_STOCK"
    LIMIT_EXCEEDED = "LIMIT_EXCEEDED"
    UNKNOWN_PRODUCT = "UNKNOWN_PRODUCT"
    INVALID = "INVALID"
    PAYMENT_FAILED = "PAYMENT_FAILED"
    PAYMENT_UNAVAILABLE = "PAYMENT_UNAVAILABLE"  # the payment provider could not be reached
    CANCELLED_BY_USER = "CANCELLED_BY_USER"
    ADMIN_OVERRIDE = "ADMIN_OVERRIDE"  # an operator set the status (POST /admin/orders/.../status)
    # The lines of an order of several are priced in different currencies: no total.
    MIXED_CURRENCIES = "MIXED_CURRENCIES"


class LineStatus(StrEnum):
    """Where one line's stock stands for its order.

    The order agent keeps it in the order's state; the stock agent records it in the
    line's hold, where a commit or a release moves a RESERVED line on exactly once.
    """

    RESERVED = "RESERVED"  # held for the order
    REJECTED = "REJECTED"  # never held: the stock agent turned the line down
    RELEASED = "RELEASED"  # held, then given back
    COMMITTED = "COMMITTED"  # held, then sold


class StockLevel(BaseModel):
    """One product's stock; total_in = available + reserved + sold always holds."""

    model_config = ConfigDict(frozen=True)

    available: int = Field(ge=0)
    reserved: int = Field(default=0, ge=0)
    sold: int = Field(default=0, ge=0)
    # Everything ever put in (initial stock + restocks - removals): the conservation check.
    total_in: int = Field(ge=0)
    # Bumped on every change so that a consumer can drop stale or replayed snapshots.
    version: int = Field(default=0, ge=0)
    # Offset of the last stock command applied; a redelivered command is at or below it.
    last_command_offset: int = -1
    # The ids of the last RECENT_COMMANDS stock commands applied that carried one: the
    # same command again (a forward re-sent after a crash lands at another offset, a
    # producer's retry) is applied once.
    recent_commands: tuple[str, ...] = ()
    # The catalog: the unit price a line reserved now is sold at (captured in its hold,
    # so a later change never alters a placed order), and the most one user may hold or
    # buy of the product (None: the ORDERSTREAM_MAX_PER_USER default).
    price: Price | None = None
    currency: Currency | None = None
    max_per_user: int | None = Field(default=None, ge=1)
    # The stock version at which the product's current sale began (a stock set with
    # new_sale): what a user holds or bought counts from there. A line reserved before
    # it (a lower stock version) belongs to an earlier sale.
    sale_started: int = Field(default=0, ge=0)

    def in_current_sale(self, reserved_version: int) -> bool:
        """Whether a line reserved at stock version ``reserved_version`` is of this sale."""
        return reserved_version > self.sale_started

    @property
    def is_conserved(self) -> bool:
        return self.total_in == self.available + self.reserved + self.sold


class StockOperation(StrEnum):
    """What a stock command does to a product."""

    SET = "set"  # make `available` exactly N (a restock or a correction)
    ADD = "add"  # add N to `available`
    COMMIT = "commit"  # one order's reserved line becomes sold
    RELEASE = "release"  # one order's reserved line becomes available again
    UPDATE = "update"  # change the price, currency or per-user limit only, not the stock

    @property
    def settles_line(self) -> bool:
        """Whether this operation moves one order's line rather than the stock on sale."""
        return self in (StockOperation.COMMIT, StockOperation.RELEASE)


# The two below are built once per decided line, so plain slotted dataclasses (a tenth of
# a pydantic model's cost): their values come from messages already validated.
@dataclass(frozen=True, slots=True)
class LineRequest:
    """The part of an order line that the stock rule needs."""

    product_id: str
    quantity: int
    line_count: int = 1


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one line: reserved, or rejected with a reason."""

    status: OrderStatus
    reason: RejectReason | None = None
    detail: str | None = None
