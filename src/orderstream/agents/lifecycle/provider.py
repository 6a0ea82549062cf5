"""The payment provider behind a small Protocol, and the mock that stands in for one."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

from orderstream.errors import OrderstreamError


class ProviderError(OrderstreamError):
    """The provider did not answer (an outage, a network error): the call may be retried."""

    retriable = True


class PaymentProvider(Protocol):
    """A payment provider, idempotent by order id.

    A charge repeated for the same order (a retry, a redelivery) never charges twice: it
    answers what the first charge decided. A refund repeated changes nothing more.
    """

    async def charge(self, order_id: str, amount: Decimal) -> bool:
        """Charge ``amount`` for ``order_id``; return whether it was paid.

        Raise ProviderError when the provider cannot answer now.
        """
        ...

    async def refund(self, order_id: str) -> None:
        """Give back what ``order_id`` paid, if anything; raise ProviderError if not now."""
        ...


@dataclass
class MockCharge:
    """What the mock remembers of one order: its charge's outcome, and if refunded."""

    amount: Decimal
    paid: bool
    refunded: bool = False


class MockPaymentProvider:
    """A provider that pays ``success_rate`` of charges after a random delay.

    It keeps every charge's outcome by order id, so that a retried charge gets the first
    one's answer (and is never charged twice). ``error_rate`` of calls raise
    ProviderError instead of answering, as an outage would. The memory is the process's:
    a restarted mock has forgotten, as a real provider would not.
    """

    def __init__(
        self,
        success_rate: float,
        delay_s: tuple[float, float] = (0.1, 0.5),
        error_rate: float = 0.0,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._success_rate = success_rate
        self._delay = (min(delay_s), max(delay_s))
        self._error_rate = error_rate
        self._rng = rng or random.Random()  # noqa: S311 - a simulation, not security
        self._sleep = sleep
        self.charges: dict[str, MockCharge] = {}
        self.calls = 0

    async def charge(self, order_id: str, amount: Decimal) -> bool:
        self.calls += 1
        self._maybe_fail()
        charge = self.charges.get(order_id)
        if charge is None:
            # Decided and remembered before the delay: a caller that times out and
            # retries gets this answer, not a second charge.
            paid = self._rng.random() < self._success_rate
            charge = self.charges[order_id] = MockCharge(amount, paid)
        await self._sleep(self._rng.uniform(*self._delay))
        return charge.paid

    async def refund(self, order_id: str) -> None:
        self.calls += 1
        self._maybe_fail()
        charge = self.charges.get(order_id)
        if charge is not None and charge.paid:
            charge.refunded = True
        await self._sleep(self._rng.uniform(*self._delay))

    def _maybe_fail(self) -> None:
        if self._error_rate and self._rng.random() < self._error_rate:
            raise ProviderError("mock provider: simulated outage")
