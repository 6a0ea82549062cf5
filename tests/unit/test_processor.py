"""The stock agent's processor: one source record and the partition's state in, effects out."""

from __future__ import annotations

from decimal import Decimal

import pytest
from prometheus_client import CollectorRegistry

from orderstream.agents.stock.processor import Effects, Output, SourceRecord, StockProcessor
from orderstream.codec import encode_json
from orderstream.domain import (
    Committed,
    LineStatus,
    OrderStatus,
    RejectReason,
    Released,
    Reserved,
    StockAdded,
    StockEvent,
    StockLevel,
    StockSet,
    evolve,
    owner_partition,
)
from orderstream.metrics import WorkerMetrics
from orderstream.settings import Settings
from orderstream.tables import Hold, decode_hold, encode_hold, hold_key
from orderstream.topics import (
    DLQ_REASON_HEADER,
    DLQ_SOURCE_HEADER,
    DLQ_SUFFIX,
    LINE_OUTCOMES,
    ORDER_EVENTS,
    ORDER_REQUESTS,
    STOCK_COMMANDS,
    LineDecision,
    OrderEvent,
)

PARTITIONS = 8
WINDOW_S = 60
NOW_MS = 10_000_000
PRODUCT = "p1"
OWNER = owner_partition(PRODUCT, PARTITIONS)
ELSEWHERE = (OWNER + 1) % PARTITIONS


class MemoryState:
    """A PartitionView in two dicts, taking effects as the store would."""

    def __init__(self) -> None:
        self.stock: dict[str, StockLevel] = {}
        self.holds: dict[bytes, bytes] = {}
        self.counts: dict[tuple[str, str], int] = {}

    def held(self, user_id: str, product_id: str) -> int:
        return self.counts.get((user_id, product_id), 0)

    def level(self, product_id: str) -> StockLevel | None:
        return self.stock.get(product_id)

    def hold(self, key: bytes) -> bytes | None:
        return self.holds.get(key)

    def take(self, effects: Effects) -> None:
        for product_id, event in effects.stock:
            self.stock[product_id] = evolve(self.stock.get(product_id), event)
        for key, hold in effects.holds:
            self.holds[key] = encode_hold(hold)
        for user_id, product_id, quantity in effects.held:
            self.counts[user_id, product_id] = self.held(user_id, product_id) + quantity


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def processor(registry: CollectorRegistry) -> StockProcessor:
    # Every value explicit: ORDERSTREAM_* variables of the shell must not leak in.
    settings = Settings(
        partitions=PARTITIONS, topic_prefix="", dedup_window_s=WINDOW_S, max_line_quantity=10
    )
    return StockProcessor(settings, WorkerMetrics.register(registry))


@pytest.fixture
def state() -> MemoryState:
    memory = MemoryState()
    memory.stock[PRODUCT] = StockLevel(available=5, total_in=5, version=1)
    return memory


def request_value(order_id: str = "o1", quantity: int = 2, product_id: str = PRODUCT) -> bytes:
    return b'{"order_id":"%s","user_id":"u1","product_id":"%s","quantity":%d}' % (
        order_id.encode(),
        product_id.encode(),
        quantity,
    )


def request(
    value: bytes | None,
    *,
    partition: int = OWNER,
    offset: int = 42,
    timestamp_ms: int = NOW_MS - 5,
) -> SourceRecord:
    return SourceRecord(ORDER_REQUESTS, partition, offset, timestamp_ms, PRODUCT.encode(), value)


def command(operation: str, quantity: int, offset: int, partition: int = OWNER) -> SourceRecord:
    value = b'{"product_id":"%s","operation":"%s","quantity":%d}' % (
        PRODUCT.encode(),
        operation.encode(),
        quantity,
    )
    return SourceRecord(STOCK_COMMANDS, partition, offset, NOW_MS, PRODUCT.encode(), value)


def settle(
    operation: str,
    order_id: str,
    offset: int,
    quantity: int | None = None,
    partition: int = OWNER,
) -> SourceRecord:
    """A commit or a release of one order's line of PRODUCT, as the order agent sends it."""
    given = b"" if quantity is None else b',"quantity":%d' % quantity
    value = b'{"product_id":"%s","operation":"%s","order_id":"%s"%s}' % (
        PRODUCT.encode(),
        operation.encode(),
        order_id.encode(),
        given,
    )
    return SourceRecord(STOCK_COMMANDS, partition, offset, NOW_MS, PRODUCT.encode(), value)


def announced(output: Output) -> OrderEvent:
    assert output.topic == ORDER_EVENTS
    assert output.value is not None
    return OrderEvent.model_validate_json(output.value)


def dead_letter_reason(effects: Effects, source: SourceRecord) -> str:
    """Check ``effects`` is exactly the dead letter of ``source``; return its reason."""
    assert (effects.holds, effects.stock) == ([], [])
    [dead] = effects.outputs
    assert dead.topic == source.topic + "-dlq"
    assert (dead.key, dead.value, dead.partition) == (source.key, source.value, None)
    headers = dict(dead.headers or [])
    assert (
        headers[DLQ_SOURCE_HEADER] == f"{source.topic}/{source.partition}/{source.offset}".encode()
    )
    return headers[DLQ_REASON_HEADER].decode()


# --- order requests -------------------------------------------------------------------


def test_a_valid_request_reserves_records_a_hold_and_announces_it(
    processor: StockProcessor, state: MemoryState
) -> None:
    source = request(request_value("o1", 2))
    effects = processor.process(source, state, NOW_MS)

    [(key, hold)] = effects.holds
    assert key == hold_key("o1", PRODUCT)
    assert (hold.order_id, hold.user_id, hold.product_id, hold.quantity) == ("o1", "u1", PRODUCT, 2)
    assert (hold.status, hold.reason, hold.stock_version) == (OrderStatus.RESERVED, None, 2)
    assert (hold.requested_at_ms, hold.decided_at_ms) == (source.timestamp_ms, NOW_MS)
    assert effects.stock == [(PRODUCT, Reserved(2, version=2))]
    [output, outcome] = effects.outputs
    assert (output.key, output.partition, output.headers) == (b"o1", None, None)
    event = announced(output)
    assert (event.order_id, event.seq, event.status) == ("o1", 1, OrderStatus.RESERVED)
    assert event == OrderEvent.model_validate_json(encode_json(hold.decision_event()))
    # The reservation is the order agent's input too (a rejection is final at once).
    assert (outcome.topic, outcome.key) == (LINE_OUTCOMES, b"o1")
    assert outcome.value == encode_json(hold.line_decision())
    assert LineDecision.model_validate_json(outcome.value).order_id == hold.order_id


def test_out_of_stock_records_a_rejection_and_changes_no_stock(
    processor: StockProcessor, state: MemoryState
) -> None:
    effects = processor.process(request(request_value("o1", 6)), state, NOW_MS)
    [(_, hold)] = effects.holds
    assert (hold.status, hold.reason, hold.stock_version) == (
        OrderStatus.REJECTED,
        RejectReason.OUT_OF_STOCK,
        None,
    )
    assert effects.stock == []
    [output] = effects.outputs
    assert (announced(output).status, announced(output).reason) == (
        OrderStatus.REJECTED,
        RejectReason.OUT_OF_STOCK,
    )


def test_a_duplicate_resends_the_recorded_decision_and_decides_nothing(
    processor: StockProcessor, state: MemoryState, registry: CollectorRegistry
) -> None:
    first = processor.process(request(request_value("o1", 2)), state, NOW_MS)
    state.take(first)
    # Redelivered later, with stock gone meanwhile: the first decision still stands.
    state.stock[PRODUCT] = StockLevel(available=0, reserved=5, total_in=5, version=9)
    again = processor.process(request(request_value("o1", 2), offset=99), state, NOW_MS + 1_000)
    assert (again.holds, again.stock) == ([], [])
    assert again.outputs == first.outputs
    assert registry.get_sample_value("orderstream_duplicate_requests_total") == 1


@pytest.mark.parametrize(
    "source",
    [
        pytest.param(request(request_value(), partition=ELSEWHERE), id="order-request"),
        pytest.param(command("set", 5, offset=3, partition=ELSEWHERE), id="stock-command"),
        pytest.param(settle("commit", "o1", offset=3, partition=ELSEWHERE), id="commit"),
    ],
)
def test_a_record_on_the_wrong_partition_is_forwarded_to_its_owner_undecided(
    processor: StockProcessor, state: MemoryState, source: SourceRecord
) -> None:
    effects = processor.process(source, state, NOW_MS)
    assert (effects.holds, effects.stock) == ([], [])
    assert effects.outputs == [
        Output(
            source.topic, PRODUCT.encode(), source.value, OWNER, timestamp_ms=source.timestamp_ms
        )
    ]


def test_a_request_older_than_the_dedup_window_is_dead_lettered_stale(
    processor: StockProcessor, state: MemoryState
) -> None:
    edge = NOW_MS - WINDOW_S * 1000
    stale = request(request_value("o1"), timestamp_ms=edge - 1)
    reason = dead_letter_reason(processor.process(stale, state, NOW_MS), stale)
    assert reason.startswith("STALE")
    # At the edge of the window it is still decided.
    on_edge = processor.process(request(request_value("o1"), timestamp_ms=edge), state, NOW_MS)
    assert on_edge.stock == [(PRODUCT, Reserved(2, version=2))]


def test_a_stale_request_on_the_wrong_partition_is_dead_lettered_not_forwarded(
    processor: StockProcessor, state: MemoryState
) -> None:
    stale = request(
        request_value("o1"), partition=ELSEWHERE, timestamp_ms=NOW_MS - WINDOW_S * 1000 - 1
    )
    reason = dead_letter_reason(processor.process(stale, state, NOW_MS), stale)
    assert reason.startswith("STALE")


VALID = {"order_id": "o1", "user_id": "u1", "product_id": PRODUCT}


def fields(**overrides: str) -> bytes:
    """A request's JSON with some fields' raw JSON text replaced."""
    raw = {key: f'"{value}"' for key, value in VALID.items()} | {"quantity": "1"} | overrides
    return ("{" + ",".join(f'"{key}":{value}' for key, value in raw.items()) + "}").encode()


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        pytest.param(b"not json", "Invalid JSON", id="not-json"),
        pytest.param(None, "no value", id="null-value"),
        pytest.param(
            fields(order_id=r'"o\u00001"'),
            "order_id: contains a control character",
            id="nul-in-order-id",
        ),
        pytest.param(
            fields(product_id=r'"p\u00001"'),
            "product_id: contains a control character",
            id="nul-in-product-id",
        ),
        pytest.param(
            fields(user_id=r'"u\u001b[31m"'),
            "user_id: contains a control character",
            id="escape-in-user-id",
        ),
        pytest.param(
            fields(order_id=f'"{"o" * 201}"'),
            "order_id: String should have at most 200",
            id="201-char-id",
        ),
        pytest.param(
            fields(quantity="9223372036854775808"),
            "quantity: Input should be less than or equal to 2147483647",
            id="quantity-over-int64",
        ),
        pytest.param(
            fields(quantity="0"),
            "quantity: Input should be greater than or equal to 1",
            id="quantity-zero",
        ),
        pytest.param(
            fields(quantity='"1"'),
            "quantity: Input should be a valid integer",
            id="quantity-as-string",
        ),
        pytest.param(
            fields(line_count="0"),
            "line_count: Input should be greater than or equal to 1",
            id="line-count-zero",
        ),
    ],
)
def test_a_malformed_request_is_dead_lettered_with_the_original_bytes_and_why(
    processor: StockProcessor,
    state: MemoryState,
    registry: CollectorRegistry,
    value: bytes | None,
    fragment: str,
) -> None:
    source = request(value)
    reason = dead_letter_reason(processor.process(source, state, NOW_MS), source)
    assert fragment in reason
    assert registry.get_sample_value("orderstream_dead_letters_total", {"topic": ORDER_REQUESTS})


def test_a_corrupt_recorded_hold_dead_letters_the_request_instead_of_stopping(
    processor: StockProcessor, state: MemoryState
) -> None:
    state.holds[hold_key("o1", PRODUCT)] = b"{not a hold"
    source = request(request_value("o1"))
    assert dead_letter_reason(processor.process(source, state, NOW_MS), source).startswith(
        "internal error"
    )


# --- stock commands -----------------------------------------------------------------------


def test_stock_commands_apply_once_by_offset(processor: StockProcessor, state: MemoryState) -> None:
    state.stock.clear()
    steps: list[tuple[SourceRecord, list[tuple[str, StockEvent]]]] = [
        (command("set", 10, offset=5), [(PRODUCT, StockSet(10, 1, offset=5))]),
        (command("set", 10, offset=5), []),  # redelivered
        (command("add", 3, offset=6), [(PRODUCT, StockAdded(3, 2, offset=6))]),
        (command("add", 3, offset=6), []),
        (command("set", 1, offset=4), []),  # an older offset was applied before too
    ]
    for source, stock in steps:
        effects = processor.process(source, state, NOW_MS)
        assert effects == Effects(stock=stock)  # no hold, nothing sent: the store snapshots
        state.take(effects)
    level = state.stock[PRODUCT]
    assert (level.available, level.total_in, level.last_command_offset) == (13, 13, 6)


@pytest.mark.parametrize(
    ("operation", "quantity", "fragment"),
    [
        pytest.param(
            "set", -1, "quantity: Input should be greater than or equal to 0", id="negative-set"
        ),
        pytest.param("add", 0, "stock add needs a quantity >= 1", id="empty-add"),
    ],
)
def test_an_impossible_stock_command_is_dead_lettered(
    processor: StockProcessor, state: MemoryState, operation: str, quantity: int, fragment: str
) -> None:
    source = command(operation, quantity, offset=7)
    assert fragment in dead_letter_reason(processor.process(source, state, NOW_MS), source)
    assert state.stock[PRODUCT].last_command_offset == -1


# --- commit and release ----------------------------------------------------------------


def commands_counted(registry: CollectorRegistry, operation: str, result: str) -> float:
    labels = {"operation": operation, "result": result}
    return registry.get_sample_value("orderstream_stock_commands_total", labels) or 0


def reserve(processor: StockProcessor, state: MemoryState, order_id: str, quantity: int) -> None:
    state.take(processor.process(request(request_value(order_id, quantity)), state, NOW_MS))


def recorded_hold(state: MemoryState, order_id: str) -> Hold:
    return decode_hold(state.holds[hold_key(order_id, PRODUCT)])


@pytest.mark.parametrize(
    ("operation", "settled", "event", "figures"),
    [
        pytest.param("commit", LineStatus.COMMITTED, Committed(2, 3), (3, 0, 2), id="commit"),
        pytest.param("release", LineStatus.RELEASED, Released(2, 3), (5, 0, 0), id="release"),
    ],
)
def test_settling_a_reserved_line_moves_its_stock_once_and_rewrites_its_hold(
    processor: StockProcessor,
    state: MemoryState,
    registry: CollectorRegistry,
    operation: str,
    settled: LineStatus,
    event: StockEvent,
    figures: tuple[int, int, int],
) -> None:
    reserve(processor, state, "o1", 2)
    reservation = recorded_hold(state, "o1")
    effects = processor.process(settle(operation, "o1", offset=7), state, NOW_MS + 500)

    # Nothing is announced: the stock change reaches the sink with the batch's snapshot.
    assert (effects.stock, effects.outputs) == ([(PRODUCT, event)], [])
    [(key, hold)] = effects.holds
    assert key == hold_key("o1", PRODUCT)
    assert (hold.line_status, hold.final_version, hold.settled_at_ms) == (
        settled,
        3,
        NOW_MS + 500,
    )
    assert hold.is_final
    assert hold.stock_events() == [Reserved(2, 2), event]
    # The decision stays what was announced.
    assert hold.decision_event() == reservation.decision_event()
    state.take(effects)
    level = state.stock[PRODUCT]
    assert (level.available, level.reserved, level.sold, level.version) == (*figures, 3)
    assert commands_counted(registry, operation, "applied") == 1

    # Redelivered, with or without the quantity: nothing moves twice.
    for again in (settle(operation, "o1", offset=8), settle(operation, "o1", 9, quantity=2)):
        assert processor.process(again, state, NOW_MS + 900) == Effects()
    assert commands_counted(registry, operation, "already_applied") == 2
    assert state.stock[PRODUCT] == level
    # A duplicate request still re-sends the reservation it was given, nothing more.
    duplicate = processor.process(request(request_value("o1", 2), offset=99), state, NOW_MS)
    assert (duplicate.holds, duplicate.stock) == ([], [])
    [output, outcome] = duplicate.outputs
    assert output.value == encode_json(reservation.decision_event())
    assert outcome.topic == LINE_OUTCOMES


@pytest.mark.parametrize(
    ("first", "then"), [("commit", "release"), ("release", "commit")], ids=["sold", "released"]
)
def test_a_line_settled_one_way_is_never_settled_the_other(
    processor: StockProcessor,
    state: MemoryState,
    registry: CollectorRegistry,
    first: str,
    then: str,
) -> None:
    reserve(processor, state, "o1", 2)
    state.take(processor.process(settle(first, "o1", offset=7), state, NOW_MS))
    settled, level = state.holds[hold_key("o1", PRODUCT)], state.stock[PRODUCT]
    assert processor.process(settle(then, "o1", offset=8), state, NOW_MS) == Effects()
    assert (state.holds[hold_key("o1", PRODUCT)], state.stock[PRODUCT]) == (settled, level)
    assert commands_counted(registry, then, "conflicting") == 1


@pytest.mark.parametrize("operation", ["commit", "release"])
@pytest.mark.parametrize("line", ["never-requested", "rejected"])
def test_settling_a_line_never_reserved_changes_nothing_and_is_counted(
    processor: StockProcessor,
    state: MemoryState,
    registry: CollectorRegistry,
    operation: str,
    line: str,
) -> None:
    reserve(processor, state, "o1", 2)  # another order's reservation, left alone
    if line == "rejected":
        reserve(processor, state, "o2", 9)  # out of stock
        assert recorded_hold(state, "o2").line_status is LineStatus.REJECTED
    holds, level = dict(state.holds), state.stock[PRODUCT]
    # A release before its reservation is dropped, not kept for a request to come.
    assert processor.process(settle(operation, "o2", offset=7), state, NOW_MS) == Effects()
    assert (state.holds, state.stock[PRODUCT]) == (holds, level)
    assert commands_counted(registry, operation, "not_reserved") == 1
    if line == "never-requested":
        state.take(processor.process(request(request_value("o2", 1)), state, NOW_MS))
        assert recorded_hold(state, "o2").line_status is LineStatus.RESERVED


def test_a_commit_whose_quantity_differs_from_the_hold_is_dead_lettered(
    processor: StockProcessor, state: MemoryState, registry: CollectorRegistry
) -> None:
    reserve(processor, state, "o1", 2)
    source = settle("commit", "o1", offset=7, quantity=3)
    reason = dead_letter_reason(processor.process(source, state, NOW_MS), source)
    assert reason == "commit of quantity 3 for order 'o1', whose line holds 2"
    assert recorded_hold(state, "o1").line_status is LineStatus.RESERVED
    assert registry.get_sample_value("orderstream_dead_letters_total", {"topic": STOCK_COMMANDS})
    # With the right quantity it applies.
    assert processor.process(settle("commit", "o1", 8, quantity=2), state, NOW_MS).stock == [
        (PRODUCT, Committed(2, 3))
    ]


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        pytest.param(
            b'{"product_id":"p1","operation":"commit","quantity":2}',
            "commit needs the order_id of the line it settles",
            id="commit-without-order",
        ),
        pytest.param(
            b'{"product_id":"p1","operation":"release"}',
            "release needs the order_id of the line it settles",
            id="release-without-order",
        ),
        pytest.param(
            b'{"product_id":"p1","operation":"set","quantity":2,"order_id":"o1"}',
            "set changes the stock on sale and takes no order_id",
            id="set-with-order",
        ),
        pytest.param(
            b'{"product_id":"p1","operation":"add"}', "add needs a quantity", id="add-without"
        ),
        pytest.param(
            b'{"product_id":"p1","operation":"commit","order_id":"o\\u0000"}',
            "order_id: contains a control character",
            id="nul-in-order-id",
        ),
    ],
)
def test_a_stock_command_that_does_not_fit_its_operation_is_dead_lettered(
    processor: StockProcessor, state: MemoryState, value: bytes, fragment: str
) -> None:
    source = SourceRecord(STOCK_COMMANDS, OWNER, 7, NOW_MS, PRODUCT.encode(), value)
    assert fragment in dead_letter_reason(processor.process(source, state, NOW_MS), source)


def test_a_line_of_an_order_of_several_goes_to_the_order_agent_not_to_order_events(
    processor: StockProcessor, state: MemoryState
) -> None:
    value = b'{"order_id":"m1","user_id":"u1","product_id":"p1","quantity":2,"line_count":3}'
    source = SourceRecord(ORDER_REQUESTS, OWNER, 7, NOW_MS, PRODUCT.encode(), value)
    effects = processor.process(source, state, NOW_MS)
    assert [(o.topic, o.key) for o in effects.outputs] == [(LINE_OUTCOMES, b"m1")]
    decided = LineDecision.model_validate_json(effects.outputs[0].value or b"")
    assert (decided.status, decided.line_count, decided.quantity) == (OrderStatus.RESERVED, 3, 2)
    assert effects.stock == [(PRODUCT, Reserved(2, version=2))]
    # Its duplicate re-sends the line's decision there too, and decides nothing.
    state.take(effects)
    again = processor.process(source, state, NOW_MS)
    assert (again.holds, again.stock) == ([], [])
    assert [(o.topic, o.value) for o in again.outputs] == [
        (LINE_OUTCOMES, effects.outputs[0].value)
    ]


# --- the catalog: prices and per-user limits ---------------------------------------------


def catalog(offset: int, fields: bytes, operation: str = "update") -> SourceRecord:
    value = b'{"product_id":"%s","operation":"%s"%s}' % (
        PRODUCT.encode(),
        operation.encode(),
        fields,
    )
    return SourceRecord(STOCK_COMMANDS, OWNER, offset, NOW_MS, PRODUCT.encode(), value)


def test_a_decision_captures_the_price_of_its_time_and_a_later_change_never_alters_it(
    processor: StockProcessor, state: MemoryState
) -> None:
    state.take(processor.process(catalog(1, b',"price":"19.99","currency":"EUR"'), state, NOW_MS))
    first = processor.process(request(request_value("o1", 2)), state, NOW_MS)
    state.take(first)
    state.take(processor.process(catalog(2, b',"price":"25.00","currency":"EUR"'), state, NOW_MS))
    second = processor.process(request(request_value("o2", 1)), state, NOW_MS)
    state.take(second)

    [(_, hold)] = first.holds
    assert (hold.unit_price, hold.currency) == (Decimal("19.99"), "EUR")
    event = announced(first.outputs[0])
    assert (event.unit_price, event.currency, event.total) == (
        Decimal("19.99"),
        "EUR",
        Decimal("39.98"),
    )
    assert announced(second.outputs[0]).total == Decimal("25.00")
    # A duplicate of the first order, after the change, re-sends the first price.
    again = processor.process(request(request_value("o1", 2)), state, NOW_MS)
    assert announced(again.outputs[0]).total == Decimal("39.98")
    assert state.stock[PRODUCT].price == Decimal("25.00")


def test_an_update_changes_the_catalog_never_the_stock(
    processor: StockProcessor, state: MemoryState
) -> None:
    before = state.stock[PRODUCT]
    state.take(processor.process(catalog(1, b',"max_per_user":2'), state, NOW_MS))
    after = state.stock[PRODUCT]
    assert (after.available, after.reserved, after.total_in) == (5, 0, 5)
    assert (after.max_per_user, after.version) == (2, before.version + 1)
    state.take(processor.process(catalog(2, b',"max_per_user":0'), state, NOW_MS))
    assert state.stock[PRODUCT].max_per_user is None  # 0: the product's own limit is gone


def test_a_user_holds_at_most_the_limit_and_a_release_makes_room_again(
    processor: StockProcessor, state: MemoryState
) -> None:
    state.take(processor.process(catalog(1, b',"max_per_user":2'), state, NOW_MS))
    decided = []
    for n in range(4):  # each asks for one: two fit the limit
        effects = processor.process(request(request_value(f"o{n}", 1)), state, NOW_MS)
        state.take(effects)
        decided.append(announced(effects.outputs[0]))
    assert [e.status for e in decided] == [OrderStatus.RESERVED] * 2 + [OrderStatus.REJECTED] * 2
    assert {e.reason for e in decided[2:]} == {RejectReason.LIMIT_EXCEEDED}
    assert state.held("u1", PRODUCT) == 2
    # A commit keeps the count (bought is held); a release gives one unit of room back.
    state.take(processor.process(settle("commit", "o0", 10), state, NOW_MS))
    assert state.held("u1", PRODUCT) == 2
    state.take(processor.process(settle("release", "o1", 11), state, NOW_MS))
    assert state.held("u1", PRODUCT) == 1
    state.take(processor.process(settle("release", "o1", 12), state, NOW_MS))  # redelivered
    assert state.held("u1", PRODUCT) == 1
    effects = processor.process(request(request_value("o9", 1)), state, NOW_MS)
    assert announced(effects.outputs[0]).status is OrderStatus.RESERVED


def test_the_default_limit_applies_to_products_without_their_own(
    registry: CollectorRegistry,
) -> None:
    settings = Settings(
        partitions=PARTITIONS, topic_prefix="", dedup_window_s=WINDOW_S, max_per_user=1
    )
    processor = StockProcessor(settings, WorkerMetrics.register(registry))
    state = MemoryState()
    state.stock[PRODUCT] = StockLevel(available=5, total_in=5, version=1)
    first = processor.process(request(request_value("o1", 1)), state, NOW_MS)
    state.take(first)
    second = processor.process(request(request_value("o2", 1)), state, NOW_MS)
    assert announced(second.outputs[0]).reason is RejectReason.LIMIT_EXCEEDED
    # The product's own limit wins over the default.
    state.take(processor.process(catalog(1, b',"max_per_user":3'), state, NOW_MS))
    third = processor.process(request(request_value("o3", 2)), state, NOW_MS)
    assert announced(third.outputs[0]).status is OrderStatus.RESERVED


def test_a_catalog_command_that_cannot_apply_is_dead_lettered(
    processor: StockProcessor, state: MemoryState
) -> None:
    for fields, operation in [
        (b',"price":"1.00"', "update"),  # no currency
        (b',"currency":"EUR"', "update"),  # no price
        (b"", "update"),  # nothing to change
        (b',"price":"-1","currency":"EUR"', "update"),
        (b',"price":"1.00001","currency":"EUR"', "update"),  # 5 places
        (b',"price":"NaN","currency":"EUR"', "update"),
        (b',"price":"1e400","currency":"EUR"', "update"),
        (b',"price":"1.00","currency":"eur"', "update"),
        (b',"quantity":3,"max_per_user":-1', "set"),
        (b',"quantity":3,"price":"1.00","currency":"EUR"', "update"),  # update takes no quantity
    ]:
        effects = processor.process(catalog(1, fields, operation), state, NOW_MS)
        [dead] = effects.outputs
        assert dead.topic == STOCK_COMMANDS + DLQ_SUFFIX, fields
    other = processor.process(
        SourceRecord(
            STOCK_COMMANDS,
            OWNER,
            1,
            NOW_MS,
            b"new",
            b'{"product_id":"%s","operation":"update","max_per_user":2}'
            % _owned_unstocked().encode(),
        ),
        state,
        NOW_MS,
    )
    [dead] = other.outputs  # an update of a product with no stock: set its stock first
    assert dead.topic == STOCK_COMMANDS + DLQ_SUFFIX


def _owned_unstocked() -> str:
    return next(
        p for p in (f"n{i}" for i in range(1000)) if owner_partition(p, PARTITIONS) == OWNER
    )
