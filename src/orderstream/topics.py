"""Every topic of the pipeline, its key, and the schema of its messages.

Topic names are spelled here and nowhere else. Messages are pydantic models, validated
where they enter a process; unknown fields are ignored so producers can add fields.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Protocol, Self, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from orderstream.domain import (
    CatalogPatch,
    Currency,
    LineStatus,
    OrderStatus,
    Price,
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
# The order lifecycle (agents/lifecycle/orders.py and payment.py): keyed by order id,
# so an order's inputs and its table partition meet in one agent.
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
# An address field: printable text on one line, as an id.
AddressText = Annotated[
    str, StringConstraints(min_length=1, max_length=ID_MAX_LENGTH, pattern=ID_PATTERN)
]
# Notes may run over lines (newline, tab); no other control character (NUL, escapes).
NOTES_MAX_LENGTH = 1000
NOTES_PATTERN = r"^[^\x00-\x08\x0b-\x1f\x7f-\x9f]*$"
Notes = Annotated[str, StringConstraints(max_length=NOTES_MAX_LENGTH, pattern=NOTES_PATTERN)]


def _absent_when_none(**field: Any) -> Any:
    """An optional field left out of the JSON when None: a message without it stays small."""
    return Field(default=None, exclude_if=lambda value: value is None, **field)


class Message(BaseModel):
    """Base of every message: unknown fields ignored, instances immutable."""

    model_config = ConfigDict(extra="ignore", frozen=True)


M = TypeVar("M", bound=Message)


class Address(Message):
    """A postal address, as a shop sends it with an order; every field bounded, one line."""

    name: AddressText
    line1: AddressText
    line2: AddressText | None = _absent_when_none()
    city: AddressText
    postal_code: AddressText | None = _absent_when_none()
    region: AddressText | None = _absent_when_none()
    country: Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")]  # ISO 3166-1 alpha-2


class OrderMetadata(Message):
    """What an order may carry beside its lines: stored with it, never decided on."""

    shipping_address: Address | None = _absent_when_none()
    billing_address: Address | None = _absent_when_none()
    notes: Notes | None = _absent_when_none()

    def metadata_fields(self) -> dict[str, Any]:
        """Return the metadata this message carries as JSON-able fields, absent ones left out
        (whatever else a subclass carries: an order line, an event)."""
        return self.model_dump(mode="json", include=_METADATA_FIELDS, exclude_none=True)


_METADATA_FIELDS = set(OrderMetadata.model_fields)


class OrderRequest(OrderMetadata):
    """One order line as a shop back end publishes it on ``order-requests``.

    The metadata (addresses, notes) is the order's: every line of an order of several
    may carry it, the order keeps the first it sees.
    """

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
    # The catalog (set, add, update): the unit price of lines decided from now on, in
    # ``currency`` (the two together); the most one user may hold or buy (0: no limit of
    # the product's own, the default setting applies).
    price: Price | None = _absent_when_none()
    currency: Currency | None = _absent_when_none()
    max_per_user: int | None = _absent_when_none(ge=0, le=MAX_QUANTITY, strict=True)
    # Set, add and update: the command's own id. The owner applies a command once by it,
    # wherever it landed (a copy forwarded again after a crash has another offset). The
    # CLI, the admin route and the seed set one; a command without one is applied once
    # per offset only.
    command_id: Id | None = _absent_when_none()
    # Set only: a new sale of the product begins, what each user holds or bought of it
    # counts from zero again (the old sale's reservations keep their holds).
    new_sale: bool | None = _absent_when_none(strict=True)

    @model_validator(mode="after")
    def _fits_operation(self) -> Self:
        operation = self.operation.value
        if self.new_sale is not None and self.operation is not StockOperation.SET:
            raise ValueError(f"new_sale goes with set, not {operation}")
        catalog = self.price is not None or self.max_per_user is not None
        if (self.price is None) != (self.currency is None):
            raise ValueError("price and currency are given together")
        if self.operation.settles_line:
            if self.order_id is None:
                raise ValueError(f"{operation} needs the order_id of the line it settles")
            if catalog:
                raise ValueError(f"{operation} settles an order's line and changes no price")
        elif self.order_id is not None:
            # Most likely a commit or a release with the wrong operation: applying it
            # would change the stock on sale instead of one order's line.
            raise ValueError(f"{operation} changes the stock on sale and takes no order_id")
        elif self.operation is StockOperation.UPDATE:
            if self.quantity is not None:
                raise ValueError("update changes the catalog only: use set or add for stock")
            if not catalog:
                raise ValueError("update needs a price (with its currency) or a max_per_user")
        elif self.quantity is None:
            raise ValueError(f"{operation} needs a quantity")
        return self

    def catalog(self) -> CatalogPatch | None:
        """Return what this command changes of the product's catalog, None for nothing."""
        if self.price is None and self.max_per_user is None:
            return None
        return CatalogPatch(self.price, self.currency, self.max_per_user)


# A product's stock figures, named once: the stock level's, a stock change's and the
# status service's answer (GET /products/{id}) copy them by these names.
STOCK_FIGURES = (
    "available",
    "reserved",
    "sold",
    "total_in",
    "version",
    "price",
    "currency",
    "max_per_user",
)


def stock_figures(source: object) -> dict[str, Any]:
    """Return the STOCK_FIGURES of ``source`` (a stock level or a stock change), by name."""
    return {name: getattr(source, name) for name in STOCK_FIGURES}


class StockChange(Message):
    """A product's stock after a change, on ``stock-changes``; ``version`` grows per product."""

    product_id: Id
    available: int = Field(ge=0)
    reserved: int = Field(ge=0)
    sold: int = Field(ge=0)
    total_in: int = Field(ge=0)
    version: int = Field(ge=0)
    changed_at_ms: int
    price: Price | None = _absent_when_none()
    currency: Currency | None = _absent_when_none()
    max_per_user: int | None = _absent_when_none(ge=1)  # the product's own limit, if any

    @classmethod
    def of(cls, product_id: str, level: StockLevel, changed_at_ms: int) -> StockChange:
        """Return the snapshot of a product's stock level."""
        return cls(product_id=product_id, changed_at_ms=changed_at_ms, **stock_figures(level))

    def figures(self) -> dict[str, Any]:
        """Return the stock figures of this change (STOCK_FIGURES), by name."""
        return stock_figures(self)


class OrderItem(Message):
    """One line of an order as an order event carries it: where its stock stands.

    ``status`` is the line's own (LineStatus), not the order's: a REJECTED order may hold
    a REJECTED line and RELEASED ones; a CONFIRMED order's lines are COMMITTED.
    """

    product_id: Id
    quantity: int = Field(ge=1, le=MAX_QUANTITY)
    status: LineStatus
    reason: RejectReason | None = None  # why a REJECTED line was turned down
    # The unit price when the line was decided (None: the product had no price).
    unit_price: Price | None = _absent_when_none()
    currency: Currency | None = _absent_when_none()


class OrderEvent(OrderMetadata):
    """One transition of an order, on ``order-events``; ``seq`` grows per order.

    ``items``, when present, describes the whole order: every line, each once, with its
    status. Every event of a multi-line order carries it (the sink writes order_items
    from it); a single-line order's events may. ``product_id`` and ``quantity`` are
    always there: the only line of a single-line order, the first item of ``items``
    otherwise; ``unit_price`` is that line's. ``total`` is the order's (the sum of
    quantity x unit price over its lines, in ``currency``), absent while a line has no
    price. The metadata (addresses, notes), when the order has some, rides on its
    events; ``actor`` names the operator of an override.
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
    # Left out of the JSON when absent: a single-line event's line is its own product_id
    # and quantity.
    items: list[OrderItem] | None = _absent_when_none(min_length=1, max_length=MAX_LINE_COUNT)
    unit_price: Price | None = _absent_when_none()
    currency: Currency | None = _absent_when_none()
    total: Decimal | None = _absent_when_none(ge=0)
    actor: Id | None = _absent_when_none()

    @model_validator(mode="after")
    def _items_fit(self) -> Self:
        check_items(self.product_id, self.quantity, self.items)
        return self


class _Line(Protocol):
    @property
    def product_id(self) -> str: ...
    @property
    def quantity(self) -> int: ...


def check_items(product_id: str, quantity: int, items: Sequence[_Line] | None) -> None:
    """Raise ValueError unless an event's items fit it: the first is its product_id and
    quantity, none names a product twice (OrderEvent's rule, and codec.WireOrderEvent's)."""
    if items is None:
        return
    first = items[0]
    if (first.product_id, first.quantity) != (product_id, quantity):
        raise ValueError("product_id and quantity must be those of the first item")
    if len({item.product_id for item in items}) != len(items):
        raise ValueError("items name a product more than once")


class LineDecision(OrderMetadata):
    """The stock agent's decision of one line, on ``line-outcomes``: every line of an order
    of several, and a single-line order's reservation (its rejection is final at once)."""

    order_id: Id
    user_id: Id
    product_id: Id
    quantity: int = Field(ge=1, le=MAX_QUANTITY)
    line_count: int = Field(ge=1, le=MAX_LINE_COUNT)
    status: OrderStatus  # RESERVED or REJECTED
    reason: RejectReason | None = None
    detail: str | None = Field(default=None, max_length=DETAIL_MAX_LENGTH)
    requested_at_ms: int
    decided_at_ms: int
    unit_price: Price | None = _absent_when_none()
    currency: Currency | None = _absent_when_none()


@dataclass(frozen=True)
class TopicSpec:
    """A topic to create: name, partitions, and broker-side config."""

    name: str
    partitions: int
    config: dict[str, str]


# stock-changes holds each product's stock after its every change: only the last one per
# product (its key) matters, so compaction keeps the topic as small as the catalog, and a
# status service that reads it from the beginning (http/stock_view.py) catches up fast
# and still finds a product that has not changed for longer than any retention.
TOPIC_CONFIGS: dict[str, dict[str, str]] = {STOCK_CHANGES: {"cleanup.policy": "compact"}}


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """Return every topic the pipeline needs, with the settings' prefix and partition count."""
    # Co-partitioned topics share one count: the stock table's partition n owns exactly
    # the products that hash to partition n of order-requests and of stock-commands.
    sources = [ORDER_REQUESTS, STOCK_COMMANDS, ORDER_EVENTS, STOCK_CHANGES]
    sources += [ORDER_COMMANDS, PAYMENT_REQUESTS, PAYMENT_RESULTS, LINE_OUTCOMES]
    names = [*sources, *(name + DLQ_SUFFIX for name in sources)]
    return [
        TopicSpec(settings.topic(name), settings.partitions, TOPIC_CONFIGS.get(name, {}))
        for name in names
    ]


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


# The patterns that refuse control characters: a mismatch says so in words. Any other
# pattern (a currency, a country) keeps pydantic's message, which shows the pattern.
_CONTROL_PATTERNS = {ID_PATTERN, NOTES_PATTERN}


def describe_invalid(exc: ValidationError) -> str:
    """Summarize a validation error in one line: field and problem, for the dead letter."""
    parts = []
    for error in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in error["loc"]) or "message"
        message = error["msg"]
        pattern = (error.get("ctx") or {}).get("pattern")
        if error["type"] == "string_pattern_mismatch" and pattern in _CONTROL_PATTERNS:
            message = "contains a control character (NUL, tab, newline, ...), not allowed"
        parts.append(f"{where}: {message}")
    return "; ".join(parts)


class OrderCommandKind(StrEnum):
    """What an order command asks of the order agent."""

    CANCEL = "cancel"
    EXPIRE = "expire"
    OVERRIDE = "override"  # an operator ends a reserved order: CONFIRMED or CANCELLED


class OrderCommand(Message):
    """A cancel (a user, through the status service), an expire (the timer) or an
    override (an operator, with ``status`` and ``actor``), on ``order-commands``; the
    order agent decides whether it still applies."""

    order_id: Id
    command: OrderCommandKind
    detail: str | None = Field(default=None, max_length=DETAIL_MAX_LENGTH)
    status: OrderStatus | None = _absent_when_none()
    actor: Id | None = _absent_when_none()

    @model_validator(mode="after")
    def _override_whole(self) -> Self:
        overrides = self.command is OrderCommandKind.OVERRIDE
        if overrides != (self.status is not None) or overrides != (self.actor is not None):
            raise ValueError("an override, and only an override, names a status and an actor")
        if self.status not in (None, *OVERRIDE_STATUSES):
            raise ValueError(f"an override ends an order CONFIRMED or CANCELLED, not {self.status}")
        return self


# Where an operator may move a RESERVED order: confirmed (paid elsewhere) or cancelled.
OVERRIDE_STATUSES = (OrderStatus.CONFIRMED, OrderStatus.CANCELLED)


class PaymentAction(StrEnum):
    """What a payment request asks of the payment agent."""

    CHARGE = "charge"
    REFUND = "refund"  # a charge arrived for an order that can no longer be sold


class PaymentRequest(Message):
    """A charge or a refund for one order, on ``payment-requests``."""

    order_id: Id
    # Unknown (None) only for a refund of an order the order agent has no state of.
    user_id: Id | None = None
    # The order's total (a refund gives back the charge): exact, in ``currency``.
    amount: Decimal = Field(default=Decimal(0), ge=0)
    currency: Currency | None = _absent_when_none()
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
    # Not paid within the order TTL of the first charge attempt: the order EXPIRES.
    # Strict: "yes" or 2 is a malformed answer (dead-lettered), never taken for true.
    expired: bool = Field(default=False, strict=True)
