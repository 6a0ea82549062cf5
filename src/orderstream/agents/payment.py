"""The payment agent: charges and refunds at the provider, answers on ``payment-results``.

No table, and many requests at once (``payment_concurrency`` actors): a slow payment
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
from decimal import Decimal
from typing import Any, TypeVar

import faust

from orderstream import tracing
from orderstream.agents.faust_io import dead_letter, delivered, send, until_delivered
from orderstream.agents.provider import PaymentProvider, ProviderError
from orderstream.agents.resilience import BreakerState, CircuitBreaker, RetryPolicy
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


class PaymentClient:
    """Call the provider with a timeout, retries with backoff, and a circuit breaker."""

    def __init__(
        self,
        provider: PaymentProvider,
        *,
        policy: RetryPolicy,
        breaker: CircuitBreaker,
        timeout_s: float,
        metrics: LifecycleMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._provider = provider
        self._policy = policy
        self._breaker = breaker
        self._timeout_s = timeout_s
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
            metrics=metrics,
        )

    async def charge(self, order_id: str, amount: Decimal) -> PaymentOutcome:
        """Charge an order; a provider out of reach gives not paid, PAYMENT_UNAVAILABLE."""
        try:
            paid = await self._call(lambda: self._provider.charge(order_id, amount))
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

    async def _call(self, call: Callable[[], Awaitable[T]]) -> T:
        attempt = 0
        while True:
            attempt += 1
            if not self._breaker.allow(self._clock()):
                self._count("circuit_open")
                problem = "circuit breaker open after repeated provider failures"
            else:
                try:
                    async with asyncio.timeout(self._timeout_s):
                        result = await call()
                except TimeoutError:
                    self._failed("timeout")
                    problem = f"no answer within {self._timeout_s} s"
                except (ProviderError, OSError) as exc:
                    self._failed("error")
                    problem = f"provider error: {exc}"
                else:
                    self._breaker.record_success()
                    self._count("ok")
                    self._observe_breaker()
                    return result
            delay = self._policy.delay(attempt)
            if delay is None:
                raise PaymentUnavailableError(f"{problem} ({attempt} attempts)")
            await self._sleep(delay)

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
) -> None:
    """Attach the payment agent to ``app``."""

    # Concurrency: each actor waits on the provider for one request at a time.
    @app.agent(requests, name="payment", concurrency=settings.payment_concurrency)
    async def payment_agent(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            await handle_traced(event.message, results, dead_letters, client, metrics)


async def handle_traced(
    message: Any,
    results: faust.TopicT,
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
    results: faust.TopicT,
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

    async def answer() -> None:
        # The answer continues the order's trace (this agent's span is current).
        await delivered([await send(results, request.order_id, value, tracing.inject())])

    # The charge is made: its answer must reach the order agent (a retried charge would
    # get the same answer from the provider, but only after a redelivery).
    await until_delivered(f"answering the charge of order {request.order_id}", answer)
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
