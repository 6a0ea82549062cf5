"""The status service's live view of every product's stock, from ``stock-changes``.

The stock agent announces each product's stock after every change on the compacted
``stock-changes`` topic. The view reads all of its partitions from the beginning, with
no consumer group (every status service process keeps a whole view of its own), and
keeps the latest figure per product: one entry per product, whatever the traffic.

The figure is a hint, never a decision: POST /orders refuses an order at the door only
once the view has caught up and a product of it has nothing left, and the stock agent
still decides every order that passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime

from aiohttp import web
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from orderstream.errors import InvalidMessageError
from orderstream.http.schemas import ProductStock
from orderstream.kafka_security import kafka_options
from orderstream.logs import record_context
from orderstream.settings import Settings
from orderstream.topics import STOCK_CHANGES, StockChange, decode

log = logging.getLogger(__name__)

# A change shows in the view within about this long when the topic was idle: the
# broker answers a fetch at once when records arrive, at the latest after this wait.
_FETCH_WAIT_MS = 50
_POLL_TIMEOUT_MS = 200
_RETRY_FIRST_S = 0.5
_RETRY_MAX_S = 10.0
# A consumer that cannot say goodbye to a dead broker is dropped after this long.
_STOP_TIMEOUT_S = 5.0
# aiokafka's loggers that speak once per attempt (a broker it cannot reach, the topic).
_AIOKAFKA_LOGGERS = (
    "aiokafka",  # its client's
    "aiokafka.conn",
    "aiokafka.cluster",
    "aiokafka.consumer.consumer",
    "aiokafka.consumer.fetcher",
    "aiokafka.consumer.subscription_state",
)


@dataclass(frozen=True)
class StockFigure:
    """A product's latest stock change, and when this process received it (ms)."""

    change: StockChange
    received_at_ms: int

    def product_stock(self, now_ms: int) -> ProductStock:
        """Return the figure as GET /products/{product_id} answers it, aged at ``now_ms``."""
        change = self.change
        return ProductStock(
            product_id=change.product_id,
            **change.figures(),
            updated_at=datetime.fromtimestamp(change.changed_at_ms / 1000, tz=UTC),
            # Another host's clock may run ahead of ours: never a negative age.
            age_ms=max(0, now_ms - change.changed_at_ms),
            source="live",
        )


class StockFigures:
    """The latest figure per product; whether it has caught up with the topic."""

    def __init__(self) -> None:
        self._latest: dict[str, StockFigure] = {}
        self.caught_up = False

    def __len__(self) -> int:
        return len(self._latest)

    def apply(self, change: StockChange, received_at_ms: int) -> bool:
        """Keep ``change`` unless a figure of a version as high is kept; say if it was kept.

        A product's version grows with each change, so a replayed or late record (the
        topic read again after a reconnect) never replaces a newer figure.
        """
        kept = self._latest.get(change.product_id)
        if kept is not None and kept.change.version >= change.version:
            return False
        self._latest[change.product_id] = StockFigure(change, received_at_ms)
        return True

    def get(self, product_id: str) -> StockFigure | None:
        """Return the product's latest figure, None when the view has none."""
        return self._latest.get(product_id)

    def sold_out(self, product_ids: list[str]) -> str | None:
        """Return the first of ``product_ids`` the caught-up view knows has nothing left.

        None before the view caught up (it may not have read a restock yet), and for a
        product it does not know: then the stock agent decides, as always.
        """
        if not self.caught_up:
            return None
        for product_id in product_ids:
            figure = self._latest.get(product_id)
            if figure is not None and figure.change.available == 0:
                return product_id
        return None


# What the handlers read: the view's figures (http/app.py starts the view that feeds them).
STOCK_FIGURES = web.AppKey("stock_figures", StockFigures)


class _State(enum.StrEnum):
    STARTING = "starting"
    DOWN = "down"
    REPLAYING = "replaying"
    LIVE = "live"


# The view whose task (or one of its consumer's tasks) is logging, if any.
_FOLLOWING: ContextVar[StockView | None] = ContextVar("stock_view", default=None)


class _QuietWhileDown(logging.Filter):
    """Drop aiokafka's line per failed attempt of a view that already said it is down."""

    def filter(self, record: logging.LogRecord) -> bool:
        view = _FOLLOWING.get()
        return view is None or not view.down


_QUIET_WHILE_DOWN = _QuietWhileDown()


class StockView:
    """Follow every partition of the deployment's ``stock-changes`` into ``figures``.

    It never raises into the service: while Kafka does not answer it retries with
    backoff, and logs a line when its state changes, not per attempt. Create it inside
    the running event loop: aiokafka clients bind to it.
    """

    def __init__(self, settings: Settings, figures: StockFigures) -> None:
        self._settings = settings
        self._bootstrap = settings.kafka_bootstrap
        self._topic = settings.topic(STOCK_CHANGES)
        self.figures = figures
        # Where to go on after a reconnect: the next offset of each partition read.
        self._positions: dict[TopicPartition, int] = {}
        self._state = _State.STARTING
        self._delay = _RETRY_FIRST_S
        self._started_at = time.monotonic()
        self._task: asyncio.Task[None] | None = None

    @property
    def down(self) -> bool:
        """Whether the view is retrying after a failure (and has said so)."""
        return self._state is _State.DOWN

    def start(self) -> None:
        """Start following in the background; return at once."""
        for name in _AIOKAFKA_LOGGERS:
            logging.getLogger(name).addFilter(_QUIET_WHILE_DOWN)  # once: addFilter dedups
        self._started_at = time.monotonic()
        self._task = asyncio.create_task(self._run(), name="stock-view")

    async def stop(self) -> None:
        """Stop following, in bounded time."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        # The task's own context, inherited by the tasks its consumers start.
        _FOLLOWING.set(self)
        while True:
            try:
                await self._follow()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # never take the service down: retry instead
                self._set_state(
                    _State.DOWN,
                    "stock view: cannot follow %s at %s (%r); retrying with backoff",
                    self._topic,
                    self._bootstrap,
                    exc,
                )
                log.debug("stock view: next attempt in %.1f s", self._delay, exc_info=True)
                await asyncio.sleep(self._delay)
                self._delay = min(self._delay * 2, _RETRY_MAX_S)

    async def _follow(self) -> None:
        consumer = AIOKafkaConsumer(
            self._topic,
            **kafka_options(self._settings),
            # No group: every process reads the whole topic for itself, aiokafka assigning
            # it all of the topic's partitions (and any added later).
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",  # a figure deleted under us: the oldest left
            fetch_max_wait_ms=_FETCH_WAIT_MS,
        )
        try:
            await consumer.start()  # raises when the topic does not exist (yet)
            self._delay = _RETRY_FIRST_S  # Kafka answers: a later failure starts over
            partitions = sorted(consumer.assignment())
            for tp in partitions:
                if tp in self._positions:
                    consumer.seek(tp, self._positions[tp])
                else:
                    await consumer.seek_to_beginning(tp)
            ends: dict[TopicPartition, int] = {}
            if not self.figures.caught_up:
                ends = await consumer.end_offsets(partitions)
                self._set_state(
                    _State.REPLAYING,
                    "stock view: reading %s (%d partitions) up to its end",
                    self._topic,
                    len(partitions),
                )
            while True:
                batches = await consumer.getmany(timeout_ms=_POLL_TIMEOUT_MS)
                for tp, records in batches.items():
                    self._apply(records)
                    self._positions[tp] = records[-1].offset + 1
                if ends:
                    ends = await self._still_behind(consumer, ends)
                if not self.figures.caught_up and not ends:
                    self.figures.caught_up = True
                self._set_state(
                    _State.LIVE if self.figures.caught_up else _State.REPLAYING,
                    "stock view: live on %s, %d products (%.1f s since the view started)",
                    self._topic,
                    len(self.figures),
                    time.monotonic() - self._started_at,
                )
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(consumer.stop(), _STOP_TIMEOUT_S)

    @staticmethod
    async def _still_behind(
        consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]
    ) -> dict[TopicPartition, int]:
        # The position, not the last record: a partition may end in offsets that hold
        # no record (compacted away), and an empty one has none at all.
        return {tp: end for tp, end in ends.items() if await consumer.position(tp) < end}

    def _apply(self, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        now_ms = int(time.time() * 1000)
        for record in records:
            try:
                change = decode(StockChange, record.value)
            except InvalidMessageError as exc:
                # The sink dead-letters it; the view only must not stop at it.
                log.warning(
                    "stock view: skipped %s/%d@%d: %s",
                    record.topic,
                    record.partition,
                    record.offset,
                    exc,
                    extra=record_context(record.topic, record.partition, record.offset),
                )
                continue
            self.figures.apply(change, now_ms)

    def _set_state(self, state: _State, message: str, *args: object) -> None:
        """Log ``message`` when the view enters ``state``; stay quiet while it stays there."""
        if state is self._state:
            return
        self._state = state
        if state is _State.DOWN:
            log.warning(message, *args)
        else:
            log.info(message, *args)
