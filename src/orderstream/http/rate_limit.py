"""Rate limits at the door: token buckets per user and per client address, in this process.

A flash sale is where a bot with a loop takes a drop before the people do. POST /orders
is limited per user (its ``user_id``), and, when set, every request per client address
(the connection's peer, or the X-Forwarded-For entry the configured proxies vouch for).
Past a limit the answer is 429 with ``Retry-After`` (whole seconds) and a JSON reason.
Each service process limits alone: N processes let N times the rate through; a global
limit belongs in front of them (the proxy or gateway).

Memory stays flat however many users come: at most ``max_keys`` buckets, the least
recently used dropped first (a dropped bucket comes back full, as an idle one would be).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable

from aiohttp import web
from aiohttp.typedefs import Handler

from orderstream.http.encoding import JSON, error_body
from orderstream.http.keys import METRICS, SETTINGS

__all__ = ["RateLimiter", "client_address", "limit_user", "rate_limits"]

MAX_KEYS = 100_000
# Never limited: what monitoring and the curious read.
_UNLIMITED_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"})


class RateLimiter:
    """Token buckets by key: ``rate_per_s`` tokens a second, at most ``burst`` saved."""

    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        max_keys: int = MAX_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rate, self._burst, self._max_keys, self._clock = rate_per_s, burst, max_keys, clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, when

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str) -> float:
        """Take a token for ``key``: 0.0 if there was one, else the seconds until there is."""
        now = self._clock()
        tokens, at = self._buckets.pop(key, (float(self._burst), now))
        tokens = min(float(self._burst), tokens + (now - at) * self._rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self._rate
        self._buckets[key] = (tokens, now)  # the most recently used, last
        if len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
        return wait


USER_LIMITER = web.AppKey("user_limiter", RateLimiter)
ADDRESS_LIMITER = web.AppKey("address_limiter", RateLimiter)


def install(app: web.Application) -> None:
    """Give ``app`` the limiters its settings ask for (a rate of 0 is no limit)."""
    settings = app[SETTINGS]
    if settings.rate_limit_user_per_s > 0:
        app[USER_LIMITER] = RateLimiter(
            settings.rate_limit_user_per_s, settings.rate_limit_user_burst
        )
    if settings.rate_limit_address_per_s > 0:
        app[ADDRESS_LIMITER] = RateLimiter(
            settings.rate_limit_address_per_s, settings.rate_limit_address_burst
        )
        # Only then: a middleware costs every request a call, limited or not.
        app.middlewares.append(rate_limits)


def client_address(request: web.Request, trusted_proxies: int) -> str:
    """Return the client's address: the peer's, or behind ``trusted_proxies`` proxies that
    each append to X-Forwarded-For, the entry the nearest of them vouches for."""
    peer = request.remote or ""
    if trusted_proxies <= 0:
        return peer
    forwarded = [
        hop.strip()
        for header in request.headers.getall("X-Forwarded-For", [])
        for hop in header.split(",")
        if hop.strip()
    ]
    if len(forwarded) < trusted_proxies:
        return peer  # not from behind the proxies we were told of: the peer it is
    return forwarded[-trusted_proxies][:64]


def _too_many(request: web.Request, limit: str, wait_s: float, what: str) -> web.HTTPException:
    request.app[METRICS].rate_limited.labels(limit).inc()
    retry_after = max(1, math.ceil(wait_s))
    body = error_body(f"too many requests {what}: retry after {retry_after} s")
    return web.HTTPTooManyRequests(
        text=body.model_dump_json(),
        content_type=JSON,
        headers={"Retry-After": str(retry_after)},
    )


@web.middleware
async def rate_limits(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse a client address past its rate (429), when an address limit is set."""
    limiter = request.app.get(ADDRESS_LIMITER)
    if limiter is not None and request.path not in _UNLIMITED_PATHS:
        address = client_address(request, request.app[SETTINGS].trusted_proxies)
        wait = limiter.take(address)
        if wait:
            raise _too_many(request, "address", wait, "from this address")
    return await handler(request)


def limit_user(request: web.Request, user_id: str) -> None:
    """Raise 429 if ``user_id`` is past its rate of orders, when a user limit is set."""
    limiter = request.app.get(USER_LIMITER)
    if limiter is not None:
        wait = limiter.take(user_id)
        if wait:
            raise _too_many(request, "user", wait, "for this user")
