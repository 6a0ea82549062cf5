"""The payment agent's rules without Kafka: retry policy, circuit breaker, mock, client."""

from __future__ import annotations

import asyncio
import random

import pytest

from orderstream.agents.lifecycle.payment import PaymentClient, PaymentUnavailableError
from orderstream.agents.lifecycle.provider import MockPaymentProvider, ProviderError
from orderstream.agents.lifecycle.resilience import BreakerState, CircuitBreaker, RetryPolicy
from orderstream.domain import RejectReason


class FakeClock:
    """A clock that moves only when slept on."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class ScriptedProvider:
    """A provider that fails a given number of times, then answers ``paid``."""

    def __init__(self, failures: int, paid: bool = True, hang: bool = False) -> None:
        self.failures = failures
        self.paid = paid
        self.hang = hang
        self.calls = 0
        self.refunds = 0

    async def charge(self, order_id: str, amount: int) -> bool:
        self.calls += 1
        if self.calls <= self.failures:
            raise ProviderError("down")
        return self.paid

    async def refund(self, order_id: str) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise ProviderError("down")
        self.refunds += 1


async def _no_sleep(seconds: float) -> None:
    return None


# --- retry policy --------------------------------------------------------------------


def test_retry_delays_double_up_to_the_cap_and_stop_at_the_last_attempt() -> None:
    policy = RetryPolicy(attempts=6, first_delay_s=0.2, max_delay_s=1.0)
    assert [policy.delay(n) for n in range(1, 7)] == [0.2, 0.4, 0.8, 1.0, 1.0, None]


def test_retry_policy_with_one_attempt_never_retries() -> None:
    assert RetryPolicy(attempts=1).delay(1) is None


def test_retry_policy_survives_huge_attempt_counts() -> None:
    assert RetryPolicy(attempts=10**6, max_delay_s=3.0).delay(10**5) == 3.0


@pytest.mark.parametrize("kwargs", [{"attempts": 0}, {"first_delay_s": -1.0}, {"multiplier": 0.5}])
def test_retry_policy_refuses_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must"):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


# --- circuit breaker -----------------------------------------------------------------


def test_breaker_opens_after_consecutive_failures_only() -> None:
    breaker = CircuitBreaker(failure_threshold=3, open_s=10.0)
    breaker.record_failure(0.0)
    breaker.record_failure(0.0)
    breaker.record_success()  # the run of failures is broken
    breaker.record_failure(1.0)
    breaker.record_failure(1.0)
    assert breaker.allow(1.0)
    breaker.record_failure(1.0)
    assert breaker.state(1.0) is BreakerState.OPEN
    assert not breaker.allow(10.9)
    assert breaker.seconds_until_trial(5.0) == pytest.approx(6.0)


def test_half_open_breaker_lets_one_trial_through_and_its_result_decides() -> None:
    breaker = CircuitBreaker(failure_threshold=1, open_s=5.0)
    breaker.record_failure(0.0)
    assert breaker.state(5.0) is BreakerState.HALF_OPEN
    assert breaker.allow(5.0)
    assert not breaker.allow(5.0)  # one trial at a time
    breaker.record_failure(6.0)  # the trial failed: open for another period
    assert breaker.state(10.9) is BreakerState.OPEN
    assert breaker.allow(11.0)
    breaker.record_success()
    assert breaker.state(11.0) is BreakerState.CLOSED
    assert breaker.allow(11.0)
    assert breaker.allow(11.0)


# --- mock provider -------------------------------------------------------------------


async def test_mock_provider_never_charges_an_order_twice() -> None:
    provider = MockPaymentProvider(0.5, (0.0, 0.0), rng=random.Random(7), sleep=_no_sleep)
    first = {f"o-{i}": await provider.charge(f"o-{i}", 1) for i in range(200)}
    again = {order_id: await provider.charge(order_id, 1) for order_id in first}
    assert again == first
    assert len(provider.charges) == 200
    assert 60 < sum(first.values()) < 140  # about half paid


async def test_mock_provider_refunds_a_paid_charge_once_and_nothing_else() -> None:
    provider = MockPaymentProvider(1.0, (0.0, 0.0), sleep=_no_sleep)
    assert await provider.charge("o-1", 3)
    await provider.refund("o-1")
    await provider.refund("o-1")
    await provider.refund("never-charged")
    assert provider.charges["o-1"].refunded
    assert "never-charged" not in provider.charges


async def test_mock_provider_outage_is_retriable_and_decides_nothing() -> None:
    provider = MockPaymentProvider(1.0, (0.0, 0.0), error_rate=1.0, sleep=_no_sleep)
    with pytest.raises(ProviderError) as raised:
        await provider.charge("o-1", 1)
    assert raised.value.retriable
    assert provider.charges == {}


# --- client: retries, breaker, unavailability ------------------------------------------


def _client(provider: object, clock: FakeClock, attempts: int = 4) -> PaymentClient:
    return PaymentClient(
        provider,  # type: ignore[arg-type]
        policy=RetryPolicy(attempts=attempts, first_delay_s=0.1, max_delay_s=1.0),
        breaker=CircuitBreaker(failure_threshold=3, open_s=30.0),
        timeout_s=1.0,
        clock=clock,
        sleep=clock.sleep,
    )


async def test_client_retries_provider_errors_with_backoff() -> None:
    clock = FakeClock()
    provider = ScriptedProvider(failures=2)
    outcome = await _client(provider, clock).charge("o-1", 1)
    assert outcome.paid
    assert provider.calls == 3
    assert clock.slept == [0.1, 0.2]


async def test_client_reports_a_declined_charge_as_payment_failed() -> None:
    outcome = await _client(ScriptedProvider(failures=0, paid=False), FakeClock()).charge("o", 1)
    assert (outcome.paid, outcome.reason) == (False, RejectReason.PAYMENT_FAILED)


async def test_client_gives_up_as_payment_unavailable_and_the_breaker_stops_calls() -> None:
    clock = FakeClock()
    provider = ScriptedProvider(failures=100)
    client = _client(provider, clock, attempts=5)
    outcome = await client.charge("o-1", 1)
    assert (outcome.paid, outcome.reason) == (False, RejectReason.PAYMENT_UNAVAILABLE)
    assert "5 attempts" in (outcome.detail or "")
    # Three failures opened the breaker: attempts 4 and 5 never reached the provider.
    assert provider.calls == 3
    # While it is open, a new charge fails without a call.
    await client.charge("o-2", 1)
    assert provider.calls == 3


async def test_client_times_out_a_hanging_provider() -> None:
    class Hanging:
        calls = 0

        async def charge(self, order_id: str, amount: int) -> bool:
            self.calls += 1
            await asyncio.sleep(60)
            return True

        async def refund(self, order_id: str) -> None:
            return None

    provider = Hanging()
    client = PaymentClient(
        provider,
        policy=RetryPolicy(attempts=2, first_delay_s=0.0),
        breaker=CircuitBreaker(failure_threshold=5, open_s=1.0),
        timeout_s=0.05,
    )
    outcome = await client.charge("o-1", 1)
    assert outcome.reason is RejectReason.PAYMENT_UNAVAILABLE
    assert provider.calls == 2


async def test_client_refund_raises_when_the_provider_stays_down() -> None:
    clock = FakeClock()
    with pytest.raises(PaymentUnavailableError):
        await _client(ScriptedProvider(failures=100), clock).refund("o-1")
    provider = ScriptedProvider(failures=1)
    await _client(provider, clock).refund("o-1")
    assert provider.refunds == 1
