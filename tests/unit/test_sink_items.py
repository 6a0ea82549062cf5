"""Order events that list their items: what the message allows, what the sink stages."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from orderstream.codec import decode_event
from orderstream.domain import LineStatus, OrderStatus, RejectReason
from orderstream.sink.base import LocatedEvent, SinkBatch
from orderstream.sink.rows import batch_rows
from orderstream.topics import OrderEvent, OrderItem

ITEMS = [
    OrderItem(product_id="p1", quantity=2, status=LineStatus.RELEASED),
    OrderItem(
        product_id="p2", quantity=1, status=LineStatus.REJECTED, reason=RejectReason.OUT_OF_STOCK
    ),
]


def event(seq: int = 1, **changes: Any) -> OrderEvent:
    fields: dict[str, Any] = {
        "order_id": "o1",
        "seq": seq,
        "status": OrderStatus.REJECTED,
        "reason": RejectReason.OUT_OF_STOCK,
        "user_id": "u",
        "product_id": "p1",
        "quantity": 2,
        "requested_at_ms": 1,
        "decided_at_ms": 2,
        "items": ITEMS,
    }
    return OrderEvent(**(fields | changes))


def test_an_event_without_items_is_as_before() -> None:
    raw = event(items=None).model_dump_json()
    assert "items" not in raw  # the hot path's messages keep their shape
    assert OrderEvent.model_validate_json(raw).items is None
    assert OrderEvent.model_validate_json(event().model_dump_json()).items == ITEMS


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"product_id": "p2", "quantity": 1}, "first item"),
        ({"quantity": 3}, "first item"),
        ({"items": [*ITEMS, ITEMS[1]]}, "more than once"),
        ({"items": []}, "at least 1 item"),
    ],
    ids=["another product", "another quantity", "a product twice", "no item"],
)
def test_items_must_agree_with_the_event(changes: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment):
        event(**changes)


def located(e: OrderEvent, offset: int) -> LocatedEvent:
    return LocatedEvent(decode_event(e.model_dump_json().encode()), partition=0, offset=offset)


def test_listed_items_are_staged_one_row_each_from_the_latest_event() -> None:
    single = event(items=None, order_id="o2", status=OrderStatus.RESERVED, reason=None)
    batch = SinkBatch(
        order_events=[
            located(event(seq=2), 1),
            located(event(seq=1, status=OrderStatus.RESERVED, reason=None), 2),  # replayed
            located(single, 3),
        ]
    )
    orders, items, events, stock = batch_rows(batch)
    # The order that lists its items stages no product on its row; the single line does.
    assert [(row[0], row[8], row[9]) for row in orders] == [("o1", None, None), ("o2", "p1", 2)]
    assert items == [
        ("o1", "p1", 2, "REJECTED", 2, "RELEASED", None, None, None),
        ("o1", "p2", 1, "REJECTED", 2, "REJECTED", "OUT_OF_STOCK", None, None),
    ]
    # The history keeps every event, with the first item's product.
    assert [(row[0], row[1], row[4]) for row in events] == [
        ("o1", 2, "p1"),
        ("o1", 1, "p1"),
        ("o2", 1, "p1"),
    ]
    assert stock == []
