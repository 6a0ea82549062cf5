"""The 202's status_url: a plain id spelt as quote() and urlencode() would spell it."""

from __future__ import annotations

from urllib.parse import quote, urlencode

import pytest

from orderstream.http.intake import _PLAIN, _quoted


@pytest.mark.parametrize("order_id", ["hot-0000123", "a.b_c~d", "a b", "x/y?z", "é", "50%"])
def test_an_id_is_spelt_as_quote_spells_it(order_id: str) -> None:
    assert _quoted(order_id) == quote(order_id, safe="")


@pytest.mark.parametrize("product_id", ["hot-1", "sku.42~b", "a b", "a&b=c"])
def test_a_plain_product_needs_no_urlencode(product_id: str) -> None:
    if _PLAIN.fullmatch(product_id):
        fast = f"partition=3&offset=12&product_id={product_id}"
        assert fast == urlencode({"partition": 3, "offset": 12, "product_id": product_id})
