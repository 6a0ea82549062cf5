"""Every topic of the pipeline, its key, and the schema of its messages.

Topic names are spelled here and nowhere else. Messages are pydantic models, validated
where they enter a process; unknown fields are ignored so producers can add fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Self, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from orderstream.domain import (
    LineStatus,
    OrderStatus,
    RejectReason,
    StockLevel,
    StockOperation,
)
from orderstream.errors import InvalidMessageError
from orderstream.settings import Settings

ORDER_REQUESTS = "order-requests"  # key: product id
STOCK_COMMANDS = "stock-commands"  # key: product id (co-partitioned with order-requests)
ORDER_EVENTS = "order-events"  # key: order id
STOCK_CHANGES = "stock-changes"  # key: product id
# The order lifecycle (agents/orders.py, agents/payment.py): keyed by order id, so an
# order's inputs and its table partition meet in one agent.
ORDER_COMMANDS = "order-commands"  # key: order id
PAYMENT_REQUESTS = "payment-requests"  # key: order id
PAYMENT_RESULTS = "payment-results"  # key: order id
# The stock agent's decision of each line of an order of several lines (key: order id),
# for the order agent to assemble; a single-line order's decision is its order event.
LINE_OUTCOMES = "line-outcomes"
DLQ_SUFFIX = "-dlq"

# Header names on dead letters: the message value stays the original bytes.
DLQ_REASON_HEADER = "orderstream-dlq-reason"
DLQ_SOURCE_HEADER = "orderstream-dlq-source"  # "topic/partition/offset"
# On a dead letter cut to fit the broker: "key bytes/value bytes" of the original.
DLQ_TRUNCATED_HEADER = "orderstream-dlq-truncated"

# What PostgreSQL, HTTP paths and log lines can all carry: bounded, printable text. NUL
# and other control characters (C0, DEL, C1) are refused at the door, where the
# producer gets a dead letter with the reason, instead of inside the sink.
ID_MAX_LENGTH = 200
ID_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]+$"
Id = Annotated[str, StringConstraints(min_length=1, max_length=ID_MAX_LENGTH, pattern=ID_PATTERN)]
# Quantities and sequence numbers go to PostgreSQL `integer` columns.
MAX_QUANTITY = 2**31 - 1
# An order has at most this many lines (the order agent waits for each one's outcome).
MAX_LINE_COUNT = 100
DETAIL_MAX_LENGTH = 1000


class Message(BaseModel):
    """Base of every message: unknown fields ignored, instances immutable."""

    model_config = ConfigDict(extra="ignore", frozen=True)


M = TypeVar("M", bound=Message)


class OrderRequest(Message):
    """One order line as a shop back end publishes it on ``order-requests``."""

    order_id: Id
    user_id: Id
    product_id: Id
    quantity: int = Field(ge=1, le=MAX_QUANTITY, strict=True)
    line_count: int = Field(default=1, ge=1, le=MAX_LINE_COUNT, strict=True)


class StockCommand(Message):
    """A command to one product's stock, on ``stock-commands``.

    ``set`` and ``add`` change the stock on sale by ``quantity`` and name no order.
    ``commit`` (reserved -> sold) and ``release`` (reserved -> available) settle the line
    of ``order_id``, by the quantity its hold recorded: a ``quantity`` given with them
    must be that one.
    """

    product_id: Id
    operation: StockOperation
    quantity: int | None = Field(default=None, ge=0, le=MAX_QUANTITY, strict=True)
    order_id: Id | None = None

    @model_validator(mode="after")
    def _fits_operation(self) -> Self:
        operation = self.operation.value
        if self.operation.settles_line:
            if self.order_id is None:
                raise ValueError(f"{operation} needs the order_id of the line it settles")
        elif self.order_id is not None:
            # Most likely a commit or a release with the wrong operation: applying it
            # would change the stock on sale instead of one order's line.
            raise ValueError(f"{operation} changes the stock on sale and takes no order_id")
        elif self.quantity is None:
            raise ValueError(f"{operation} needs a quantity")
        return self


class StockChange(Message):
    """A product's stock after a change, on ``stock-changes``; ``version`` grows per product."""

    product_id: Id
    available: int = Field(ge=0)
    reserved: int = Field(ge=0)
    sold: int = Field(ge=0)
    total_in: int = Field(ge=0)
    version: int = Field(ge=0)
    changed_at_ms: int

    @classmethod
    def of(cls, product_id: str, level: StockLevel, changed_at_ms: int) -> StockChange:
        """Return the snapshot of a product's stock level."""
        return cls(
            product_id=product_id,
            available=level.available,
            reserved=level.reserved,
            sold=level.sold,
            total_in=level.total_in,
            version=level.version,
            changed_at_ms=changed_at_ms,
        )


class OrderItem(Message):
    """One line of an order as an order event carries it: where its stock stands.

    ``status`` is the line's own (LineStatus), not the order's: a REJECTED order may hold
    a REJECTED line and RELEASED ones; a CONFIRMED order's lines are COMMITTED.
    """

    product_id: Id
    quantity: int = Field(ge=1, le=MAX_QUANTITY)
    status: LineStatus
    reason: RejectReason | None = None  # why a REJECTED line was turned down


class OrderEvent(Message):
    """One transition of an order, on ``order-events``; ``seq`` grows per order.

    ``items``, when present, describes the whole order: every line, each once, with its
    status. Every event of a multi-line order carries it (the sink writes order_items
    from it); a single-line order's events may. ``product_id`` and ``quantity`` are
    always there: the only line of a single-line order, the first item of ``items``
    otherwise.
    """

    order_id: Id
    seq: int = Field(ge=1, le=MAX_QUANTITY)
    status: OrderStatus
    reason: RejectReason | None = None
    detail: str | None = Field(default=None, max_length=DETAIL_MAX_LENGTH)
    user_id: Id
    product_id: Id
    quantity: int = Field(ge=1, le=MAX_QUANTITY)
    # Kafka timestamp (ms) of the request that this decision answers: latency is measured from it.
    requested_at_ms: int
    decided_at_ms: int
    # The product's stock right after this decision, when the decision changed it.
    stock: StockChange | None = None
    # Left out of the JSON when absent: a single-line event reads as it always has.
    items: list[OrderItem] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_LINE_COUNT,
        exclude_if=lambda items: items is None,
    )

    @model_validator(mode="after")
    def _items_fit(self) -> Self:
        if self.items is None:
            return self
        first = self.items[0]
        if (first.product_id, first.quantity) != (self.product_id, self.quantity):
            raise ValueError("product_id and quantity must be those of the first item")
        if len({item.product_id for item in self.items}) != len(self.items):
            raise ValueError("items name a product more than once")
        return self


class LineDecision(Message):
    """The stock agent's decision of one line of an order of several, on ``line-outcomes``."""

    order_id: Id
    user_id: Id
    product_id: Id
    quantity: int = Field(ge=1, le=MAX_QUANTITY)
    line_count: int = Field(ge=2, le=MAX_LINE_COUNT)
    status: OrderStatus  # RESERVED or REJECTED
    reason: RejectReason | None = None
    detail: str | None = Field(default=None, max_length=DETAIL_MAX_LENGTH)
    requested_at_ms: int
    decided_at_ms: int


@dataclass(frozen=True)
class TopicSpec:
    """A topic to create: name, partitions, and broker-side config."""

    name: str
    partitions: int
    config: dict[str, str]


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """Return every topic the pipeline needs, with the settings' prefix and partition count."""
    # Co-partitioned topics share one count: the stock table's partition n owns exactly
    # the products that hash to partition n of order-requests and of stock-commands.
    sources = [ORDER_REQUESTS, STOCK_COMMANDS, ORDER_EVENTS, STOCK_CHANGES]
    sources += [ORDER_COMMANDS, PAYMENT_REQUESTS, PAYMENT_RESULTS, LINE_OUTCOMES]
    names = [*sources, *(name + DLQ_SUFFIX for name in sources)]
    return [TopicSpec(settings.topic(name), settings.partitions, {}) for name in names]


def dead_letter_headers(
    topic: str, partition: int, offset: int, reason: str
) -> list[tuple[str, bytes]]:
    """Return the headers of a dead letter: why, and where the original record sat."""
    source = f"{topic}/{partition}/{offset}"
    return [(DLQ_REASON_HEADER, reason.encode()), (DLQ_SOURCE_HEADER, source.encode())]


def decode(model: type[M], raw: bytes | None) -> M:
    """Validate raw message bytes as ``model``, or raise InvalidMessageError with the reason."""
    if raw is None:
        raise InvalidMessageError("message has no value")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise InvalidMessageError(describe_invalid(exc)) from None


def describe_invalid(exc: ValidationError) -> str:
    """Summarize a validation error in one line: field and problem, for the dead letter."""
    parts = []
    for error in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in error["loc"]) or "message"
        message = error["msg"]
        if error["type"] == "string_pattern_mismatch":
            message = "contains a control character (NUL, tab, newline, ...), not allowed"
        parts.append(f"{where}: {message}")
    return "; ".join(parts)


class OrderCommandKind(StrEnum):
    """What an order command asks of the order agent."""

    CANCEL = "cancel"
    EXPIRE = "expire"


class OrderCommand(Message):
    """A cancel (a user, through the status service) or an expire (the timer), on
    ``order-commands``; the order agent decides whether it still applies."""

    order_id: Id
    command: OrderCommandKind
    detail: str | None = Field(default=None, max_length=DETAIL_MAX_LENGTH)


class PaymentAction(StrEnum):
    """What a payment request asks of the payment agent."""

    CHARGE = "charge"
    REFUND = "refund"  # a charge arrived for an order that can no longer be sold


class PaymentRequest(Message):
    """A charge or a refund for one order, on ``payment-requests``."""

    order_id: Id
    # Unknown (None) only for a refund of an order the order agent has no state of.
    user_id: Id | None = None
    amount: int = Field(default=0, ge=0, le=MAX_QUANTITY)  # a refund gives back the charge
    action: PaymentAction = PaymentAction.CHARGE


class PaymentOutcome(Message):
    """The payment agent's answer to a charge, on ``payment-results``.

    Not paid carries PAYMENT_FAILED (declined) or PAYMENT_UNAVAILABLE (the provider
    could not be reached within the retries).
    """

    order_id: Id
    paid: bool
    reason: RejectReason | None = None
    detail: str | None = Field(default=None, max_length=DETAIL_MAX_LENGTH)
