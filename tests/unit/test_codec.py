"""The hot-path codecs agree with the pydantic models of the contract, byte for byte."""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orderstream.codec import (
    DecisionEvent,
    LineOutcome,
    RequestLine,
    WireOrderEvent,
    WireStockChange,
    decode_event,
    decode_request,
    decode_stock_change,
    encode_json,
)
from orderstream.domain import Decision, OrderStatus, RejectReason, StockLevel
from orderstream.errors import InvalidMessageError
from orderstream.tables import Hold, decode_hold, encode_hold
from orderstream.topics import (
    LineDecision,
    Message,
    OrderEvent,
    OrderRequest,
    StockChange,
    decode,
)

# Text as hostile as a producer can send: control characters, NUL, surrogates' neighbours,
# line breaks at the end (where the two regex engines differ), long strings.
hostile_text = st.one_of(
    st.text(max_size=8),
    st.text(alphabet=st.characters(max_codepoint=0xA0), max_size=6),
    st.sampled_from(["", "a\n", "\n", "a\x00", "\x9f", "\x7f", "é", "🛒", "x" * 200, "x" * 201]),
)
ids = st.one_of(st.text(min_size=1, max_size=6).filter(lambda s: s.isprintable()), hostile_text)
ints = st.one_of(
    st.integers(-3, 3),
    st.sampled_from([100, 2**31 - 1, 2**31, 2**63, -(2**63) - 1, 10**30]),
)
json_values = st.one_of(
    st.none(), st.booleans(), ints, st.floats(allow_nan=False), hostile_text, st.just([])
)
addresses = st.fixed_dictionaries(
    {"name": ids, "line1": ids, "city": ids, "country": st.sampled_from(["DE", "de", "DE\n", "D"])},
    optional={"line2": ids, "postal_code": ids, "region": st.one_of(ids, st.none()), "x": ids},
)
requests = st.fixed_dictionaries(
    {},
    optional={
        "order_id": st.one_of(ids, json_values),
        "user_id": st.one_of(ids, json_values),
        "product_id": st.one_of(ids, json_values),
        "quantity": st.one_of(ints, json_values),
        "line_count": st.one_of(st.integers(0, 101), json_values),
        "notes": st.one_of(hostile_text, st.just("two\nlines\tok"), json_values),
        "shipping_address": st.one_of(addresses, json_values),
        "billing_address": st.one_of(addresses, st.none()),
        "unknown": json_values,
    },
)


def _present(fields: Any) -> Any:
    """The fields given, recursively: a Struct's absent ones are None."""
    if isinstance(fields, dict):
        return {k: _present(v) for k, v in fields.items() if v is not None}
    if isinstance(fields, list):
        return [_present(v) for v in fields]
    return fields


def _dumped(model: Any) -> Any:
    return model.model_dump(mode="json", exclude_none=True)


def _outcome(decoder: Any, raw: bytes) -> Any:
    try:
        return decoder(raw)
    except InvalidMessageError as exc:
        return ("invalid", exc.reason)


def _assert_agree(
    decoder: Callable[[bytes], Any], model: type[Message], struct: type[Any], raw: bytes
) -> None:
    """The fast decoder refuses what the model refuses, with its reason, and reads the
    same values from what it accepts."""
    fast = _outcome(decoder, raw)
    expected = _outcome(lambda value: decode(model, value), raw)
    if isinstance(expected, tuple):
        assert fast == expected  # refused, with the contract's reason
    else:
        assert isinstance(fast, struct)
        assert _present(msgspec.to_builtins(fast)) == _dumped(expected)


@settings(max_examples=1500, deadline=None)
@given(requests, st.booleans())
def test_a_request_decodes_as_the_model_decides_it(fields: dict[str, Any], valid: bool) -> None:
    if valid:  # most of a sale's requests: make it one the model accepts
        fields = {"order_id": "o-1", "user_id": "u-1", "product_id": "p-1", "quantity": 1} | {
            k: v for k, v in fields.items() if k in ("notes", "billing_address", "line_count")
        }
    raw = json.dumps(fields, ensure_ascii=bool(len(fields) % 2)).encode()
    _assert_agree(decode_request, OrderRequest, RequestLine, raw)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b"[]",
        b'{"order_id":"o\\u0000","user_id":"u","product_id":"p","quantity":1}',
        b'{"order_id":"o\\n","user_id":"u","product_id":"p","quantity":1}',
        b'{"order_id":"\\ud800","user_id":"u","product_id":"p","quantity":1}',
        b'{"order_id":"o","user_id":"u","product_id":"p","quantity":1.0}',
        b'{"order_id":"o","user_id":"u","product_id":"p","quantity":"1"}',
        b'{"order_id":"o","user_id":"u","product_id":"p","quantity":true}',
        b'{"order_id":"o","user_id":"u","product_id":"p","quantity":1e400}',
        b'{"order_id":"o","user_id":"u","product_id":"p","quantity":1,"quantity":0}',
        b'{"order_id":"o","user_id":"u","product_id":"p","quantity":99999999999999999999999}',
    ],
)
def test_hostile_requests_are_refused_or_accepted_as_the_model_does(raw: bytes) -> None:
    _assert_agree(decode_request, OrderRequest, RequestLine, raw)


def test_a_missing_value_is_refused_with_the_contract_reason() -> None:
    with pytest.raises(InvalidMessageError, match="no value"):
        decode_request(None)


prices = st.one_of(
    st.none(),
    st.decimals(min_value=0, max_value=Decimal("9999999999.9999"), places=4),
    st.sampled_from([Decimal("1E+2"), Decimal("0.10"), Decimal("19.99"), Decimal(0)]),
)


@st.composite
def holds(draw: st.DrawFn) -> Hold:
    raw = json.dumps(
        {
            "order_id": draw(st.text(min_size=1, max_size=5).filter(str.isprintable)),
            "user_id": "u\u00e9",
            "product_id": "p-1",
            "quantity": draw(st.integers(1, 2**31 - 1)),
            "line_count": draw(st.integers(1, 100)),
            "notes": draw(st.one_of(st.none(), st.just("ring\ttwice\n"))),
            "shipping_address": draw(
                st.one_of(
                    st.none(),
                    st.just({"name": "A", "line1": "B", "city": "C", "country": "DE"}),
                    st.just(
                        {"name": "A", "line1": "B", "line2": "2", "city": "C", "country": "FR"}
                    ),
                )
            ),
        }
    ).encode()
    request = decode_request(raw)
    reserved = draw(st.booleans())
    decision = (
        Decision(status=OrderStatus.RESERVED)
        if reserved
        else Decision(status=OrderStatus.REJECTED, reason=RejectReason.OUT_OF_STOCK, detail="none")
    )
    price = draw(prices)
    level = StockLevel(available=5, total_in=5, price=price, currency="EUR" if price else None)
    return Hold.of(
        request,
        decision,
        draw(st.integers(0, 2**50)),
        draw(st.integers(0, 2**50)),
        stock_version=draw(st.integers(1, 10**6)) if reserved else None,
        level=level,
    )


@settings(max_examples=400, deadline=None)
@given(holds())
def test_decisions_are_written_as_the_models_write_them(hold: Hold) -> None:
    for message, model in (
        (hold.decision_event(), OrderEvent),
        (hold.line_decision(), LineDecision),
    ):
        encoded = encode_json(message)
        # The model reads it, and writes back the very same bytes.
        parsed = model.model_validate_json(encoded)
        assert parsed.model_dump_json().encode() == encoded
        assert (parsed.order_id, parsed.quantity) == (hold.order_id, hold.quantity)
        assert (parsed.unit_price, parsed.status) == (hold.unit_price, hold.status)
    assert isinstance(hold.decision_event(), DecisionEvent)
    assert isinstance(hold.line_decision(), LineOutcome)


@settings(max_examples=200, deadline=None)
@given(holds())
def test_a_hold_reads_back_from_its_compact_form_and_from_json(hold: Hold) -> None:
    assert decode_hold(encode_hold(hold)) == hold
    legacy = msgspec.json.encode(msgspec.structs.asdict(hold))
    assert decode_hold(legacy) == hold


amounts = st.one_of(
    st.none(),
    st.sampled_from(["19.99", "0", "-1", "1.23456", "NaN", "Infinity", "1E+2", "x", 1.5, 3]),
    st.decimals(allow_nan=False, allow_infinity=False, places=5).map(str),
)
items = st.fixed_dictionaries(
    {
        "product_id": st.sampled_from(["p-1", "p-2", "p\n"]),
        "quantity": st.one_of(st.just(1), ints),
        "status": st.sampled_from(["RESERVED", "COMMITTED", "REJECTED", "nope"]),
    },
    optional={"reason": st.sampled_from([None, "OUT_OF_STOCK", "?"]), "unit_price": amounts},
)
stock_changes = st.fixed_dictionaries(
    {
        "product_id": st.sampled_from(["p-1", ""]),
        "available": ints,
        "reserved": st.just(0),
        "sold": st.just(0),
        "total_in": ints,
        "version": ints,
        "changed_at_ms": ints,
    },
    optional={"price": amounts, "currency": st.sampled_from(["EUR", "eur"]), "max_per_user": ints},
)
events = st.fixed_dictionaries(
    {
        "order_id": ids,
        "seq": st.one_of(st.just(1), ints, json_values),
        "status": st.sampled_from(["RESERVED", "CONFIRMED", "PAID", "LOST"]),
        "user_id": ids,
        "product_id": st.sampled_from(["p-1", "p-2"]),
        "quantity": st.one_of(st.just(1), ints, json_values),
        "requested_at_ms": ints,
        "decided_at_ms": st.one_of(ints, json_values),
    },
    optional={
        "reason": st.sampled_from([None, "OUT_OF_STOCK", "nope"]),
        "detail": st.one_of(st.none(), hostile_text, st.just("d" * 1001)),
        "stock": st.one_of(st.none(), stock_changes),
        "items": st.lists(items, max_size=3),
        "unit_price": amounts,
        "currency": st.sampled_from(["EUR", "EURO"]),
        "total": amounts,
        "actor": ids,
        "notes": st.one_of(st.none(), hostile_text),
        "shipping_address": st.one_of(addresses, json_values),
    },
)


valid_prices = st.one_of(st.none(), st.sampled_from(["19.99", "0", "1E+2", "0.0001", 7]))


@st.composite
def valid_events(draw: st.DrawFn) -> dict[str, Any]:
    """An event the model accepts, with one field now and then replaced by a hostile one."""
    fields: dict[str, Any] = {
        "order_id": "o-1",
        "seq": draw(st.integers(1, 9)),
        "status": "RESERVED",
        "user_id": "u-1",
        "product_id": "p-1",
        "quantity": 2,
        "requested_at_ms": 1,
        "decided_at_ms": 2,
        "unit_price": draw(valid_prices),
        "currency": "EUR",
        "total": draw(valid_prices),
        "notes": draw(st.one_of(st.none(), st.just("a\nb"))),
        "shipping_address": {"name": "A", "line1": "B", "city": "C", "country": "DE"},
    }
    if draw(st.booleans()):
        fields["items"] = [
            {"product_id": "p-1", "quantity": 2, "status": "RESERVED", "unit_price": "1.50"},
            {"product_id": "p-2", "quantity": 1, "status": "REJECTED", "reason": "OUT_OF_STOCK"},
        ]
    if draw(st.booleans()):
        fields["stock"] = {
            "product_id": "p-1",
            "available": 3,
            "reserved": 2,
            "sold": 0,
            "total_in": 5,
            "version": 4,
            "changed_at_ms": 9,
            "price": draw(valid_prices),
            "currency": "EUR",
        }
    hostile = draw(st.one_of(st.none(), events))
    if hostile:  # one field of a hostile event in an otherwise valid one
        name = draw(st.sampled_from(sorted(hostile)))
        fields[name] = hostile[name]
    return fields


@settings(max_examples=1500, deadline=None)
@given(st.one_of(events, valid_events()))
def test_an_event_decodes_as_the_model_decides_it(fields: dict[str, Any]) -> None:
    _assert_agree(decode_event, OrderEvent, WireOrderEvent, json.dumps(fields).encode())


@settings(max_examples=500, deadline=None)
@given(stock_changes)
def test_a_stock_change_decodes_as_the_model_decides_it(fields: dict[str, Any]) -> None:
    _assert_agree(decode_stock_change, StockChange, WireStockChange, json.dumps(fields).encode())
