"""The order lifecycle's values: an order's state, the machine's inputs, a transition.

``domain.orders.next_state`` moves an ``OrderState`` by one ``OrderInput`` and returns
a ``Transition``; the order agent stores the state as JSON in its table.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from orderstream.domain.models import LineStatus, OrderStatus, RejectReason


class LineState(BaseModel):
    """One line of an order: its quantity, and where its stock stands for the order."""

    model_config = ConfigDict(frozen=True)

    quantity: int = Field(ge=1)
    status: LineStatus
    reason: RejectReason | None = None
    detail: str | None = None
    # The unit price the stock agent decided the line at (None: the product had none).
    unit_price: Decimal | None = None
    currency: str | None = None


class CancelRequest(BaseModel):
    """A cancel that reached the order before its lines did: applied when they arrive."""

    model_config = ConfigDict(frozen=True)

    reason: RejectReason = RejectReason.CANCELLED_BY_USER
    detail: str | None = None


class OrderState(BaseModel):
    """What the order agent remembers of one order: a table value, stored as JSON."""

    model_config = ConfigDict(frozen=True)

    order_id: str
    user_id: str
    # Fixed by the first line outcome; a line that disagrees makes the order INVALID.
    line_count: int = Field(ge=1)
    # product id -> line, in arrival order: the first rejected line gives the order its reason.
    lines: dict[str, LineState] = Field(default_factory=dict)
    # Lines that arrived after the order was decided (more products than its line_count):
    # never part of the order, so each reserved one is released as it arrives.
    extra_lines: dict[str, LineState] = Field(default_factory=dict)
    status: OrderStatus | None = None  # None while line outcomes are still arriving
    reason: RejectReason | None = None
    detail: str | None = None
    seq: int = Field(default=0, ge=0)  # how many order events were emitted
    reserved_at_ms: int | None = None  # when it became RESERVED: the expiry clock starts
    # When its first line outcome arrived: an order whose lines do not all arrive within
    # the TTL (a producer that sent fewer lines than its line_count) is rejected and its
    # reserved lines released, instead of holding their stock forever.
    first_line_at_ms: int | None = None
    payment_requested: bool = False
    # A successful payment was reported: committed into CONFIRMED, or refunded. A second
    # report of it is a duplicate, never a second refund.
    paid: bool = False
    # The order's metadata (addresses, notes) as its first line carrying some brought
    # it: opaque here, repeated on the order's events.
    metadata: dict[str, Any] | None = None
    # A cancel that came before the order's lines (a shopper who cancels right after
    # ordering): kept for the TTL, applied as soon as the order is reserved. Until the
    # first line arrives, user_id is empty and line_count a placeholder.
    cancel: CancelRequest | None = None

    def total(self) -> tuple[Decimal, str] | None:
        """Return the order's total and currency: quantity x unit price over its lines.

        None while a line has no price. Lines in different currencies have no total (the
        order is rejected MIXED_CURRENCIES when it assembles).
        """
        total = Decimal(0)
        currencies = set()
        for line in self.lines.values():
            if line.unit_price is None or line.currency is None:
                return None
            total += line.unit_price * line.quantity
            currencies.add(line.currency)
        if len(currencies) != 1:
            return None
        return total, currencies.pop()


@dataclass(frozen=True, slots=True)
class LineOutcome:
    """The stock agent's decision on one line: reserved, or rejected with a reason."""

    order_id: str
    user_id: str
    product_id: str
    quantity: int
    line_count: int
    reserved: bool
    reason: RejectReason | None = None
    detail: str | None = None
    unit_price: Decimal | None = None
    currency: str | None = None
    metadata: dict[str, Any] | None = None  # the order's, when the line carries some


@dataclass(frozen=True, slots=True)
class PaymentResult:
    """The payment agent's answer; when not paid, PAYMENT_FAILED or PAYMENT_UNAVAILABLE."""

    order_id: str
    paid: bool
    reason: RejectReason | None = None
    detail: str | None = None
    # The provider did not pay within the TTL of the first charge attempt: EXPIRED.
    expired: bool = False


@dataclass(frozen=True, slots=True)
class Cancel:
    """A request to cancel an order before it is paid."""

    order_id: str
    reason: RejectReason = RejectReason.CANCELLED_BY_USER
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class Expire:
    """The timer's request to expire an unpaid reservation."""

    order_id: str


@dataclass(frozen=True, slots=True)
class Override:
    """An operator ends a reserved order: CONFIRMED (paid elsewhere) or CANCELLED.

    ``actor`` names the operator and ``detail`` says why: both go on the order's event.
    """

    order_id: str
    status: OrderStatus
    actor: str
    detail: str | None = None


OrderInput = LineOutcome | PaymentResult | Cancel | Expire | Override


@dataclass(frozen=True, slots=True)
class OrderTransitionEvent:
    """One transition to announce on ``order-events``."""

    order_id: str
    seq: int
    status: OrderStatus
    reason: RejectReason | None = None
    detail: str | None = None
    actor: str | None = None  # the operator of an override


class LineQuantity(NamedTuple):
    """A line's product and quantity: what to release or commit."""

    product_id: str
    quantity: int


@dataclass(frozen=True, slots=True)
class Transition:
    """What an input does: the new state and everything the agent must send for it."""

    state: OrderState | None  # the same object when nothing changed
    events: tuple[OrderTransitionEvent, ...] = ()  # seqs follow state.seq, one by one
    release: tuple[LineQuantity, ...] = ()  # reserved -> available
    commit: tuple[LineQuantity, ...] = ()  # reserved -> sold
    request_payment: bool = False
    refund: bool = False  # a charge arrived for an order that can no longer be sold
    # The order is dropped from the table (a cancel whose order never came): ``state``
    # is None.
    forget: bool = False
    ignored: str | None = None  # why the input changed nothing
