"""The door's token buckets: the rate, the burst, bounded memory, the client's address."""

from __future__ import annotations

from aiohttp.test_utils import make_mocked_request

from orderstream.http.rate_limit import RateLimiter, client_address


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_key_gets_its_burst_then_its_rate_and_says_how_long_to_wait() -> None:
    clock = Clock()
    limiter = RateLimiter(rate_per_s=5, burst=10, clock=clock)
    assert [limiter.take("bot") for _ in range(10)] == [0.0] * 10
    assert limiter.take("bot") == 0.2  # one token comes back in 1/5 s
    assert limiter.take("someone else") == 0.0  # each key its own bucket
    clock.now += 0.2
    assert limiter.take("bot") == 0.0
    assert limiter.take("bot") > 0
    clock.now += 60  # idle: back to a full burst, never more
    assert [limiter.take("bot") for _ in range(10)] == [0.0] * 10
    assert limiter.take("bot") > 0


def test_memory_stays_flat_under_100000_distinct_users() -> None:
    limiter = RateLimiter(rate_per_s=5, burst=10, max_keys=1_000, clock=Clock())
    for n in range(100_000):
        assert limiter.take(f"user-{n}") == 0.0
    assert len(limiter) == 1_000
    # The most recent are kept: one of them is still limited by what it spent.
    for _ in range(9):
        limiter.take("user-99999")
    assert limiter.take("user-99999") > 0


def test_the_client_address_is_the_peer_unless_proxies_are_trusted() -> None:
    forwarded = {"X-Forwarded-For": "6.6.6.6, 1.2.3.4", "Host": "x"}
    request = make_mocked_request("POST", "/orders", headers=forwarded)
    peer = request.remote or ""
    assert client_address(request, 0) == peer  # a header anyone can write counts for nothing
    assert client_address(request, 1) == "1.2.3.4"  # what our one proxy saw
    assert client_address(request, 2) == "6.6.6.6"
    assert client_address(request, 3) == peer  # fewer hops than proxies: not via them
