"""Malformed messages go to the dead-letter topic with a reason; the worker carries on."""

from __future__ import annotations

import json

import aiohttp
import pytest

from orderstream.topics import DLQ_REASON_HEADER, DLQ_SOURCE_HEADER, DLQ_TRUNCATED_HEADER
from tests.integration.invariants import assert_invariants
from tests.integration.pipeline import Pipeline, request_json

pytestmark = pytest.mark.integration

PRODUCT = "sku-bad"

MALFORMED: list[tuple[bytes | None, str]] = [
    (b"this is not json", "Invalid JSON"),
    (b"", "Invalid JSON"),
    (b"\xff\xfe\x00garbage", "Invalid JSON"),
    (b"[1, 2, 3]", "should be an object"),
    (b'{"order_id": "x1", "user_id": "u", "product_id": "sku-bad"}', "quantity: Field required"),
    (b'{"order_id": "x2", "user_id": "u", "product_id": "sku-bad", "quantity": "2"}', "quantity"),
    (b'{"order_id": "x3", "user_id": "u", "product_id": "sku-bad", "quantity": 0}', "quantity"),
    (b'{"order_id": "x4", "user_id": "u", "product_id": "sku-bad", "quantity": -3}', "quantity"),
    (b'{"order_id": 5, "user_id": "u", "product_id": "sku-bad", "quantity": 1}', "order_id"),
    (b'{"user_id": "u", "product_id": "sku-bad", "quantity": 1}', "order_id: Field required"),
    (None, "no value"),
    # What PostgreSQL would refuse, refused at the door instead (each once crashed the sink).
    (b'{"order_id": "x\\u0000y", "user_id": "u", "product_id": "sku-bad", "quantity": 1}',
     "order_id: contains a control character"),
    (b'{"order_id": "x6", "user_id": "nul\\u0000", "product_id": "sku-bad", "quantity": 1}',
     "user_id: contains a control character"),
    (b'{"order_id": "x7", "user_id": "u", "product_id": "sku-bad",'
     b' "quantity": 9223372036854775808}',
     "quantity: Input should be less than or equal to 2147483647"),
    (b'{"order_id": "%b", "user_id": "u", "product_id": "sku-bad", "quantity": 1}'
     % (b"m" * 1_000_000),
     "order_id: String should have at most 200 characters"),
]  # fmt: skip

# A request keyed by a product id with a NUL in it (key and value alike).
NUL_PRODUCT = "sku\x00bad"


def prefix(value: bytes | None) -> bytes | None:
    return value[:4096] if value is not None else None


async def test_malformed_messages_are_dead_lettered_and_valid_ones_decided(
    pipeline: Pipeline,
) -> None:
    pipeline.start()
    await pipeline.set_stock(PRODUCT, 30)
    await pipeline.wait_for_stock(PRODUCT, 30)

    valid = {f"good-{i}": request_json(f"good-{i}", f"user-{i}", PRODUCT) for i in range(60)}
    good = iter(valid.values())
    mixed: list[tuple[bytes | None, bytes | None]] = []
    for raw, _ in MALFORMED:  # interleaved: bad, good, good, good, bad, ...
        mixed += [(b"sku-bad", raw)] + [(b"sku-bad", next(good)) for _ in range(3)]
    nul_keyed = request_json("x8", "u", NUL_PRODUCT)
    mixed += [(NUL_PRODUCT.encode(), nul_keyed)]
    mixed += [(b"sku-bad", value) for value in good]
    await pipeline.publish(mixed)

    await pipeline.wait_for_orders(len(valid))
    assert pipeline.alive(), pipeline.logs()

    dead = await pipeline.read_topic("order-requests-dlq")
    assert len(dead) == len(MALFORMED) + 1
    # A megabyte record is cut to half a MiB in its dead letter: match on a prefix.
    by_value = {prefix(record.value): dict(record.headers) for record in dead}
    for raw, fragment in [*MALFORMED, (nul_keyed, "product_id: contains a control character")]:
        headers = by_value[prefix(raw)]
        assert fragment in headers[DLQ_REASON_HEADER].decode()
        assert headers[DLQ_SOURCE_HEADER].decode().startswith(pipeline.topic("order-requests"))
        if raw is not None and len(raw) > 512 * 1024:
            # "key bytes/value bytes" of the original: the key is b"sku-bad".
            assert headers[DLQ_TRUNCATED_HEADER] == f"7/{len(raw)}".encode()

    # 30 units for 60 valid orders; the malformed ones sold nothing.
    await assert_invariants(pipeline, {PRODUCT: 30}, set(valid))
    counts = await pipeline.query("SELECT status, count(*) AS n FROM orders GROUP BY 1 ORDER BY 1")
    assert counts == [{"status": "REJECTED", "n": 30}, {"status": "RESERVED", "n": 30}]

    # The worker still decides after all that, and its metrics counted the dead letters.
    await pipeline.publish([(b"sku-bad", request_json("late", "u", PRODUCT))])
    await pipeline.wait_for_orders(len(valid) + 1)
    url = f"http://127.0.0.1:{pipeline.settings.http_port}/metrics"
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        text = await response.text()
    line = next(
        line for line in text.splitlines() if line.startswith("orderstream_dead_letters_total")
    )
    assert float(line.rsplit(" ", 1)[1]) == len(MALFORMED) + 1


async def test_one_hostile_record_among_999_good_ones(pipeline: Pipeline) -> None:
    """Each kind of hostile record, alone in a batch of good ones: the good ones all land."""
    pipeline.start()
    await pipeline.set_stock(PRODUCT, 500)
    await pipeline.wait_for_stock(PRODUCT, 500)
    hostile = [
        (b"sku-bad", request_json("nul\x00order", "u", PRODUCT)),
        (b"sku-bad", request_json("o-nul-user", "nul\x00user", PRODUCT)),
        (NUL_PRODUCT.encode(), request_json("o-nul-product", "u", NUL_PRODUCT)),
        (b"sku-bad", request_json("o-huge", "u", PRODUCT, 9223372036854775808)),
    ]
    accepted: set[str] = set()
    for round_, bad in enumerate(hostile):
        good = [f"r{round_}-{i}" for i in range(999)]
        batch = [
            (b"sku-bad", request_json(order, f"user-{i}", PRODUCT)) for i, order in enumerate(good)
        ]
        batch.insert(500, bad)
        await pipeline.publish(batch)
        accepted.update(good)
        await pipeline.wait_for_orders(len(accepted))
        assert pipeline.alive(), pipeline.logs()
    dead = await pipeline.read_topic("order-requests-dlq")
    assert sorted(record.value for record in dead) == sorted(value for _, value in hostile)
    assert all(dict(record.headers)[DLQ_REASON_HEADER] for record in dead)
    await assert_invariants(pipeline, {PRODUCT: 500}, accepted)


async def test_bad_http_requests_get_json_reasons(pipeline: Pipeline) -> None:
    pipeline.start()
    base = await pipeline.wait_for_status_service()
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base}/orders", data=b"{nope") as response:
            assert response.status == 400
            assert (await response.json())["error"] == "body is not JSON"
        body = {"order_id": "h1", "user_id": "u", "product_id": PRODUCT, "quantity": 0}
        async with http.post(f"{base}/orders", json=body) as response:
            assert response.status == 422
            details = (await response.json())["details"]
            assert details[0]["loc"] == ["quantity"]
        async with http.get(f"{base}/users/u/orders?limit=abc") as response:
            assert response.status == 400
            assert "limit" in (await response.json())["error"]
        async with http.get(f"{base}/no/such/route") as response:
            assert response.status == 404
            assert "error" in await response.json()
        # A valid request through the HTTP intake is decided like any other.
        await pipeline.set_stock(PRODUCT, 1)
        await pipeline.wait_for_stock(PRODUCT, 1)
        body["quantity"] = 1
        async with http.post(f"{base}/orders", json=body) as response:
            assert response.status == 202
            answer = await response.json()
            place = f"partition={answer['partition']}&offset={answer['offset']}"
            assert answer["status_url"] == f"/orders/h1?{place}&product_id={PRODUCT}"
        await pipeline.wait_for_orders(1)
        async with http.get(f"{base}/orders/h1") as response:
            assert (await response.json())["status"] == "RESERVED"
    assert json.loads(json.dumps(body))  # the body we sent was plain JSON
