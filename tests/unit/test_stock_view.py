"""The live stock view: its merge rule, its sold-out hint, what the service answers from it."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiokafka import ConsumerRecord
from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool

from orderstream.http import create_app, stock_view
from orderstream.http.schemas import decimal_text
from orderstream.http.stock_view import StockFigures, StockView
from orderstream.settings import Settings
from orderstream.topics import StockChange

# Nothing listens on port 1: any attempt to reach Kafka fails at once.
NO_KAFKA = Settings(kafka_bootstrap="127.0.0.1:1")


def change(version: int, available: int, product_id: str = "p", **catalog: Any) -> StockChange:
    """Return product ``product_id``'s stock at ``version``: 10 in, the rest sold."""
    return StockChange(
        product_id=product_id,
        available=available,
        reserved=0,
        sold=10 - available,
        total_in=10,
        version=version,
        changed_at_ms=1_795_000_000_000 + version,
        **catalog,
    )


def test_the_highest_version_wins_whatever_order_the_changes_come_in() -> None:
    # A replay after a reconnect, or the topic read again, brings old figures back.
    changes = [change(1, 10), change(2, 3), change(3, 0), change(3, 0)]
    for arrival in itertools.permutations(changes):
        figures = StockFigures()
        kept = [figures.apply(c, received_at_ms=n) for n, c in enumerate(arrival)]
        figure = figures.get("p")
        assert figure is not None
        assert (figure.change.version, figure.change.available) == (3, 0)
        # A change is kept only when it is newer than every one before it.
        newest = [max((c.version for c in arrival[:n]), default=0) for n in range(len(arrival))]
        assert kept == [c.version > v for c, v in zip(arrival, newest, strict=True)]
        # So the figure is the first version-3 one to arrive: nothing replaced it after.
        assert figure.received_at_ms == next(n for n, c in enumerate(arrival) if c.version == 3)
        assert len(figures) == 1


def test_a_stale_or_replayed_change_never_replaces_a_newer_one() -> None:
    figures = StockFigures()
    assert figures.apply(change(5, 2), received_at_ms=1)
    assert not figures.apply(change(5, 0), received_at_ms=2)  # same version: a replay
    assert not figures.apply(change(4, 0), received_at_ms=3)  # older: late
    figure = figures.get("p")
    assert figure is not None
    assert (figure.change.available, figure.received_at_ms) == (2, 1)
    assert figures.apply(change(6, 1), received_at_ms=4)
    assert figures.get("q") is None


def test_sold_out_is_said_only_by_a_caught_up_view_of_a_known_product() -> None:
    figures = StockFigures()
    figures.apply(change(3, 0, "gone"), received_at_ms=0)
    figures.apply(change(3, 2, "left"), received_at_ms=0)
    # Before it has caught up, the view may not have read the restock yet.
    assert figures.sold_out(["gone"]) is None
    figures.caught_up = True
    assert figures.sold_out(["gone"]) == "gone"
    assert figures.sold_out(["left", "unknown", "gone"]) == "gone"
    assert figures.sold_out(["left", "unknown"]) is None
    # A restock opens the door at once; the sold-out figure read again does not close it.
    figures.apply(change(4, 5, "gone"), received_at_ms=1)
    assert figures.sold_out(["gone"]) is None
    figures.apply(change(3, 0, "gone"), received_at_ms=2)
    assert figures.sold_out(["gone"]) is None


def test_a_figure_answers_with_every_live_field() -> None:
    figures = StockFigures()
    figures.apply(
        change(7, 4, price=Decimal("12.50"), currency="EUR", max_per_user=2), received_at_ms=0
    )
    figure = figures.get("p")
    assert figure is not None
    changed_at_ms = figure.change.changed_at_ms
    body = json.loads(figure.product_stock(now_ms=changed_at_ms + 250).model_dump_json())
    assert body == {
        "product_id": "p",
        "available": 4,
        "reserved": 0,
        "sold": 6,
        "total_in": 10,
        "version": 7,
        "price": "12.50",
        "currency": "EUR",
        "max_per_user": 2,
        "updated_at": "2026-11-18T11:06:40.007Z",
        "age_ms": 250,
        "source": "live",
    }
    # No price: null, not left out; a clock behind the stock agent's: age 0, not negative.
    unpriced = figure_of(change(1, 10))
    ahead_of_us = unpriced.change.changed_at_ms - 5
    bare = json.loads(unpriced.product_stock(now_ms=ahead_of_us).model_dump_json())
    assert (bare["price"], bare["currency"], bare["max_per_user"], bare["age_ms"]) == (
        None,
        None,
        None,
        0,
    )


def figure_of(stock: StockChange) -> stock_view.StockFigure:
    figures = StockFigures()
    figures.apply(stock, received_at_ms=0)
    figure = figures.get(stock.product_id)
    assert figure is not None
    return figure


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("12.5000", "12.50"),
        ("12.50", "12.50"),
        ("100", "100.00"),
        ("1E+2", "100.00"),
        ("0.0000", "0.00"),
        ("0.005", "0.005"),
        ("19.9990", "19.999"),
    ],
)
def test_a_price_reads_the_same_from_postgresql_and_from_kafka(value: str, text: str) -> None:
    assert decimal_text(Decimal(value)) == text


def record(offset: int, value: bytes | None) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic="stock-changes",
        partition=0,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=b"p",
        value=value,
        checksum=None,
        serialized_key_size=1,
        serialized_value_size=0 if value is None else len(value),
        headers=[],
    )


def test_a_malformed_record_is_skipped_with_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    view = StockView(NO_KAFKA, StockFigures())
    records = [
        record(0, change(1, 10).model_dump_json().encode()),
        record(1, b'{"product_id": "p", "available": -1}'),
        record(2, None),
        record(3, change(2, 9).model_dump_json().encode()),
    ]
    with caplog.at_level(logging.WARNING, logger=stock_view.__name__):
        view._apply(records)
    figure = view.figures.get("p")
    assert figure is not None
    assert figure.change.version == 2
    skipped = [r.getMessage() for r in caplog.records]
    assert len(skipped) == 2
    assert skipped[0].startswith("stock view: skipped stock-changes/0@1: available:")
    assert skipped[1] == "stock view: skipped stock-changes/0@2: message has no value"


async def test_kafka_down_at_start_is_retried_quietly_and_never_raises(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stock_view, "_RETRY_FIRST_S", 0.02)
    monkeypatch.setattr(stock_view, "_RETRY_MAX_S", 0.05)
    attempts: list[int] = []
    tried_four_times = asyncio.Event()
    follow = StockView._follow

    async def counted(view: StockView) -> None:
        attempts.append(1)
        if len(attempts) == 4:
            tried_four_times.set()
        await follow(view)

    monkeypatch.setattr(StockView, "_follow", counted)
    view = StockView(NO_KAFKA, StockFigures())
    with caplog.at_level(logging.INFO):
        view.start()
        async with asyncio.timeout(10):
            await tried_four_times.wait()
        assert view._task is not None
        assert not view._task.done()  # still trying, never crashed
        async with asyncio.timeout(6):
            await view.stop()
    assert view._task.cancelled()
    assert not view.figures.caught_up
    # The first attempt's lines (aiokafka's, then the view's), none per further attempt.
    lines = [(r.name, r.getMessage()) for r in caplog.records]
    first = ["aiokafka.consumer.subscription_state", "aiokafka", stock_view.__name__]
    assert [name for name, _ in lines] == first, lines
    assert lines[2][1].startswith("stock view: cannot follow stock-changes at 127.0.0.1:1")


@pytest.fixture
async def client() -> AsyncIterator[tuple[TestClient[Any, Any], StockFigures]]:
    figures = StockFigures()
    pool = AsyncConnectionPool("", open=False)  # never asked: the answers come from the view
    app = create_app(NO_KAFKA, CollectorRegistry(), pool=pool, stock_figures=figures)
    async with TestClient(TestServer(app)) as test_client:
        yield test_client, figures


ONE_LINE = {"order_id": "o-1", "user_id": "u", "product_id": "gone", "quantity": 1}
ITEMS = {"order_id": "o-2", "user_id": "u", "items": [{"product_id": "left", "quantity": 1}]}


async def test_the_door_refuses_a_sold_out_product_without_publishing(
    client: tuple[TestClient[Any, Any], StockFigures],
) -> None:
    http, figures = client
    figures.apply(change(3, 0, "gone"), received_at_ms=0)
    figures.apply(change(3, 2, "left"), received_at_ms=0)
    # Not caught up: published as always (here Kafka is down: 503, so it was tried).
    assert (await http.post("/orders", json=ONE_LINE)).status == 503
    figures.caught_up = True
    response = await http.post("/orders", json=ONE_LINE)
    assert response.status == 409
    assert await response.json() == {
        "error": "product sold out",
        "reason": "SOLD_OUT",
        "product_id": "gone",
    }
    several = ITEMS | {"items": [*ITEMS["items"], {"product_id": "gone", "quantity": 2}]}
    response = await http.post("/orders", json=several)
    assert (response.status, (await response.json())["product_id"]) == (409, "gone")
    # A product with stock left, or one the view does not know: the stock agent decides.
    assert (await http.post("/orders", json=ITEMS)).status == 503
    unknown = ONE_LINE | {"product_id": "new"}
    assert (await http.post("/orders", json=unknown)).status == 503
    # An invalid body is still a 422 first: nothing is refused before it is understood.
    assert (await http.post("/orders", json=ONE_LINE | {"quantity": 0})).status == 422
    # Restocked: the door opens at once.
    figures.apply(change(4, 5, "gone"), received_at_ms=1)
    assert (await http.post("/orders", json=ONE_LINE)).status == 503


async def test_a_product_the_view_knows_is_answered_live(
    client: tuple[TestClient[Any, Any], StockFigures],
) -> None:
    http, figures = client
    figures.apply(change(3, 1, price=Decimal("9.9900"), currency="USD"), received_at_ms=0)
    figures.caught_up = True
    response = await http.get("/products/p")
    assert response.status == 200
    body = await response.json()
    assert (body["source"], body["available"], body["price"], body["currency"]) == (
        "live",
        1,
        "9.99",
        "USD",
    )
    assert body["age_ms"] > 0
