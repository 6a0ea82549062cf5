"""Every body the status service answers, as a model; handlers and /openapi.json share them.

Handlers answer by serialising one of these (http/encoding.py), so the document generated
from them (http/openapi.py) says what is served, field by field.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, WithJsonSchema
from pydantic.json_schema import SkipJsonSchema

from orderstream.domain import Currency, OrderStatus, RejectReason
from orderstream.topics import MAX_LINE_COUNT, Address, Id

# A user's orders, a page at a time.
PAGE_DEFAULT = 20
PAGE_MAX = 100

# Every timestamp out: UTC, milliseconds, a Z.
ISO_TIMESTAMP_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z$"


def iso_timestamp(moment: datetime) -> str:
    """Return ``2026-11-26T11:32:22.572Z``: UTC, milliseconds, a Z.

    A naive datetime is taken as UTC: every timestamp column is ``timestamptz``, and the
    service never makes naive ones.
    """
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


Timestamp = Annotated[
    datetime,
    PlainSerializer(iso_timestamp, return_type=str),
    WithJsonSchema(
        {
            "type": "string",
            "format": "date-time",
            "pattern": ISO_TIMESTAMP_PATTERN,
            "examples": ["2026-11-26T11:32:22.572Z"],
        }
    ),
]
# Stock figures are PostgreSQL `bigint`s, never negative.
Count = Annotated[int, Field(ge=0)]


def decimal_text(value: Decimal) -> str:
    """Return ``12.50`` for 12.5000 and 12.5: the exact value, no exponent, at least two
    places (as prices are written) and no trailing zero past them.

    PostgreSQL's numeric(14, 4) pads to four places and a Kafka message keeps what the
    shop wrote; one spelling makes the same price read the same from either.
    """
    normalized = value.normalize()
    if normalized.as_tuple().exponent > -_MONEY_PLACES:  # type: ignore[operator]
        normalized = normalized.quantize(_CENTS)
    return format(normalized, "f")


_MONEY_PLACES = 2
_CENTS = Decimal(1).scaleb(-_MONEY_PLACES)


# Money out: an exact decimal as a JSON string, never a float.
DecimalText = Annotated[
    Decimal,
    PlainSerializer(decimal_text, return_type=str),
    WithJsonSchema(
        {"type": "string", "pattern": r"^[0-9]+\.[0-9]{2,}$", "examples": ["12.50", "1999.00"]}
    ),
]


def _drop_default(schema: dict[str, Any]) -> None:
    # An omitted field has no default to show: it is simply absent.
    schema.pop("default", None)


# A count or an offset: never negative (None fields take their bound here, not on Field).
_Count = Annotated[int, Field(ge=0)]


def _omitted_when_none(**field: Any) -> Any:
    """Return the field of an optional member, left out of the body rather than sent as null."""
    return Field(
        default=None,
        exclude_if=lambda value: value is None,
        json_schema_extra=_drop_default,
        **field,
    )


class Body(BaseModel):
    """Base of every answer: immutable; fields without a default are always present."""

    model_config = ConfigDict(frozen=True)


class ErrorDetail(Body):
    """One problem of an invalid request body, as pydantic found it."""

    type: str = Field(examples=["greater_than_equal"])
    loc: list[str | int] = Field(examples=[["quantity"]])
    msg: str = Field(examples=["Input should be greater than or equal to 1"])


class ErrorBody(Body):
    """Every error's answer: a reason in a sentence, and what it concerns when that helps."""

    error: str = Field(examples=["order not found"])
    details: list[ErrorDetail] | SkipJsonSchema[None] = _omitted_when_none()
    order_id: str | SkipJsonSchema[None] = _omitted_when_none()
    product_id: str | SkipJsonSchema[None] = _omitted_when_none()


class OrderItem(Body):
    """One line of an order, at the unit price it was decided at."""

    product_id: str
    quantity: int = Field(ge=1)
    status: OrderStatus
    unit_price: DecimalText | None = Field(
        description="Unit price when the line was decided, in currency; null: no price."
    )
    currency: Currency | None = Field(examples=["EUR"])


class OrderHistoryEntry(Body):
    """One transition of an order; ``seq`` grows per order."""

    seq: int = Field(ge=1)
    status: OrderStatus
    reason: RejectReason | None
    detail: str | None
    actor: str | None = Field(description="The operator who overrode the order, if one did.")
    occurred_at: Timestamp


class Order(Body):
    """An order as PostgreSQL last saw it: its status, total, metadata, items, history."""

    order_id: str
    user_id: str
    status: OrderStatus
    reason: RejectReason | None
    detail: str | None
    total: DecimalText | None = Field(
        description="Sum of quantity x unit price over the lines, in currency; null while a"
        " line has no price (or the lines have different currencies).",
        examples=["39.98"],
    )
    currency: Currency | None = Field(examples=["EUR"])
    shipping_address: Address | None
    billing_address: Address | None
    notes: str | None
    created_at: Timestamp
    updated_at: Timestamp
    items: list[OrderItem]
    history: list[OrderHistoryEntry]


class OrderSummary(Body):
    """One order in a user's list."""

    order_id: str
    status: OrderStatus
    reason: RejectReason | None
    created_at: Timestamp
    updated_at: Timestamp


class UserOrdersPage(Body):
    """A page of a user's orders, newest first; ``next`` is the cursor for ``?after=``."""

    user_id: str
    orders: list[OrderSummary]
    next: str | None = Field(
        description="Cursor of the next page, or null when this page is the last one."
    )


class ProductStock(Body):
    """A product's stock and catalog after its last change; total_in = available + reserved + sold.

    ``source`` says where the figure comes from: ``live``, the status service's view of
    the stock-changes topic (within a second of the stock agent), or ``database``, what
    PostgreSQL last saw (before the view has caught up, or for a product it does not know).
    """

    product_id: str
    available: Count
    reserved: Count
    sold: Count
    total_in: Count
    version: Count
    price: DecimalText | None = Field(
        description="Unit price of the lines decided from now on, in currency; null: no price."
    )
    currency: str | None = Field(examples=["EUR"])
    max_per_user: int | None = Field(
        ge=1, description="The product's own per-user limit; null: the service's default."
    )
    updated_at: Timestamp = Field(description="When the stock agent made the change.")
    age_ms: Count = Field(description="How old the figure is: now - updated_at, in ms.")
    source: Literal["live", "database"]


class SoldOut(Body):
    """An order refused at the door: the live stock view says a product of it has none left.

    A hint, not a decision: nothing was published, and the same order may pass once the
    product is restocked.
    """

    error: str = Field(examples=["sold out"])
    reason: Literal["SOLD_OUT"]
    product_id: str


class OrderAccepted(Body):
    """An order request published: where to ask what became of it."""

    order_id: Id
    status_url: str = Field(examples=["/orders/o-4"])


class OrderPublished(Body):
    """An order's lines published: how many, and where to ask what became of the order."""

    order_id: Id
    status_url: str = Field(examples=["/orders/o-4?partition=3&offset=1204"])
    lines: int = Field(ge=1, le=MAX_LINE_COUNT, examples=[1])
    # A one-line order's place in line: its product's partition of order-requests and its
    # offset there (status_url carries them: GET answers QUEUED with what is ahead).
    partition: _Count | SkipJsonSchema[None] = _omitted_when_none(examples=[3])
    offset: _Count | SkipJsonSchema[None] = _omitted_when_none(examples=[1204])


class OrderQueued(Body):
    """An order published and not decided yet: where it stands in its product's line."""

    order_id: Id
    status: Literal["QUEUED"]
    partition: int = Field(ge=0, examples=[3])
    offset: int = Field(ge=0, examples=[1204])
    # Requests of the partition before this one the stock agent has still to decide, as
    # of its last commit (about a second behind): it only shrinks, and 0 means deciding.
    ahead: int = Field(ge=0, examples=[310])
    product_id: Id | SkipJsonSchema[None] = _omitted_when_none()
    # The product's units available, from the live stock view, when it knows them.
    available: _Count | SkipJsonSchema[None] = _omitted_when_none(examples=[42])


class Health(Body):
    """The process is alive."""

    status: Literal["ok"]


class ReadinessChecks(Body):
    """Each dependency: ``ok``, or ``failed: <kind>`` (timeout, or the error's type: the
    details, which name hosts and users, are in the service's log)."""

    postgres: str = Field(examples=["ok"])
    kafka: str = Field(examples=["failed: ConnectionError"])


class Readiness(Body):
    """Whether the service can answer: its dependencies, and the process's other roles."""

    ready: bool
    checks: ReadinessChecks
    roles: dict[str, str] | SkipJsonSchema[None] = _omitted_when_none(
        description="Each role of the process and its state; absent when the service runs alone.",
        examples=[{"stock-agent": "running", "sink": "running", "status-service": "running"}],
    )
    process: int = Field(
        description="The id of the process that answered: one of the service's processes"
        " sharing the port (ORDERSTREAM_HTTP_PROCESSES).",
        examples=[4242],
    )
