"""Hot-path codecs: the messages the stock agent and the sink handle per order, in msgspec.

The pydantic models in topics.py stay the contract (and what every other door uses);
these Structs read and write the same JSON for the per-order messages at a fraction of
the CPU. An order request is decoded here first; whatever msgspec refuses is handed to
the pydantic model, which either accepts it (the two then agree on the value) or
refuses it with the reason the dead letter has always carried. tests/unit/test_codec.py
checks both directions on random and hostile input.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

import msgspec

from orderstream.domain import OrderStatus, RejectReason
from orderstream.errors import InvalidMessageError
from orderstream.topics import (
    DETAIL_MAX_LENGTH,
    ID_MAX_LENGTH,
    MAX_LINE_COUNT,
    MAX_QUANTITY,
    NOTES_MAX_LENGTH,
    OrderRequest,
    decode,
)

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


_request_decoder = msgspec.json.Decoder(RequestLine)
_json = msgspec.json.Encoder(decimal_format="string")


def encode_json(message: msgspec.Struct) -> bytes:
    """Return a wire Struct as the JSON its pydantic model would write."""
    return _json.encode(message)


def decode_request(raw: bytes | None) -> RequestLine:
    """Decode an order request, or raise InvalidMessageError with the contract's reason."""
    if raw is not None:
        try:
            return _request_decoder.decode(raw)
        except msgspec.MsgspecError:
            pass
    # The slow path, for the rare bad request: the model says why (or, should the two
    # engines ever disagree, accepts what the contract accepts).
    request = decode(OrderRequest, raw)
    try:
        return _request_decoder.decode(request.model_dump_json())
    except msgspec.MsgspecError as exc:
        raise InvalidMessageError(f"message: {exc}") from None
