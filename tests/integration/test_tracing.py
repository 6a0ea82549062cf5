"""One order's trace through every hop: intake, stock agent, order agent, payment agent,
order agent again, sink.

In process first: each hop runs its own traced code (the intake's handler, the
StockProcessor, the order and payment agents' handlers, the sink runner's batch path)
with Kafka replaced by what each hop sends: the headers of each hop's output are the
headers of the next hop's input. The SDK's in-memory exporter then shows one trace id
and the parent chain. Then the real thing: `orderstream run` exporting OTLP/HTTP to a
collector in the test, the context crossing the real broker between hops.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from aiokafka.structs import ConsumerRecord
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from orderstream import tracing
from orderstream.agents.lifecycle import orders, payment
from orderstream.agents.lifecycle.provider import MockPaymentProvider
from orderstream.agents.lifecycle.resilience import CircuitBreaker, RetryPolicy
from orderstream.agents.stock.processor import Output, SourceRecord, StockProcessor
from orderstream.domain import StockLevel
from orderstream.http import intake
from orderstream.http.keys import KAFKA, SETTINGS
from orderstream.http.publishing import ORDER_PUBLISHER, OrderPublisher
from orderstream.http.stock_view import STOCK_FIGURES, StockFigures
from orderstream.metrics import LifecycleMetrics, SinkMetrics, StatusMetrics, WorkerMetrics
from orderstream.settings import Settings
from orderstream.sink.base import SinkBatch
from orderstream.sink.runner import SinkRunner
from orderstream.topics import (
    LINE_OUTCOMES,
    ORDER_COMMANDS,
    ORDER_EVENTS,
    ORDER_REQUESTS,
    PAYMENT_REQUESTS,
    PAYMENT_RESULTS,
    STOCK_COMMANDS,
)
from tests.integration.pipeline import Pipeline

PRODUCT = "p-1"
NOW_MS = 1_700_000_000_000


@dataclass
class Sent:
    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]


class FakeProducer:
    """The intake's producer: keeps what it would publish."""

    def __init__(self) -> None:
        self.sent: list[Sent] = []

    async def send(
        self, topic: str, *, key: bytes, value: bytes, headers: Any = None
    ) -> asyncio.Future[Placed]:
        self.sent.append(Sent(topic, key, value, list(headers or ())))
        placed: asyncio.Future[Placed] = asyncio.get_running_loop().create_future()
        placed.set_result(Placed(partition=0, offset=len(self.sent) - 1))
        return placed


@dataclass
class Placed:
    """Where a record landed, as aiokafka's RecordMetadata says."""

    partition: int
    offset: int


class FakeLink:
    def __init__(self) -> None:
        self.producer_ = FakeProducer()

    async def producer(self) -> FakeProducer:
        return self.producer_


class FakeTopic:
    """A Faust topic: keeps what the agents send to it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sent: list[Sent] = []

    def get_topic_name(self) -> str:
        return self.name

    async def send(self, *, key: bytes, value: bytes, headers: Any = None) -> asyncio.Future[None]:
        self.sent.append(Sent(self.name, key, value, list(headers or ())))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


async def _as_producer(topic: FakeTopic) -> Any:
    """The payment agent's producer, sending to ``topic`` alone."""
    return TopicsProducer({topic.name: topic})


class FakeEvent:
    """A Faust event: the agent reads its message (and tables its partition)."""

    def __init__(self, message: Any) -> None:
        self.message = message


class TopicsProducer:
    """The order agent's producer: keeps each record on the FakeTopic of its topic."""

    def __init__(self, topics: dict[str, FakeTopic]) -> None:
        self.topics = {topic.name: topic for topic in topics.values()}
        self.changelog: list[Sent] = []

    async def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
        *,
        headers: Any = None,
    ) -> asyncio.Future[None]:
        assert value is not None
        if topic in self.topics:
            return await self.topics[topic].send(key=key or b"", value=value, headers=headers)
        self.changelog.append(Sent(topic, key, value, list(headers or ())))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


class DictPartition:
    def __init__(self) -> None:
        self.stock = {PRODUCT: StockLevel(available=10, total_in=10)}

    def level(self, product_id: str) -> StockLevel | None:
        return self.stock.get(product_id)

    def hold(self, key: bytes) -> bytes | None:
        return None

    def held(self, user_id: str, product_id: str) -> int:
        return 0


class KeepingSink:
    def __init__(self) -> None:
        self.batches: list[SinkBatch] = []

    async def write(self, batch: SinkBatch) -> None:
        self.batches.append(batch)


def faust_message(sent: Sent, offset: int) -> Any:
    """What a Faust agent reads: the record as sent, with its headers."""
    return SimpleNamespace(
        topic=sent.topic,
        partition=0,
        offset=offset,
        key=sent.key,
        value=sent.value,
        headers=tuple(sent.headers),
    )


def consumer_record(output: Sent | Output, offset: int) -> ConsumerRecord[bytes, bytes]:
    assert output.value is not None
    return ConsumerRecord(
        topic=output.topic,
        partition=0,
        offset=offset,
        timestamp=NOW_MS,
        timestamp_type=0,
        key=output.key,
        value=output.value,
        checksum=None,
        serialized_key_size=0,
        serialized_value_size=len(output.value),
        headers=tuple(output.headers or ()),
    )


def only(items: Sequence[Any]) -> Any:
    assert len(items) == 1, items
    return items[0]


async def test_one_trace_from_the_intake_to_the_sink(spans: InMemorySpanExporter) -> None:
    settings = Settings(partitions=1, payment_delay_min_s=0, payment_delay_max_s=0)

    # 1. The HTTP intake publishes the order request with the span's traceparent.
    link = FakeLink()
    app = web.Application()
    app[SETTINGS] = settings
    app[KAFKA] = link  # type: ignore[assignment]
    in_flight = StatusMetrics.register(CollectorRegistry()).publishes_in_flight
    app[ORDER_PUBLISHER] = OrderPublisher(link, 10, in_flight)  # type: ignore[arg-type]
    app[STOCK_FIGURES] = StockFigures()  # a view that knows no product: nothing is refused
    app.router.add_post("/orders", intake.post_order)
    async with TestClient(TestServer(app)) as client:
        answer = await client.post(
            "/orders",
            json={"order_id": "o-1", "user_id": "u-1", "product_id": PRODUCT, "quantity": 1},
        )
        assert answer.status == 202
    request = only(link.producer_.sent)
    assert request.topic == settings.topic(ORDER_REQUESTS)
    assert "traceparent" in dict(request.headers)

    # 2. The stock agent decides it; the decision (a single-line order's RESERVED event)
    # carries the decision's span.
    processor = StockProcessor(settings, WorkerMetrics.register(CollectorRegistry()))
    source = SourceRecord(
        request.topic, 0, 0, NOW_MS, request.key, request.value, tuple(request.headers)
    )
    decided, outcome = processor.process(source, DictPartition(), NOW_MS).outputs
    assert decided.topic == settings.topic(ORDER_EVENTS)
    assert outcome.topic == settings.topic(LINE_OUTCOMES)
    assert outcome.headers == decided.headers  # the same span's context

    # 3. The order agent takes the reservation on and asks for payment.
    metrics = LifecycleMetrics.register(CollectorRegistry())
    topics = {
        name: FakeTopic(settings.topic(name))
        for name in (ORDER_EVENTS, LINE_OUTCOMES, ORDER_COMMANDS, PAYMENT_REQUESTS, STOCK_COMMANDS)
    }

    producer = TopicsProducer(topics)

    async def started() -> TopicsProducer:
        return producer

    ctx = orders.OrderAgentContext(
        settings=settings,
        metrics=metrics,
        store={},
        changelog="orders-changelog",
        producer=started,
        order_events=topics[ORDER_EVENTS],
        line_outcomes=topics[LINE_OUTCOMES],
        order_commands=topics[ORDER_COMMANDS],
        payment_requests=topics[PAYMENT_REQUESTS],
        stock_commands=topics[STOCK_COMMANDS],
        dead_letters={},
    )
    names = orders.SourceNames(
        lines=settings.topic(LINE_OUTCOMES), commands=settings.topic(ORDER_COMMANDS)
    )
    reserved = Sent(decided.topic, decided.key, decided.value, list(decided.headers or ()))
    line = Sent(outcome.topic, outcome.key, outcome.value or b"", list(outcome.headers or ()))
    await orders.handle_batch(ctx, [FakeEvent(faust_message(line, 0))], names)  # type: ignore[list-item]
    pay = only(topics[PAYMENT_REQUESTS].sent)

    # 4. The payment agent charges and answers.
    results = FakeTopic(settings.topic(PAYMENT_RESULTS))
    answers = payment.Answers(results.name, lambda: _as_producer(results))
    client = payment.PaymentClient(
        MockPaymentProvider(1.0, (0.0, 0.0)),
        policy=RetryPolicy(attempts=1),
        breaker=CircuitBreaker(5, 10.0),
        timeout_s=5.0,
    )
    await payment.handle_traced(faust_message(pay, 0), answers, {}, client, metrics)
    paid = only(results.sent)

    # 5. The order agent confirms the order: its events and the stock commit.
    await orders.handle_batch(ctx, [FakeEvent(faust_message(paid, 0))], names)  # type: ignore[list-item]
    assert len(producer.changelog) == 2  # the order's state, written once per batch
    confirmed = topics[ORDER_EVENTS].sent
    assert any(b'"status":"CONFIRMED"' in event.value for event in confirmed)
    commit = only(topics[STOCK_COMMANDS].sent)

    # 6. The stock agent commits the line; the sink writes every order event.
    stock_source = SourceRecord(
        commit.topic, 0, 1, NOW_MS, commit.key, commit.value, tuple(commit.headers)
    )
    processor.process(stock_source, DictPartition(), NOW_MS)
    sink = KeepingSink()
    runner = SinkRunner(settings, sink, SinkMetrics.register(CollectorRegistry()))
    events = [reserved, *confirmed]
    await runner._process([consumer_record(e, n) for n, e in enumerate(events)])
    assert len(only(sink.batches).order_events) == len(events)
    await runner.stop()

    finished: list[ReadableSpan] = list(spans.get_finished_spans())
    by_name: dict[str, list[ReadableSpan]] = {}
    for span in finished:
        by_name.setdefault(span.name, []).append(span)
    batch = only(by_name.pop(tracing.SINK_BATCH_SPAN))
    traced = [span for spans_ in by_name.values() for span in spans_]
    trace_ids = {span.context.trace_id for span in traced}
    assert len(trace_ids) == 1, [(span.name, hex(span.context.trace_id)) for span in traced]

    def parent_name(span: ReadableSpan) -> str | None:
        if span.parent is None:
            return None
        [parent] = [s for s in finished if s.context.span_id == span.parent.span_id]
        return parent.name

    intake_span = only(by_name[tracing.INTAKE_SPAN])
    decide = only(by_name[tracing.STOCK_DECIDE_SPAN])
    first_apply, second_apply = sorted(by_name[tracing.ORDER_SPAN], key=lambda s: s.start_time)
    charge = only(by_name[tracing.PAYMENT_SPAN])
    assert intake_span.parent is None
    assert decide.parent.span_id == intake_span.context.span_id  # type: ignore[union-attr]
    assert first_apply.parent.span_id == decide.context.span_id  # type: ignore[union-attr]
    assert charge.parent.span_id == first_apply.context.span_id  # type: ignore[union-attr]
    assert second_apply.parent.span_id == charge.context.span_id  # type: ignore[union-attr]
    assert parent_name(only(by_name[tracing.STOCK_COMMAND_SPAN])) == tracing.ORDER_SPAN
    persisted = by_name[tracing.SINK_RECORD_SPAN]
    assert len(persisted) == len(events)
    parents = sorted(span.parent.span_id for span in persisted)  # type: ignore[union-attr]
    assert parents == sorted(
        [decide.context.span_id] + [second_apply.context.span_id] * len(confirmed)
    )
    # The batch span is a trace of its own, linked to every record's.
    assert batch.context.trace_id not in trace_ids
    assert {link.context.span_id for link in batch.links} == set(parents)
    assert decide.attributes is not None
    assert decide.attributes["orderstream.order_id"] == "o-1"


class Collector:
    """An OTLP/HTTP trace receiver: keeps (trace id, span id, parent id, name) of spans."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, str, str, str]] = []

    async def receive(self, request: web.Request) -> web.Response:
        export = ExportTraceServiceRequest()
        export.ParseFromString(await request.read())
        for resource_spans in export.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(
                        (
                            span.trace_id.hex(),
                            span.span_id.hex(),
                            span.parent_span_id.hex(),
                            span.name,
                        )
                    )
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )


@pytest.mark.integration
async def test_orderstream_run_exports_one_trace_per_order(pipeline: Pipeline) -> None:
    collector = Collector()
    app = web.Application()
    app.router.add_post("/v1/traces", collector.receive)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        pipeline.start(
            ORDERSTREAM_RUN_LIFECYCLE="1",
            ORDERSTREAM_PAYMENT_SUCCESS_RATE="1",
            ORDERSTREAM_PAYMENT_DELAY_MIN_S="0",
            ORDERSTREAM_PAYMENT_DELAY_MAX_S="0.01",
            OTEL_TRACES_EXPORTER="otlp",
            OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}",
            OTEL_BSP_SCHEDULE_DELAY="100",
        )
        await pipeline.set_stock(PRODUCT, 5)
        await pipeline.wait_for_stock(PRODUCT, 5)
        base = await pipeline.wait_for_status_service()
        order = {"order_id": "o-traced", "user_id": "u-1", "product_id": PRODUCT, "quantity": 1}
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{base}/orders", json=order) as answer,
        ):
            assert answer.status == 202

        def trace_of_order() -> list[tuple[str, str, str, str]]:
            [root] = [s for s in collector.spans if s[3] == tracing.INTAKE_SPAN] or [None]
            if root is None:
                return []
            return [s for s in collector.spans if s[0] == root[0]]

        def names() -> list[str]:
            return sorted(span[3] for span in trace_of_order())

        expected = {
            tracing.INTAKE_SPAN: 1,
            tracing.STOCK_DECIDE_SPAN: 1,
            tracing.ORDER_SPAN: 2,
            tracing.PAYMENT_SPAN: 1,
            tracing.STOCK_COMMAND_SPAN: 1,
            tracing.SINK_RECORD_SPAN: 3,
        }

        async def whole() -> bool:
            found = names()
            return all(found.count(name) >= count for name, count in expected.items())

        await pipeline.wait_for("the order's spans at the collector", whole, timeout=90)
    finally:
        await runner.cleanup()
    spans = trace_of_order()
    by_id = {span[1]: span for span in spans}

    def parent(span: tuple[str, str, str, str]) -> str | None:
        return by_id[span[2]][3] if span[2] else None

    [decide] = [s for s in spans if s[3] == tracing.STOCK_DECIDE_SPAN]
    [charge] = [s for s in spans if s[3] == tracing.PAYMENT_SPAN]
    assert parent(decide) == tracing.INTAKE_SPAN
    assert parent(charge) == tracing.ORDER_SPAN
    # The order agent reads the stock agent's reservation (a line outcome) and the
    # payment result: never the order events, its own or the stock agent's.
    applies = [s for s in spans if s[3] == tracing.ORDER_SPAN]
    assert sorted(parent(s) or "" for s in applies) == [
        tracing.PAYMENT_SPAN,
        tracing.STOCK_DECIDE_SPAN,
    ]
    # RESERVED from the stock agent, PAID and CONFIRMED from the order agent.
    persisted = sorted(parent(s) or "" for s in spans if s[3] == tracing.SINK_RECORD_SPAN)
    assert persisted == [tracing.ORDER_SPAN, tracing.ORDER_SPAN, tracing.STOCK_DECIDE_SPAN]
