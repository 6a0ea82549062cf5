"""Rate limits at the door, on the real service (issue 17): a bot past its rate gets 429
with Retry-After while others are served; what was accepted is decided, once."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from tests.integration.invariants import assert_invariants
from tests.integration.pipeline import Pipeline

pytestmark = pytest.mark.integration

PRODUCT = "sku-limited"
STOCK = 100


async def _post(
    http: aiohttp.ClientSession, base: str, order_id: str, user: str, **headers: str
) -> tuple[int, str | None, Any]:
    body = {"order_id": order_id, "user_id": user, "product_id": PRODUCT, "quantity": 1}
    async with http.post(f"{base}/orders", json=body, headers=headers) as response:
        return response.status, response.headers.get("Retry-After"), await response.json()


async def test_a_user_and_an_address_past_their_rates_get_429_and_others_are_served(
    pipeline: Pipeline,
) -> None:
    pipeline.start(
        ORDERSTREAM_RATE_LIMIT_USER_PER_S="0.2",  # a token every 5 s: none comes back mid-test
        ORDERSTREAM_RATE_LIMIT_USER_BURST="5",
        ORDERSTREAM_RATE_LIMIT_ADDRESS_PER_S="0.2",
        ORDERSTREAM_RATE_LIMIT_ADDRESS_BURST="8",
        ORDERSTREAM_TRUSTED_PROXIES="1",
    )
    await pipeline.set_stock(PRODUCT, STOCK)
    await pipeline.wait_for_stock(PRODUCT, STOCK)
    base = await pipeline.wait_for_status_service()
    accepted: set[str] = set()
    async with aiohttp.ClientSession() as http:
        # One user, many addresses: 5 pass (its burst), the rest wait.
        answers = [
            await _post(http, base, f"bot-{n}", "bot", **{"X-Forwarded-For": f"10.0.0.{n}"})
            for n in range(12)
        ]
        assert [status for status, _, _ in answers] == [202] * 5 + [429] * 7, answers
        _, retry_after, body = answers[-1]
        assert retry_after is not None
        assert int(retry_after) >= 1
        assert body["error"].startswith("too many requests for this user"), body
        accepted |= {f"bot-{n}" for n in range(5)}
        # Another user is served meanwhile.
        status, _, _ = await _post(
            http, base, "human-0", "human", **{"X-Forwarded-For": "10.1.0.1"}
        )
        assert status == 202
        accepted.add("human-0")
        # One address (as our proxy saw it), many users: 8 pass, then 429.
        answers = [
            await _post(http, base, f"crowd-{n}", f"u-{n}", **{"X-Forwarded-For": "10.9.9.9"})
            for n in range(10)
        ]
        assert [status for status, _, _ in answers] == [202] * 8 + [429] * 2, answers
        assert answers[-1][2]["error"].startswith("too many requests from this address")
        accepted |= {f"crowd-{n}" for n in range(8)}
        # Health and metrics are never limited, and the refusals are counted.
        for _ in range(20):
            async with http.get(f"{base}/healthz", headers={"X-Forwarded-For": "10.9.9.9"}) as r:
                assert r.status == 200
        async with http.get(f"{base}/metrics") as response:
            metrics = await response.text()
        assert 'orderstream_rate_limited_total{limit="user"} 7.0' in metrics
        assert 'orderstream_rate_limited_total{limit="address"} 2.0' in metrics

    await pipeline.wait_for_orders(len(accepted))
    await asyncio.sleep(1)  # a refused order would show by now: none may
    await assert_invariants(pipeline, {PRODUCT: STOCK}, accepted)
