"""What the Faust agents share: raw topics, sending with delivery awaited, dead letters."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import faust
from aiokafka.errors import KafkaError
from faust.exceptions import ProducerSendError

from orderstream import tracing
from orderstream.dead_letters import dead_letter_of
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
