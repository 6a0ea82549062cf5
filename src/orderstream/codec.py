"""Hot-path codecs: the messages the stock agent and the sink handle per order, in msgspec.

The pydantic models in topics.py stay the contract (and what every other door uses);
these Structs read and write the same JSON for the per-order messages at a fraction of
the CPU. An order request is decoded here first; whatever msgspec refuses is handed to
the pydantic model, which either accepts it (the two then agree on the value) or
refuses it, so that a dead letter's reason is the contract's words, not msgspec's.
tests/unit/test_codec.py checks both directions on random and hostile input.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Annotated, TypeVar

import msgspec
from pydantic import Field, TypeAdapter, ValidationError

from orderstream.domain import LineStatus, OrderStatus, Price, RejectReason
from orderstream.errors import InvalidMessageError
from orderstream.topics import (
    DETAIL_MAX_LENGTH,
    ID_MAX_LENGTH,
    MAX_LINE_COUNT,
    MAX_QUANTITY,
    NOTES_MAX_LENGTH,
    Message,
    OrderEvent,
    OrderRequest,
    StockChange,
    check_items,
    decode,
)

S = TypeVar("S", bound=msgspec.Struct)

# topics.py's patterns, for Python's re (msgspec's engine): "$" there would also match
# before a final newline, which pydantic's engine refuses; "\Z" does not.
_ID_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]+\Z"
_NOTES_PATTERN = r"^[^\x00-\x08\x0b-\x1f\x7f-\x9f]*\Z"
Id = Annotated[str, msgspec.Meta(min_length=1, max_length=ID_MAX_LENGTH, pattern=_ID_PATTERN)]
Notes = Annotated[str, msgspec.Meta(max_length=NOTES_MAX_LENGTH, pattern=_NOTES_PATTERN)]
Quantity = Annotated[int, msgspec.Meta(ge=1, le=MAX_QUANTITY)]
LineCount = Annotated[int, msgspec.Meta(ge=1, le=MAX_LINE_COUNT)]
Country = Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{2}\Z")]
Currency = Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{3}\Z")]
Detail = Annotated[str, msgspec.Meta(max_length=DETAIL_MAX_LENGTH)]


class WireAddress(msgspec.Struct, kw_only=True, omit_defaults=True, frozen=True):
    """topics.Address: its optional fields left out of the JSON when absent."""

    name: Id
    line1: Id
    line2: Id | None = None
    city: Id
    postal_code: Id | None = None
    region: Id | None = None
    country: Country


class RequestLine(msgspec.Struct, kw_only=True, frozen=True):
    """topics.OrderRequest, decoded: one order line as a shop publishes it."""

    shipping_address: WireAddress | None = None
    billing_address: WireAddress | None = None
    notes: Notes | None = None
    order_id: Id
    user_id: Id
    product_id: Id
    quantity: Quantity
    line_count: LineCount = 1


class DecisionEvent(msgspec.Struct, kw_only=True, omit_defaults=True, frozen=True):
    """topics.OrderEvent of a line decided in one hop (seq 1, no items, no stock).

    Fields in the model's order; those without a default are always written (null when
    None), those with one are left out when None, as the model writes them.
    """

    shipping_address: WireAddress | None = None
    billing_address: WireAddress | None = None
    notes: str | None = None
    order_id: str
    seq: int
    status: OrderStatus
    reason: RejectReason | None
    detail: str | None
    user_id: str
    product_id: str
    quantity: int
    requested_at_ms: int
    decided_at_ms: int
    stock: None
    unit_price: Decimal | None = None
    currency: str | None = None
    total: Decimal | None = None


class LineOutcome(msgspec.Struct, kw_only=True, omit_defaults=True, frozen=True):
    """topics.LineDecision: one line's decision, for the order agent."""

    shipping_address: WireAddress | None = None
    billing_address: WireAddress | None = None
    notes: str | None = None
    order_id: str
    user_id: str
    product_id: str
    quantity: int
    line_count: int
    status: OrderStatus
    reason: RejectReason | None
    detail: str | None
    requested_at_ms: int
    decided_at_ms: int
    unit_price: Decimal | None = None
    currency: str | None = None


# Money: msgspec has no bounds for decimals. The model's own checks, run only on the
# amounts a message carries (a reservation's; a rejection has none).
_PRICE = TypeAdapter(Price)
_TOTAL = TypeAdapter(Annotated[Decimal, Field(ge=0)])
NonNegative = Annotated[int, msgspec.Meta(ge=0)]


def _check_amount(adapter: TypeAdapter[Decimal], amount: Decimal | None) -> None:
    if amount is not None:
        try:
            adapter.validate_python(amount)
        except ValidationError as exc:
            raise ValueError(str(exc)) from None


class WireStockChange(msgspec.Struct, kw_only=True, frozen=True):
    """topics.StockChange, decoded: a product's stock after a change."""

    product_id: Id
    available: NonNegative
    reserved: NonNegative
    sold: NonNegative
    total_in: NonNegative
    version: NonNegative
    changed_at_ms: int
    price: Decimal | None = None
    currency: Currency | None = None
    max_per_user: Annotated[int, msgspec.Meta(ge=1)] | None = None

    def __post_init__(self) -> None:
        _check_amount(_PRICE, self.price)


class WireItem(msgspec.Struct, kw_only=True, frozen=True):
    """topics.OrderItem, decoded: one line of an order and where its stock stands."""

    product_id: Id
    quantity: Quantity
    status: LineStatus
    reason: RejectReason | None = None
    unit_price: Decimal | None = None
    currency: Currency | None = None

    def __post_init__(self) -> None:
        _check_amount(_PRICE, self.unit_price)


class WireOrderEvent(msgspec.Struct, kw_only=True, frozen=True):
    """topics.OrderEvent, decoded: one transition of an order, as the sink reads it."""

    shipping_address: WireAddress | None = None
    billing_address: WireAddress | None = None
    notes: Notes | None = None
    order_id: Id
    seq: Quantity
    status: OrderStatus
    reason: RejectReason | None = None
    detail: Detail | None = None
    user_id: Id
    product_id: Id
    quantity: Quantity
    requested_at_ms: int
    decided_at_ms: int
    stock: WireStockChange | None = None
    items: (
        Annotated[list[WireItem], msgspec.Meta(min_length=1, max_length=MAX_LINE_COUNT)] | None
    ) = None
    unit_price: Decimal | None = None
    currency: Currency | None = None
    total: Decimal | None = None
    actor: Id | None = None

    def __post_init__(self) -> None:
        _check_amount(_PRICE, self.unit_price)
        _check_amount(_TOTAL, self.total)
        check_items(self.product_id, self.quantity, self.items)


_json = msgspec.json.Encoder(decimal_format="string")


def encode_json(message: msgspec.Struct) -> bytes:
    """Return a wire Struct as the JSON its pydantic model would write."""
    return _json.encode(message)


def _decoder(struct: type[S], model: type[Message]) -> Callable[[bytes | None], S]:
    """Return a decoder of ``struct`` that refuses what ``model`` refuses, with its reason."""
    fast = msgspec.json.Decoder(struct)

    def decode_message(raw: bytes | None) -> S:
        if raw is not None:
            try:
                return fast.decode(raw)
            except msgspec.MsgspecError:
                pass
        # The slow path, for the rare bad message: the model says why (or, should the
        # two engines ever disagree, accepts what the contract accepts).
        message = decode(model, raw)
        try:
            return fast.decode(message.model_dump_json())
        except msgspec.MsgspecError as exc:
            raise InvalidMessageError(f"message: {exc}") from None

    return decode_message


decode_request = _decoder(RequestLine, OrderRequest)
decode_event = _decoder(WireOrderEvent, OrderEvent)
decode_stock_change = _decoder(WireStockChange, StockChange)
