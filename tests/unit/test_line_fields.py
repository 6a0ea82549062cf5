"""A line's fields and a product's stock figures are named once; the structs they are
copied into have each of them, and nothing else the copy would leave unset."""

from __future__ import annotations

from decimal import Decimal

import msgspec
import pytest

from orderstream import codec, topics
from orderstream.domain import OrderStatus, StockLevel
from orderstream.field_copy import copier
from orderstream.http.schemas import ProductStock
from orderstream.tables import ANNOUNCED_FIELDS, REQUESTED_FIELDS, Hold


def _fields(struct: type[msgspec.Struct]) -> set[str]:
    return set(struct.__struct_fields__)


def test_a_hold_records_every_field_of_its_request_line() -> None:
    assert set(REQUESTED_FIELDS) == _fields(codec.RequestLine)
    assert set(REQUESTED_FIELDS) <= _fields(Hold)
    assert set(REQUESTED_FIELDS) <= set(topics.OrderRequest.model_fields)


def test_what_a_hold_announces_is_every_field_of_its_order_event_and_line_decision() -> None:
    announced = set(ANNOUNCED_FIELDS)
    assert announced <= _fields(Hold)
    # Beside the announced fields, each message has only what its builder sets itself.
    assert _fields(codec.DecisionEvent) == announced | {"seq", "stock", "total"}
    assert _fields(codec.LineOutcome) == announced | {"line_count"}
    # The models the wire structs encode as (byte for byte, test_codec) agree.
    assert set(topics.LineDecision.model_fields) == _fields(codec.LineOutcome)
    assert announced <= set(topics.OrderEvent.model_fields)


def test_the_stock_figures_are_every_figure_of_a_change_and_of_the_status_answer() -> None:
    figures = set(topics.STOCK_FIGURES)
    assert set(topics.StockChange.model_fields) == figures | {"product_id", "changed_at_ms"}
    product_stock = set(ProductStock.model_fields)
    assert product_stock == figures | {"product_id", "updated_at", "age_ms", "source"}
    level = StockLevel(available=3, reserved=2, sold=1, total_in=6, version=9)
    assert topics.StockChange.of("p", level, 5).figures() == {
        name: getattr(level, name) for name in figures
    }


def test_a_decision_event_and_a_line_decision_carry_every_announced_field_of_the_hold() -> None:
    address = codec.WireAddress(name="A", line1="1 Road", city="C", postal_code="1", country="DE")
    hold = Hold(
        order_id="o-1",
        user_id="u-2",
        product_id="p-3",
        quantity=4,
        line_count=2,
        status=OrderStatus.RESERVED,
        detail="d",
        requested_at_ms=5,
        decided_at_ms=6,
        stock_version=7,
        unit_price=Decimal("8.50"),
        currency="EUR",
        shipping_address=address,
        billing_address=address,
        notes="n",
    )
    for message in (hold.decision_event(), hold.line_decision()):
        assert {name: getattr(message, name) for name in ANNOUNCED_FIELDS} == {
            name: getattr(hold, name) for name in ANNOUNCED_FIELDS
        }
    assert hold.decision_event().total == Decimal("34.00")
    assert hold.line_decision().line_count == 2


def test_a_copier_takes_field_names_only() -> None:
    for name in ("a b", "x=1", "import", "a)"):
        with pytest.raises(ValueError, match="not a field name"):
            copier(dict, [name])
    assert copier(dict, ["real"], "extra")(Decimal(3), 2) == {"real": Decimal(3), "extra": 2}
