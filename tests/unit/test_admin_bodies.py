"""What the admin routes make of their bodies, and the intake's digest of an order."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from orderstream.domain import StockOperation
from orderstream.http.admin import ProductChange, StatusOverride
from orderstream.http.idempotency import order_digest
from orderstream.producer import order_lines
from orderstream.topics import Address, OrderRequest, StockCommand


def _change(text: str) -> ProductChange:
    # As the route parses a body: every JSON number with a fraction a Decimal.
    return ProductChange.model_validate(json.loads(text, parse_float=Decimal))


COMMANDS: dict[str, tuple[str, dict[str, Any]]] = {
    "set": ('{"set": 40}', {"operation": "set", "quantity": 40}),
    "add, priced in the default currency": (
        '{"add": 5, "price": 19.99}',
        {"operation": "add", "quantity": 5, "price": "19.99", "currency": "EUR"},
    ),
    "price only": (
        '{"price": "0.1", "currency": "USD"}',
        {"operation": "update", "price": "0.1", "currency": "USD"},
    ),
    "limit removed": ('{"max_per_user": 0}', {"operation": "update", "max_per_user": 0}),
    "exponent and zeros": ('{"price": 1.50e2}', {"operation": "update", "price": "150"}),
    "integer price": ('{"set": 0, "price": 7}', {"operation": "set", "quantity": 0, "price": "7"}),
    "a new sale": (
        '{"set": 50, "new_sale": true}',
        {"operation": "set", "quantity": 50, "new_sale": True},
    ),
}


@pytest.mark.parametrize(("body", "command"), COMMANDS.values(), ids=COMMANDS)
def test_a_product_change_is_one_stock_command(body: str, command: dict[str, Any]) -> None:
    published = _change(body).command("p-1", "EUR")
    expected = {"product_id": "p-1", "quantity": None, "order_id": None} | command
    if "price" in command:
        expected.setdefault("currency", "EUR")
    assert json.loads(published.model_dump_json()) == expected
    # What the stock agent reads back is the same exact command.
    assert StockCommand.model_validate_json(published.model_dump_json()) == published


def test_a_json_float_price_stays_exact() -> None:
    command = _change('{"price": 19.99}').command("p", "EUR")
    assert command.price == Decimal("19.99")
    assert command.operation is StockOperation.UPDATE


REFUSED = {
    "nothing": ("{}", "nothing to change"),
    "set and add": ('{"set": 1, "add": 1}', "not both"),
    "currency alone": ('{"currency": "EUR"}', "a currency goes with a price"),
    "a fraction of stock": ('{"set": 5.0}', "valid integer"),
    "a boolean": ('{"add": true}', "valid integer"),
    "negative stock": ('{"set": -1}', "greater than or equal to 0"),
    "five places": ('{"price": 0.00001}', "decimal places"),
    "negative price": ('{"price": "-1"}', "greater than or equal to 0"),
    "a price that is no number": ('{"price": "cheap"}', "valid decimal"),
    "a currency that is no code": ('{"price": 1, "currency": "eur"}', "pattern"),
    "a misspelt field": ('{"prize": 1, "set": 1}', "Extra inputs"),
    "a new sale without its stock": ('{"add": 5, "new_sale": true}', "new_sale goes with set"),
    "a new sale that is no boolean": ('{"set": 5, "new_sale": "yes"}', "valid boolean"),
}


@pytest.mark.parametrize(("body", "reason"), REFUSED.values(), ids=REFUSED)
def test_a_product_change_that_changes_nothing_or_too_much_is_refused(
    body: str, reason: str
) -> None:
    with pytest.raises(ValidationError, match=reason):
        _change(body)


def test_an_override_ends_an_order_confirmed_or_cancelled_and_says_why() -> None:
    override = StatusOverride.model_validate(
        {"status": "CANCELLED", "reason": "fraud,\nsee ticket 12", "by": "op-1"}
    )
    assert (override.status, override.by) == ("CANCELLED", "op-1")
    for body in (
        {"status": "PAID", "reason": "r", "by": "op"},
        {"status": "CONFIRMED", "reason": "", "by": "op"},
        {"status": "CONFIRMED", "reason": "x" * 1001, "by": "op"},
        {"status": "CONFIRMED", "reason": "nul\x00", "by": "op"},
        {"status": "CONFIRMED", "reason": "r"},
    ):
        with pytest.raises(ValidationError):
            StatusOverride.model_validate(body)


ADDRESS = Address(name="A", line1="1 Rue", city="Paris", country="FR")


def test_the_digest_is_the_orders_not_the_bodys_bytes() -> None:
    lines = order_lines("o-1", "u", [("a", 1), ("b", 2)])
    # Another order of the items, the default line_count spelt out, other key order.
    same = [
        OrderRequest.model_validate_json(
            '{"quantity": 2, "product_id": "b", "user_id": "u", "order_id": "o-1", "line_count": 2}'
        ),
        OrderRequest.model_validate({**lines[0].model_dump(), "unknown": "ignored"}),
    ]
    assert order_digest(same) == order_digest(lines)
    single = OrderRequest(order_id="o-1", user_id="u", product_id="a", quantity=1)
    assert order_digest([single]) == order_digest(
        [OrderRequest.model_validate({**single.model_dump(), "line_count": 1})]
    )
    different = [
        [single.model_copy(update={"quantity": 2})],
        [single.model_copy(update={"user_id": "v"})],
        [single.model_copy(update={"notes": "gift"})],
        [single.model_copy(update={"shipping_address": ADDRESS})],
        lines[:1],
    ]
    digests = {order_digest(order) for order in [[single], *different]}
    assert len(digests) == len(different) + 1
