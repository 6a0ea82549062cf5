"""How the payment agent treats a flaky provider: retry with backoff, and a circuit breaker.

Both are plain classes with the clock passed in, so their rules are unit-tested without
sleeping.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


@dataclass(frozen=True)
class RetryPolicy:
    """How many attempts a call gets, and how long to wait after each failed one."""

    attempts: int = 5
    first_delay_s: float = 0.2
    max_delay_s: float = 5.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {self.attempts}")
        if self.first_delay_s < 0 or self.max_delay_s < 0 or self.multiplier < 1:
            raise ValueError("delays must not be negative, nor the multiplier below 1")

    def delay(self, failed_attempt: int) -> float | None:
        """Return the wait after attempt ``failed_attempt`` (1, 2, ...) failed; None: give up."""
        if failed_attempt < 1:
            raise ValueError(f"attempts count from 1, got {failed_attempt}")
        if failed_attempt >= self.attempts:
            return None
        # The exponent is capped: past it the delay is max_delay_s anyway, and a huge
        # power would overflow a float.
        exponent = min(failed_attempt - 1, 64)
        return min(self.first_delay_s * self.multiplier**exponent, self.max_delay_s)


class BreakerState(StrEnum):
    """Where a circuit breaker stands."""

    CLOSED = "closed"  # calls go through
    OPEN = "open"  # calls fail at once, until the open period ends
    HALF_OPEN = "half_open"  # one trial call goes through; its result decides


class CircuitBreaker:
    """Stop calling a dependency after ``failure_threshold`` failures in a row.

    Open, it refuses calls for ``open_s``; then it lets one trial call through (half
    open): a success closes it, a failure opens it again for another ``open_s``. Times
    are seconds of any monotonic clock, passed in by the caller.
    """

    def __init__(self, failure_threshold: int, open_s: float) -> None:
        if failure_threshold < 1 or open_s <= 0:
            raise ValueError("failure_threshold must be at least 1 and open_s positive")
        self._threshold = failure_threshold
        self._open_s = open_s
        self._failures = 0  # in a row
        self._opened_at: float | None = None  # None: closed
        self._trial_in_flight = False

    def state(self, now: float) -> BreakerState:
        """Return the breaker's state at ``now``."""
        if self._opened_at is None:
            return BreakerState.CLOSED
        if now - self._opened_at < self._open_s:
            return BreakerState.OPEN
        return BreakerState.HALF_OPEN

    def allow(self, now: float) -> bool:
        """Return whether a call may go through at ``now``; a half-open breaker lets one."""
        state = self.state(now)
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.OPEN or self._trial_in_flight:
            return False
        self._trial_in_flight = True
        return True

    def record_success(self) -> None:
        """Close the breaker: the dependency answers."""
        self._failures = 0
        self._opened_at = None
        self._trial_in_flight = False

    def record_failure(self, now: float) -> None:
        """Count a failed call; open the breaker at the threshold, or after a failed trial."""
        self._failures += 1
        if self._trial_in_flight or self._failures >= self._threshold:
            self._opened_at = now
        self._trial_in_flight = False

    def seconds_until_trial(self, now: float) -> float:
        """Return how long until a trial call may go through (0 when one may now)."""
        if self._opened_at is None:
            return 0.0
        return max(0.0, self._opened_at + self._open_s - now)


class TokenBucket:
    """Let calls through at ``rate_per_s`` on average, in bursts of up to ``burst``.

    ``wait_s`` takes a token and says how long the caller must wait before its call:
    the tokens are handed out in order, so waiting callers are served first come, first
    served, and the rate holds however many wait at once.
    """

    def __init__(self, rate_per_s: float, burst: float, now: float) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("rate_per_s must be positive and burst at least 1")
        self._rate = rate_per_s
        self._burst = burst
        self._tokens = burst
        self._at = now

    def wait_s(self, now: float) -> float:
        """Take a token at ``now``; return how long to wait until it is due (0: at once)."""
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        self._tokens -= 1  # may go negative: the debt is what later callers wait for
        return 0.0 if self._tokens >= 0 else -self._tokens / self._rate
