"""Every amount the rules accept fits the PostgreSQL column that stores it.

The columns' types are read from the migrations as applied in order (the last
declaration of a column wins), the bounds from the limits of the messages: a change to
either that lets an accepted order outgrow its column fails here, not in the sink.
"""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from pydantic import TypeAdapter, ValidationError

from orderstream.domain import PRICE_DIGITS, PRICE_PLACES, LineStatus, OrderState, Price
from orderstream.domain.order_types import LineState
from orderstream.sink.migrate import load_migrations
from orderstream.topics import MAX_LINE_COUNT, MAX_QUANTITY

_ALTER = re.compile(
    r"ALTER TABLE (\w+) (?:ADD|ALTER) COLUMN (\w+) (?:TYPE )?numeric\((\d+), *(\d+)\)", re.I
)
_CREATE = re.compile(r"CREATE TABLE (\w+) \((.*?)\n\);", re.I | re.S)
_COLUMN = re.compile(r"^\s*(\w+)\s+numeric\((\d+), *(\d+)\)", re.I | re.M)
_UNIT = Decimal(1).scaleb(-PRICE_PLACES)
MAX_PRICE = Decimal(10 ** (PRICE_DIGITS - PRICE_PLACES)) - _UNIT


def numeric_columns() -> dict[tuple[str, str], tuple[int, int]]:
    """Return (table, column) -> (precision, scale) of every numeric column, as migrated."""
    columns: dict[tuple[str, str], tuple[int, int]] = {}
    for migration in load_migrations():
        sql = re.sub(r"--[^\n]*", "", migration.sql)
        for table, body in _CREATE.findall(sql):
            for column, precision, scale in _COLUMN.findall(body):
                columns[table, column] = (int(precision), int(scale))
        for table, column, precision, scale in _ALTER.findall(sql):
            columns[table, column] = (int(precision), int(scale))
    return columns


def fits(amount: Decimal, precision: int, scale: int) -> bool:
    """Whether PostgreSQL's numeric(precision, scale) stores ``amount`` as it is."""
    places = -int(amount.as_tuple().exponent)
    return places <= scale and abs(amount) < Decimal(10) ** (precision - scale)


def test_max_price_is_the_largest_price_the_rules_accept() -> None:
    prices = TypeAdapter(Price)
    assert prices.validate_python(MAX_PRICE) == Decimal("9999999999.9999")
    with pytest.raises(ValidationError):
        prices.validate_python(MAX_PRICE + _UNIT)


def test_the_largest_order_total_is_exact_and_fits_its_column() -> None:
    # The order agent's own sum, over the most lines, each at the largest quantity and price.
    lines = {
        f"p{n}": LineState(
            quantity=MAX_QUANTITY,
            status=LineStatus.RESERVED,
            unit_price=MAX_PRICE,
            currency="EUR",
        )
        for n in range(MAX_LINE_COUNT)
    }
    state = OrderState(order_id="o", user_id="u", line_count=MAX_LINE_COUNT, lines=lines)
    exact = Decimal((10**PRICE_DIGITS - 1) * MAX_QUANTITY * MAX_LINE_COUNT).scaleb(-PRICE_PLACES)
    assert state.total() == (exact, "EUR")  # no digit rounded away by the Decimal context
    assert fits(exact, *numeric_columns()["orders", "total"]), numeric_columns()["orders", "total"]


@pytest.mark.parametrize("column", [("order_items", "unit_price"), ("product_stock", "price")])
def test_the_largest_price_fits_every_price_column(column: tuple[str, str]) -> None:
    assert fits(MAX_PRICE, *numeric_columns()[column])


def test_every_numeric_column_is_a_bounded_amount() -> None:
    # A new money column needs its bound checked above before it joins this list.
    assert set(numeric_columns()) == {
        ("orders", "total"),
        ("order_items", "unit_price"),
        ("product_stock", "price"),
    }
