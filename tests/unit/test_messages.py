"""Message validation at the Kafka boundary."""

from __future__ import annotations

import pytest

from orderstream.errors import InvalidMessageError
from orderstream.topics import OrderRequest, StockCommand, decode


def test_valid_request_with_unknown_fields() -> None:
    raw = b'{"order_id":"o1","user_id":"u1","product_id":"p1","quantity":2,"coupon":"X"}'
    request = decode(OrderRequest, raw)
    assert (request.order_id, request.quantity, request.line_count) == ("o1", 2, 1)


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"not json", "Invalid JSON"),
        (b"[1, 2]", "should be an object"),
        (b'{"order_id":"o1","user_id":"u1","product_id":"p1"}', "quantity: Field required"),
        (b'{"order_id":"o1","user_id":"u1","product_id":"p1","quantity":"2"}', "quantity"),
        (b'{"order_id":"o1","user_id":"u1","product_id":"p1","quantity":0}', "greater than"),
        (b'{"order_id":"","user_id":"u1","product_id":"p1","quantity":1}', "order_id"),
        (b'{"order_id":"o1","user_id":"u1","product_id":"p1","quantity":1.5}', "quantity"),
        (None, "no value"),
    ],
)
def test_malformed_requests_say_why(raw: bytes | None, fragment: str) -> None:
    with pytest.raises(InvalidMessageError) as caught:
        decode(OrderRequest, raw)
    assert fragment in caught.value.reason


def test_a_new_sale_begins_with_a_set_only() -> None:
    raw = b'{"product_id":"p","operation":"set","quantity":5,"new_sale":true}'
    assert decode(StockCommand, raw).new_sale is True
    for operation in (b"add", b"update", b"commit"):
        with pytest.raises(InvalidMessageError, match="new_sale goes with set"):
            decode(StockCommand, raw.replace(b"set", operation))
    with pytest.raises(InvalidMessageError, match="boolean"):
        decode(StockCommand, raw.replace(b"true", b'"yes"'))


def test_stock_command_operation_is_checked() -> None:
    with pytest.raises(InvalidMessageError, match="operation"):
        decode(StockCommand, b'{"product_id":"p","operation":"steal","quantity":1}')
