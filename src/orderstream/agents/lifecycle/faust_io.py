"""What the Faust agents share: raw topics, sending with delivery awaited, dead letters."""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

import faust
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from faust.exceptions import ProducerSendError
from faust.streams import _current_event
from mode import Service

from orderstream import tracing
from orderstream.dead_letters import dead_letter_of
from orderstream.kafka_link import KafkaLink
from orderstream.settings import Settings
from orderstream.tracing import Headers

log = logging.getLogger(__name__)

T = TypeVar("T")

# What the broker may answer for a while (a leader election, an outage): retried until it
# passes. Giving up would lose an effect whose input is then committed.
TRANSIENT_ERRORS = (KafkaError, ProducerSendError, OSError)
_RETRY_FIRST_S = 0.5
_RETRY_MAX_S = 10.0


def raw_topic(app: faust.App, *names: str) -> faust.TopicT:
    """Return a topic of bytes: messages are validated by pydantic in the agent, so a
    malformed one becomes a dead letter instead of an error inside Faust's deserializer."""
    return app.topic(*names, key_serializer="raw", value_serializer="raw")


class DirectProducer(Service):
    """A plain aiokafka producer for the lifecycle's hot records, beside Faust's own.

    Faust's ``topic.send`` and its table writes cost ~100 us of CPU per record (its
    producer buffer hands records over one event-loop turn at a time); this costs a
    fifth of that. The order agent writes its table's changelog and sends its effects
    with it, a batch at a time; started on first use (an agent may run before the app's
    dependencies start), stopped with the app (a dependency).
    """

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        # A batch's records are handed over together: a millisecond's linger is enough.
        self._link = KafkaLink(settings, linger_ms=1, max_batch_size=256 * 1024)

    async def producer(self) -> AIOKafkaProducer:
        """Return the started producer; ConnectionError (retried) when Kafka is down."""
        return await self._link.producer()

    async def on_stop(self) -> None:
        await self._link.close()


@contextmanager
def as_current(event: faust.EventT[Any]) -> Iterator[None]:
    """Make ``event`` Faust's current event for the block.

    A table reads and writes the partition of the current event (its RocksDB database
    and its changelog partition). An agent that works a batch of events from several
    partitions at once sets, for each order, an event of that order's own partition.
    """
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


async def send(
    topic: faust.TopicT, key: str, value: bytes, headers: Headers | None = None
) -> Awaitable[Any]:
    """Send ``value`` keyed by ``key``; return the future of its delivery."""
    sent: Awaitable[Any] = await topic.send(key=key.encode(), value=value, headers=headers)
    return sent


async def delivered(sends: list[Awaitable[Any]]) -> None:
    """Wait until the broker acknowledged every send (raise if one failed)."""
    if sends:
        await asyncio.gather(*sends)


async def dead_letter(dead_letters: Mapping[str, faust.TopicT], message: Any, reason: str) -> None:
    """Park ``message`` (a Faust message) on its topic's dead-letter topic, with the reason."""
    dead = dead_letter_of(
        message.topic, message.partition, message.offset, message.key, message.value, reason=reason
    )
    headers = tracing.inject(dead.headers) or dead.headers  # the trace it failed in, if any
    sent = await dead_letters[message.topic].send(key=dead.key, value=dead.value, headers=headers)
    await sent


async def until_delivered(what: str, attempt: Callable[[], Awaitable[T]]) -> T:
    """Run ``attempt`` until no transient Kafka error stops it, with a doubling backoff.

    Stopping the app cancels the wait; the input is then redelivered, uncommitted.
    """
    delay = _RETRY_FIRST_S
    while True:
        try:
            return await attempt()
        except TRANSIENT_ERRORS as exc:
            log.warning("%s failed (%r); retrying in %.1f s", what, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RETRY_MAX_S)
