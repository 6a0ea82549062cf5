"""What the sink stages of prices, totals, metadata and overrides (sink/rows.py)."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from orderstream.codec import WireStockChange, decode_event, decode_stock_change
from orderstream.domain import LineStatus, OrderStatus
from orderstream.sink.base import LocatedEvent, SinkBatch
from orderstream.sink.rows import batch_rows
from orderstream.topics import Address, OrderEvent, OrderItem, StockChange

HOME = Address(name="Ada", line1="1 Rue X", city="Paris", country="FR")
OFFICE = Address(name="Ada", line1="2 Av Y", line2="3rd floor", city="Lyon", country="FR")
PRICED_LINE: dict[str, Any] = {"unit_price": Decimal("19.99"), "currency": "EUR"}
PRICED = {"unit_price": Decimal("19.99"), "currency": "EUR", "total": Decimal("39.98")}
METADATA: dict[str, Any] = {
    "shipping_address": HOME,
    "billing_address": OFFICE,
    "notes": "ring twice\nthen wait",
}
# Positions in the staged rows (COPY column order, sink/postgres.py).
ORDER_MONEY = slice(10, 14)  # unit_price, its currency, total, its currency
ORDER_METADATA = slice(14, 17)  # shipping_address, billing_address, notes


def event(seq: int = 1, offset: int = 0, **changes: Any) -> LocatedEvent:
    fields: dict[str, Any] = {
        "order_id": "o1",
        "seq": seq,
        "status": OrderStatus.RESERVED,
        "user_id": "u",
        "product_id": "p1",
        "quantity": 2,
        "requested_at_ms": 1,
        "decided_at_ms": 2,
    }
    wire = decode_event(OrderEvent(**(fields | changes)).model_dump_json().encode())
    return LocatedEvent(wire, partition=0, offset=offset)


def test_a_priced_single_line_stages_its_price_total_and_metadata() -> None:
    batch = SinkBatch(order_events=[event(**PRICED, **METADATA)])
    (order,), items, _, _ = batch_rows(batch)
    assert order[8:10] == ("p1", 2)  # the only line rides on the order's row
    assert order[ORDER_MONEY] == (Decimal("19.99"), "EUR", Decimal("39.98"), "EUR")
    shipping, billing, notes = order[ORDER_METADATA]
    assert isinstance(shipping, str)
    assert isinstance(billing, str)
    # JSON as the shop sent it: the fields it left out are not stored as nulls.
    assert json.loads(shipping) == {
        "name": "Ada",
        "line1": "1 Rue X",
        "city": "Paris",
        "country": "FR",
    }
    assert Address.model_validate_json(billing) == OFFICE
    assert notes == "ring twice\nthen wait"
    assert items == []


def test_an_unpriced_event_stages_nulls() -> None:
    (order,), _, (history,), _ = batch_rows(SinkBatch(order_events=[event()]))
    assert order[ORDER_MONEY] == (None, None, None, None)
    assert order[ORDER_METADATA] == (None, None, None)
    assert history[10:] == (None, None)  # detail, actor


def test_an_override_stages_its_actor_and_detail_in_the_history() -> None:
    override = event(
        seq=2, status=OrderStatus.CONFIRMED, detail="paid by bank transfer", actor="ops-ann"
    )
    _, _, (history,), _ = batch_rows(SinkBatch(order_events=[override]))
    assert history[:3] == ("o1", 2, "CONFIRMED")
    assert history[10:] == ("paid by bank transfer", "ops-ann")


def test_listed_items_stage_each_line_price() -> None:
    items = [
        OrderItem(product_id="p1", quantity=2, status=LineStatus.RESERVED, **PRICED_LINE),
        OrderItem(product_id="p2", quantity=1, status=LineStatus.RESERVED),
    ]
    (order,), rows, _, _ = batch_rows(SinkBatch(order_events=[event(items=items, currency="EUR")]))
    # No line on the order's row, nor its price; the currency is the total's (unknown).
    assert order[8:14] == (None, None, None, None, None, "EUR")
    assert [(row[1], row[7], row[8]) for row in rows] == [
        ("p1", Decimal("19.99"), "EUR"),
        ("p2", None, None),
    ]


def test_what_an_earlier_event_of_the_batch_carried_is_kept_by_the_latest() -> None:
    first = event(seq=1, offset=1, **PRICED, **METADATA)
    later = event(seq=2, offset=2, status=OrderStatus.CONFIRMED)  # carries none of it
    alone = batch_rows(SinkBatch(order_events=[first]))[0][0]
    for events in ([first, later], [later, first]):  # the late one may also come second
        (order,), _, history, _ = batch_rows(SinkBatch(order_events=events))
        assert (order[2], order[5]) == ("CONFIRMED", 2)  # status and seq: the latest's
        assert order[10:] == alone[10:]  # prices and metadata: what the first carried
        assert len(history) == 2


def test_the_latest_event_s_own_values_win() -> None:
    first = event(seq=1, offset=1, notes="old note", **PRICED)
    later = event(
        seq=2, offset=2, notes="new note", unit_price=Decimal(1), total=Decimal(2), currency="USD"
    )
    duplicate = event(seq=2, offset=3, notes="a duplicate's")
    for events in ([first, later, duplicate], [later, first]):
        (order,), _, _, _ = batch_rows(SinkBatch(order_events=events))
        assert order[ORDER_MONEY] == (Decimal(1), "USD", Decimal(2), "USD")
        assert order[16] == "new note"


def test_a_listed_line_keeps_the_price_an_earlier_event_gave_it() -> None:
    def items(priced: bool) -> list[OrderItem]:
        price = PRICED_LINE if priced else {}
        return [
            OrderItem(product_id="p1", quantity=2, status=LineStatus.RESERVED, **price),
            OrderItem(product_id="p2", quantity=1, status=LineStatus.RESERVED),
        ]

    batch = SinkBatch(
        order_events=[event(seq=1, items=items(priced=True)), event(seq=2, items=items(False))]
    )
    _, rows, _, _ = batch_rows(batch)
    assert [(row[1], row[4], row[7], row[8]) for row in rows] == [
        ("p1", 2, Decimal("19.99"), "EUR"),
        ("p2", 2, None, None),
    ]


def test_a_stock_change_stages_its_catalog() -> None:
    def change(version: int, **catalog: Any) -> WireStockChange:
        model = StockChange(
            product_id="p1",
            available=5,
            reserved=0,
            sold=0,
            total_in=5,
            version=version,
            changed_at_ms=1,
            **catalog,
        )
        return decode_stock_change(model.model_dump_json().encode())

    priced = change(1, price=Decimal("9.5"), currency="USD", max_per_user=2)
    _, _, _, (row,) = batch_rows(SinkBatch(stock_changes=[priced]))
    assert row[7:] == (Decimal("9.5"), "USD", 2)
    # The newest snapshot is the whole catalog: a price removed is no price.
    _, _, _, (row,) = batch_rows(SinkBatch(stock_changes=[priced, change(2)]))
    assert row[5:] == (2, 1, None, None, None)
