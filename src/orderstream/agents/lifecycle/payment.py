"""The payment agent: charges and refunds at the provider, answers on ``payment-results``.

No table, and many requests at once (``payment_concurrency`` in flight): a slow payment
never stalls a partition. Every call is idempotent by order id at the provider, so a
redelivered request (at least once) is answered again, never charged again. A call that
fails or times out is retried with backoff; a circuit breaker stops calling a provider
that keeps failing; a charge that never gets through is answered not paid, with
PAYMENT_UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar

import faust
from aiokafka import AIOKafkaProducer

from orderstream import tracing
from orderstream.agents.lifecycle.faust_io import dead_letter, until_delivered
from orderstream.agents.lifecycle.provider import PaymentProvider, ProviderError
from orderstream.agents.lifecycle.resilience import (
    BreakerState,
    CircuitBreaker,
    RetryPolicy,
    TokenBucket,
)
from orderstream.domain import RejectReason
from orderstream.errors import InvalidMessageError, OrderstreamError
from orderstream.logs import record_context
from orderstream.metrics import LifecycleMetrics
from orderstream.settings import Settings
from orderstream.topics import PaymentAction, PaymentOutcome, PaymentRequest, decode

log = logging.getLogger(__name__)

T = TypeVar("T")


class PaymentUnavailableError(OrderstreamError):
    """The provider could not be reached within the retry policy's attempts."""

    retriable = True


class PaymentExpiredError(OrderstreamError):
    """The provider did not pay within the order TTL of the first charge attempt."""

    retriable = False


class PaymentClient:
    """Call the provider with a timeout, retries with backoff, and a circuit breaker."""

    def __init__(
        self,
        provider: PaymentProvider,
        *,
        policy: RetryPolicy,
        breaker: CircuitBreaker,
        timeout_s: float,
        ttl_s: float | None = None,
        rate_limit: TokenBucket | None = None,
        metrics: LifecycleMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._provider = provider
        self._policy = policy
        self._breaker = breaker
        self._timeout_s = timeout_s
        self._ttl_s = ttl_s
        self._rate_limit = rate_limit
        self._metrics = metrics
        self._clock = clock
        self._sleep = sleep

    @classmethod
    def from_settings(
        cls, provider: PaymentProvider, settings: Settings, metrics: LifecycleMetrics | None
    ) -> PaymentClient:
        """Return a client with the settings' retry policy, breaker and timeout."""
        return cls(
            provider,
            policy=RetryPolicy(
                attempts=settings.payment_attempts, first_delay_s=settings.payment_backoff_s
            ),
            breaker=CircuitBreaker(
                settings.payment_breaker_failures, settings.payment_breaker_open_s
            ),
            timeout_s=settings.payment_timeout_s,
            ttl_s=settings.order_ttl_s,
            rate_limit=(
                TokenBucket(
                    settings.payment_rate_limit_per_s,
                    max(1.0, settings.payment_rate_limit_per_s),  # a second's worth
                    time.monotonic(),
                )
                if settings.payment_rate_limit_per_s
                else None
            ),
            metrics=metrics,
        )

    async def charge(self, order_id: str, amount: Decimal) -> PaymentOutcome:
        """Charge an order; a provider out of reach gives not paid, PAYMENT_UNAVAILABLE,
        and one that has not paid within the TTL of the first attempt, expired."""
        try:
            paid = await self._call(
                lambda: self._provider.charge(order_id, amount), ttl_s=self._ttl_s
            )
        except PaymentExpiredError as exc:
            return PaymentOutcome(order_id=order_id, paid=False, expired=True, detail=str(exc))
        except PaymentUnavailableError as exc:
            return PaymentOutcome(
                order_id=order_id,
                paid=False,
                reason=RejectReason.PAYMENT_UNAVAILABLE,
                detail=str(exc),
            )
        if paid:
            return PaymentOutcome(order_id=order_id, paid=True)
        return PaymentOutcome(
            order_id=order_id,
            paid=False,
            reason=RejectReason.PAYMENT_FAILED,
            detail="declined by the payment provider",
        )

    async def refund(self, order_id: str) -> None:
        """Refund an order; raise PaymentUnavailableError if the provider stays out of reach."""
        await self._call(lambda: self._provider.refund(order_id))

    async def _call(self, call: Callable[[], Awaitable[T]], ttl_s: float | None = None) -> T:
        """Call until an answer, within the retry policy and, given ``ttl_s``, before the
        TTL of the first attempt passes (PaymentExpiredError)."""
        attempt = 0
        deadline: float | None = None
        while True:
            attempt += 1
            await self._take_turn()
            now = self._clock()
            if deadline is None and ttl_s is not None:
                deadline = now + ttl_s  # the provider's time starts with its first call
            timeout_s = (
                self._timeout_s if deadline is None else min(self._timeout_s, deadline - now)
            )
            if not self._breaker.allow(now):
                self._count("circuit_open")
                problem = "circuit breaker open after repeated provider failures"
            else:
                try:
                    async with asyncio.timeout(timeout_s):
                        result = await call()
                except TimeoutError:
                    self._failed("timeout")
                    problem = f"no answer within {timeout_s:.3g} s"
                except (ProviderError, OSError) as exc:
                    self._failed("error")
                    problem = f"provider error: {exc}"
                else:
                    self._breaker.record_success()
                    self._count("ok")
                    self._observe_breaker()
                    return result
            delay = self._policy.delay(attempt)
            if deadline is not None and (delay or 0.0) + self._clock() >= deadline:
                raise PaymentExpiredError(
                    f"not paid within {ttl_s:g} s of the first attempt: {problem} "
                    f"({attempt} attempts)"
                )
            if delay is None:
                raise PaymentUnavailableError(f"{problem} ({attempt} attempts)")
            await self._sleep(delay)

    async def _take_turn(self) -> None:
        """Wait for the provider's rate limit, if it has one."""
        if self._rate_limit is not None:
            wait_s = self._rate_limit.wait_s(self._clock())
            if wait_s > 0:
                await self._sleep(wait_s)

    def _failed(self, result: str) -> None:
        self._breaker.record_failure(self._clock())
        self._count(result)
        self._observe_breaker()

    def _count(self, result: str) -> None:
        if self._metrics is not None:
            self._metrics.payment_calls.labels(result).inc()

    def _observe_breaker(self) -> None:
        if self._metrics is not None:
            closed = self._breaker.state(self._clock()) is BreakerState.CLOSED
            self._metrics.breaker_open.set(0 if closed else 1)


def register_payment_agent(
    app: faust.App,
    settings: Settings,
    *,
    requests: faust.TopicT,
    results: faust.TopicT,
    dead_letters: Mapping[str, faust.TopicT],
    client: PaymentClient,
    metrics: LifecycleMetrics,
    producer: Callable[[], Awaitable[AIOKafkaProducer]],
) -> None:
    """Attach the payment agent to ``app``; it answers with ``producer`` (the order
    agent's plain aiokafka producer: a fifth of Faust's send cost per record)."""
    answers = Answers(results.get_topic_name(), producer)

    # One actor takes requests in order and hands each to a task of its own, up to
    # payment_concurrency at once: a slow charge holds a slot, never the partition.
    # Each request is acknowledged when its answer is sent, in whatever order they end;
    # Faust commits up to the first one not yet acknowledged, so a crash redelivers
    # only what was unanswered (the provider answers a repeated charge the same).
    @app.agent(requests, name="payment", concurrency=1)
    async def payment_agent(stream: faust.StreamT[bytes]) -> None:
        slots = asyncio.Semaphore(settings.payment_concurrency)
        running: set[asyncio.Task[None]] = set()

        async def answer(event: faust.EventT[bytes]) -> None:
            message = event.message
            try:
                await handle_traced(message, answers, dead_letters, client, metrics)
            except Exception as exc:
                # A bug, not the request's fault: parked with the reason, never lost.
                log.exception("payment request %s/%d@%d failed", *_where(message))
                reason = f"internal error: {exc!r}"
                await until_delivered(
                    "parking a payment request", lambda: dead_letter(dead_letters, message, reason)
                )
            try:
                event.ack()
            finally:
                slots.release()
                metrics.payments_waiting.dec()

        stream.enable_acks = False  # acknowledged by answer(), once answered
        async for event in stream.events():
            metrics.payments_waiting.inc()
            await slots.acquire()
            task = asyncio.ensure_future(answer(event))
            running.add(task)  # a reference, until it is done
            task.add_done_callback(running.discard)


@dataclass(frozen=True)
class Answers:
    """Where a charge's answer goes: the payment-results topic, through a producer."""

    topic: str
    producer: Callable[[], Awaitable[AIOKafkaProducer]]

    async def send(self, order_id: str, value: bytes) -> None:
        """Send the answer keyed by its order (the order agent's partition); wait for it."""
        producer = await self.producer()
        # It continues the order's trace (the payment span is current).
        sent = await producer.send(
            self.topic, value, key=order_id.encode(), headers=tracing.inject() or None
        )
        await sent


async def handle_traced(
    message: Any,
    results: Answers,
    dead_letters: Mapping[str, faust.TopicT],
    client: PaymentClient,
    metrics: LifecycleMetrics,
) -> None:
    """Answer one payment request in a span continuing the trace in its headers."""
    with tracing.consumer_span(
        tracing.PAYMENT_SPAN, message.headers, message.topic, message.partition, message.offset
    ):
        await _handle(message, results, dead_letters, client, metrics)


async def _handle(
    message: Any,
    results: Answers,
    dead_letters: Mapping[str, faust.TopicT],
    client: PaymentClient,
    metrics: LifecycleMetrics,
) -> None:
    try:
        request = decode(PaymentRequest, message.value)
    except InvalidMessageError as exc:
        metrics.order_dead_letters.labels(message.topic).inc()
        await dead_letter(dead_letters, message, exc.reason)
        return
    started = time.monotonic()
    tracing.set_attributes(
        {
            "orderstream.order_id": request.order_id,
            "orderstream.payment.action": request.action.value,
        }
    )
    if request.action is PaymentAction.REFUND:
        try:
            await client.refund(request.order_id)
        except PaymentUnavailableError as exc:
            # Parked with the reason, to be re-published once the provider is back:
            # a refund is never dropped silently.
            metrics.payments.labels("refund", "failed").inc()
            reason = f"refund failed: {exc}"
            await until_delivered(
                f"parking the refund of order {request.order_id}",
                lambda: dead_letter(dead_letters, message, reason),
            )
            return
        metrics.payments.labels("refund", "refunded").inc()
        log.info(
            "refunded order %s (%s/%d@%d)",
            request.order_id,
            *_where(message),
            extra=record_context(*_where(message), order_id=request.order_id),
        )
        return
    outcome = await client.charge(request.order_id, request.amount)
    value = outcome.model_dump_json().encode()

    # The charge is made: its answer must reach the order agent (a retried charge would
    # get the same answer from the provider, but only after a redelivery).
    await until_delivered(
        f"answering the charge of order {request.order_id}",
        lambda: results.send(request.order_id, value),
    )
    label = "paid" if outcome.paid else "declined"
    if outcome.reason is RejectReason.PAYMENT_UNAVAILABLE:
        label = "unavailable"
    metrics.payments.labels("charge", label).inc()
    metrics.payment_seconds.observe(time.monotonic() - started)
    log.debug(
        "order %s: %s (%s/%d@%d)",
        request.order_id,
        label,
        *_where(message),
        extra=record_context(*_where(message), order_id=request.order_id),
    )


def _where(message: Any) -> tuple[str, int, int]:
    return message.topic, message.partition, message.offset
