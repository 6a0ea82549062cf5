"""OpenTelemetry tracing across the pipeline, the context carried in Kafka record headers.

Off unless the standard ``OTEL_`` variables name an exporter: ``OTEL_TRACES_EXPORTER``
(``otlp``, ``console``; ``none`` turns it off), or, with that unset,
``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``..._TRACES_ENDPOINT``) says where OTLP goes. Off,
no provider is set up and the API's tracer is a no-op; ``ENABLED`` stays False so that
the hot paths test one flag and build nothing.

The context travels as W3C trace context (``traceparent``, ``tracestate``) in the
headers of every record a traced step sends, so a producer may start a trace by putting
its own ``traceparent`` on an order request.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeAlias

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from orderstream.errors import ConfigurationError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

log = logging.getLogger(__name__)

# Span names, one per step (docs/operations.md lists them).
INTAKE_SPAN = "POST /orders"
STOCK_DECIDE_SPAN = "stock.decide"
STOCK_COMMAND_SPAN = "stock.command"
ORDER_SPAN = "orders.apply"
PAYMENT_SPAN = "payment.process"
SINK_BATCH_SPAN = "sink.write"
SINK_RECORD_SPAN = "sink.persist"

# Kafka headers as aiokafka gives and takes them; Faust's may be a mapping too.
Headers: TypeAlias = list[tuple[str, bytes]]
HeadersIn: TypeAlias = Sequence[tuple[str, bytes | None]] | Mapping[str, Any] | None
Attributes: TypeAlias = Mapping[str, AttributeValue]

# True once a provider is set up: every traced step checks it before building anything.
ENABLED = False
_tracer: trace.Tracer = trace.NoOpTracer()
_PROPAGATOR = TraceContextTextMapPropagator()
_FIELDS = frozenset(_PROPAGATOR.fields)  # traceparent, tracestate
# A batch span links to this many of its records' traces at most.
_MAX_BATCH_LINKS = 128


def setup_tracing(service_name: str, environ: Mapping[str, str] | None = None) -> bool:
    """Set up tracing as the ``OTEL_`` variables say; return whether it is on.

    Call once per process, before any traced step runs.
    """
    env = os.environ if environ is None else environ
    names = exporter_names(env)
    if not names:
        return False
    # The SDK is imported only when tracing is on: the off path pays nothing for it.
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # OTEL_SERVICE_NAME (or service.name in OTEL_RESOURCE_ATTRIBUTES) overrides the role's.
    named = env.get("OTEL_SERVICE_NAME") or "service.name=" in env.get(
        "OTEL_RESOURCE_ATTRIBUTES", ""
    )
    provider = TracerProvider(
        resource=Resource.create({} if named else {SERVICE_NAME: service_name})
    )
    for name in names:
        # Batched, in a thread of the SDK's: a span never waits for the collector.
        provider.add_span_processor(BatchSpanProcessor(_exporter(name, env)))
    trace.set_tracer_provider(provider)
    enable(provider)
    log.info("tracing on: %s spans exported to %s", service_name, ", ".join(names))
    return True


def exporter_names(env: Mapping[str, str]) -> list[str]:
    """Return the span exporters the ``OTEL_`` variables ask for; none: tracing is off."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    named = [name.strip().lower() for name in env.get("OTEL_TRACES_EXPORTER", "").split(",")]
    named = [name for name in named if name]
    if not named:
        # The SDK's default would be otlp to localhost: off unless an endpoint is given.
        endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get(
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        )
        return ["otlp"] if endpoint else []
    return [] if "none" in named else named


def _exporter(name: str, env: Mapping[str, str]) -> SpanExporter:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if name != "otlp":
        raise ConfigurationError(f"OTEL_TRACES_EXPORTER: unknown exporter {name!r}")
    protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
    )
    if protocol != "http/protobuf":
        raise ConfigurationError(
            f"OTLP protocol {protocol!r}: orderstream ships the http/protobuf exporter only"
        )
    # It reads the endpoint, headers, timeout and compression from the OTEL_ variables.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def enable(provider: TracerProvider) -> None:
    """Trace with ``provider`` (setup_tracing's, or a test's) without touching the global."""
    global ENABLED, _tracer  # noqa: PLW0603 - the one switch the hot paths read
    _tracer = provider.get_tracer("orderstream")
    ENABLED = True


def disable() -> None:
    """Stop tracing: back to the no-op tracer."""
    global ENABLED, _tracer  # noqa: PLW0603
    _tracer = trace.NoOpTracer()
    ENABLED = False


class _HeadersGetter(Getter[Any]):
    """Read trace context from Kafka headers: pairs of (str, bytes), or a mapping."""

    def get(self, carrier: Any, key: str) -> list[str] | None:
        pairs = carrier.items() if isinstance(carrier, Mapping) else carrier
        for name, value in pairs:
            if name == key and value is not None:
                # Bytes from anyone: an undecodable value is an invalid context, no error.
                text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
                return [str(text)]
        return None

    def keys(self, carrier: Any) -> list[str]:
        return [str(name) for name in (carrier.keys() if isinstance(carrier, Mapping) else ())]


_GETTER = _HeadersGetter()


def extract(headers: HeadersIn) -> Context:
    """Return the trace context in ``headers`` (an empty context if they hold none)."""
    if not headers:
        return Context()
    return _PROPAGATOR.extract(headers, Context(), _GETTER)


def carrier(context: Context | None = None) -> dict[str, str] | None:
    """Return the current (or given) trace context as header strings; None if there is none."""
    if not ENABLED:
        return None
    fields: dict[str, str] = {}
    _PROPAGATOR.inject(fields, context)
    return fields or None


def as_headers(fields: Mapping[str, str] | None) -> Headers | None:
    """Return trace context header strings as Kafka headers; None for no context."""
    if not fields:
        return None
    return [(name, value.encode()) for name, value in fields.items() if name in _FIELDS]


def inject(headers: Headers | None = None, context: Context | None = None) -> Headers | None:
    """Add the current (or given) trace context to ``headers``; return them.

    None (or ``headers`` unchanged) when tracing is off or no span is current.
    """
    traced = as_headers(carrier(context))
    if traced is None:
        return headers
    return [*(headers or ()), *traced]


def kafka_attributes(topic: str, partition: int, offset: int) -> dict[str, AttributeValue]:
    """Return the messaging attributes of the Kafka record a span processes."""
    return {
        "messaging.system": "kafka",
        "messaging.operation.type": "process",
        "messaging.destination.name": topic,
        "messaging.destination.partition.id": str(partition),
        "messaging.kafka.offset": offset,
    }


@contextmanager
def consumer_span(
    name: str, headers: HeadersIn, topic: str, partition: int, offset: int
) -> Iterator[trace.Span]:
    """Run the block in a span continuing the trace in a consumed record's headers.

    With no context in the headers, the span starts a trace. Tracing off: no span.
    """
    if not ENABLED:
        yield trace.INVALID_SPAN
        return
    with _tracer.start_as_current_span(
        name,
        context=extract(headers),
        kind=SpanKind.CONSUMER,
        attributes=kafka_attributes(topic, partition, offset),
    ) as span:
        yield span


@contextmanager
def server_span(
    name: str, headers: Mapping[str, str], attributes: Attributes
) -> Iterator[trace.Span]:
    """Run the block in a server span, continuing a caller's ``traceparent`` if it sent one.

    The caller sets the status: an HTTP 4xx is the client's, not the server's, error.
    """
    if not ENABLED:
        yield trace.INVALID_SPAN
        return
    with _tracer.start_as_current_span(
        name,
        context=extract(headers),
        kind=SpanKind.SERVER,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        yield span


def set_attributes(attributes: Attributes) -> None:
    """Add attributes to the current span (nothing when tracing is off)."""
    if ENABLED:
        trace.get_current_span().set_attributes(attributes)


def set_error(span: trace.Span, description: str) -> None:
    """Mark ``span`` failed, with why."""
    span.set_status(Status(StatusCode.ERROR, description))


def record_batch(
    records: Iterable[tuple[HeadersIn, Attributes, str | None]],
    start_ns: int,
    attributes: Attributes,
) -> None:
    """Record a batch written from ``start_ns`` until now: a batch span, and a span in the
    trace of each record that carries one, linked to each other.

    Each record is (headers, attributes, why it failed or None).
    """
    if not ENABLED:
        return
    end_ns = time.time_ns()
    traced = []
    for headers, record_attributes, failure in records:
        context = extract(headers)
        span_context = trace.get_current_span(context).get_span_context()
        if span_context.is_valid:
            traced.append((context, span_context, record_attributes, failure))
    batch = _tracer.start_span(
        SINK_BATCH_SPAN,
        context=Context(),  # a trace of its own: its records belong to many
        kind=SpanKind.CONSUMER,
        attributes={**attributes, "orderstream.traced_records": len(traced)},
        links=[Link(span_context) for _, span_context, _, _ in traced[:_MAX_BATCH_LINKS]],
        start_time=start_ns,
    )
    to_batch = [Link(batch.get_span_context())]
    for context, _, record_attributes, failure in traced:
        span = _tracer.start_span(
            SINK_RECORD_SPAN,
            context=context,
            kind=SpanKind.CONSUMER,
            attributes=record_attributes,
            links=to_batch,
            start_time=start_ns,
        )
        if failure is not None:
            set_error(span, failure)
        span.end(end_time=end_ns)
    batch.end(end_time=end_ns)
