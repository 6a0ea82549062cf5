"""Tracing: off unless the OTEL_ variables ask for it; W3C context in Kafka headers."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from orderstream import tracing
from orderstream.agents.stock.processor import SourceRecord, StockProcessor
from orderstream.domain import StockLevel
from orderstream.errors import ConfigurationError
from orderstream.metrics import WorkerMetrics
from orderstream.settings import Settings
from orderstream.topics import ORDER_REQUESTS

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
REQUEST = b'{"order_id":"o-1","user_id":"u-1","product_id":"p1","quantity":1}'


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, []),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger:4318"}, ["otlp"]),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://jaeger:4318/v1/traces"}, ["otlp"]),
        ({"OTEL_TRACES_EXPORTER": "console"}, ["console"]),
        ({"OTEL_TRACES_EXPORTER": "otlp, console"}, ["otlp", "console"]),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"}, []),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, []),
    ],
    ids=["unset", "endpoint", "traces-endpoint", "console", "two", "none", "sdk-disabled"],
)
def test_exporters_come_from_the_otel_variables(env: dict[str, str], expected: list[str]) -> None:
    assert tracing.exporter_names(env) == expected


def test_tracing_stays_off_without_an_exporter() -> None:
    assert tracing.setup_tracing("orderstream-test", environ={}) is False
    assert tracing.ENABLED is False
    assert tracing.inject() is None
    with tracing.consumer_span("x", [("traceparent", TRACEPARENT.encode())], "t", 0, 1) as span:
        assert span is trace.INVALID_SPAN


def test_an_unknown_exporter_or_protocol_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="unknown exporter"):
        tracing.setup_tracing("x", environ={"OTEL_TRACES_EXPORTER": "zipkin"})
    with pytest.raises(ConfigurationError, match="grpc"):
        tracing.setup_tracing(
            "x", environ={"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
        )
    assert tracing.ENABLED is False


@pytest.mark.parametrize(
    "headers",
    [
        [("other", b"x"), ("traceparent", TRACEPARENT.encode())],  # aiokafka
        {"traceparent": TRACEPARENT.encode()},  # Faust may give a mapping
        {"traceparent": TRACEPARENT},  # HTTP
    ],
    ids=["pairs", "mapping", "strings"],
)
def test_extract_reads_the_traceparent_of_any_headers(headers: tracing.HeadersIn) -> None:
    context = trace.get_current_span(tracing.extract(headers)).get_span_context()
    assert context.is_valid
    assert f"{context.trace_id:032x}" == TRACE_ID
    assert f"{context.span_id:016x}" == PARENT_ID


@pytest.mark.parametrize(
    "headers",
    [
        None,
        [],
        [("traceparent", b"\xff\xfe")],
        [("traceparent", b"garbage")],
        [("traceparent", None)],
    ],
    ids=["none", "empty", "not-utf8", "malformed", "null"],
)
def test_extract_of_no_or_bad_context_is_empty(headers: tracing.HeadersIn) -> None:
    assert not trace.get_current_span(tracing.extract(headers)).get_span_context().is_valid


def test_a_span_continues_the_record_trace_and_injects_its_own(
    spans: InMemorySpanExporter,
) -> None:
    headers = [("traceparent", TRACEPARENT.encode())]
    with tracing.consumer_span("step", headers, "topic", 3, 42) as span:
        injected = tracing.inject([("keep", b"1")])
    assert injected is not None
    assert injected[0] == ("keep", b"1")
    own = span.get_span_context()
    assert dict(injected)["traceparent"] == f"00-{TRACE_ID}-{own.span_id:016x}-01".encode()
    [finished] = spans.get_finished_spans()
    assert finished.parent is not None
    assert f"{finished.parent.span_id:016x}" == PARENT_ID
    assert finished.kind is trace.SpanKind.CONSUMER
    assert finished.attributes == {
        "messaging.system": "kafka",
        "messaging.operation.type": "process",
        "messaging.destination.name": "topic",
        "messaging.destination.partition.id": "3",
        "messaging.kafka.offset": 42,
    }


def test_a_stored_carrier_gives_the_same_headers(spans: InMemorySpanExporter) -> None:
    with tracing.consumer_span("step", None, "topic", 0, 0):
        fields = tracing.carrier()
        headers = tracing.inject()
    assert fields is not None
    assert tracing.as_headers(fields) == headers
    assert tracing.as_headers(None) is None


def _processor() -> tuple[StockProcessor, SourceRecord]:
    settings = Settings(partitions=1)
    processor = StockProcessor(settings, WorkerMetrics.register(CollectorRegistry()))
    record = SourceRecord(
        settings.topic(ORDER_REQUESTS), 0, 7, 1_000, b"p1", REQUEST,
        (("traceparent", TRACEPARENT.encode()),),
    )  # fmt: skip
    return processor, record


class _Partition:
    def level(self, product_id: str) -> StockLevel | None:
        return StockLevel(available=5, total_in=5)

    def hold(self, key: bytes) -> bytes | None:
        return None

    def held(self, user_id: str, product_id: str) -> int:
        return 0


def test_the_stock_processor_adds_no_headers_when_tracing_is_off() -> None:
    processor, record = _processor()
    outputs = processor.process(record, _Partition(), 1_000).outputs
    assert outputs
    assert all(output.headers is None for output in outputs)


def test_the_stock_decision_carries_its_span(spans: InMemorySpanExporter) -> None:
    processor, record = _processor()
    output, *_ = processor.process(record, _Partition(), 1_000).outputs
    [decided] = spans.get_finished_spans()
    assert decided.name == tracing.STOCK_DECIDE_SPAN
    assert f"{decided.context.trace_id:032x}" == TRACE_ID
    assert decided.parent is not None
    assert f"{decided.parent.span_id:016x}" == PARENT_ID
    assert output.headers is not None
    assert dict(output.headers)["traceparent"] == (
        f"00-{TRACE_ID}-{decided.context.span_id:016x}-01".encode()
    )


def test_a_dead_lettered_record_marks_its_span_failed(spans: InMemorySpanExporter) -> None:
    processor, record = _processor()
    bad = SourceRecord(record.topic, 0, 8, 1_000, b"p1", b"{not json", record.headers)
    [dead] = processor.process(bad, _Partition(), 1_000).outputs
    [span] = spans.get_finished_spans()
    assert span.status.status_code is trace.StatusCode.ERROR
    assert dead.headers is not None
    assert "traceparent" in dict(dead.headers)


def test_a_batch_links_the_records_that_carry_a_context(spans: InMemorySpanExporter) -> None:
    traced = ([("traceparent", TRACEPARENT.encode())], {"n": 1}, None)
    refused = ([("traceparent", TRACEPARENT.encode())], {"n": 2}, "refused: bad")
    untraced = ([], {"n": 3}, None)
    tracing.record_batch([traced, refused, untraced], 1, {"messaging.batch.message_count": 3})
    finished = spans.get_finished_spans()
    [batch] = [span for span in finished if span.name == tracing.SINK_BATCH_SPAN]
    records = [span for span in finished if span.name == tracing.SINK_RECORD_SPAN]
    assert len(records) == 2
    assert batch.parent is None
    assert batch.attributes is not None
    assert batch.attributes["orderstream.traced_records"] == 2
    assert len(batch.links) == 2
    for span in records:
        assert span.parent is not None
        assert f"{span.parent.span_id:016x}" == PARENT_ID
        assert [link.context.span_id for link in span.links] == [batch.context.span_id]
    statuses = sorted(span.status.status_code.name for span in records)
    assert statuses == ["ERROR", "UNSET"]
