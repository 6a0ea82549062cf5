"""The door as several processes on one port (issue 20): each answers, each publishes,
each /readyz shows `orderstream run`'s roles, and stopping one leaves the other serving."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.integration.invariants import assert_invariants
from tests.integration.pipeline import Pipeline

pytestmark = pytest.mark.integration

PRODUCT = "sku-door"
STOCK = 100  # more than the orders: every one is published, none refused at the door
ROLES = {"stock-agent", "sink", "status-service", "status-service-2"}


async def _fresh(method: str, url: str, **kwargs: Any) -> tuple[int, Any]:
    """One request on a connection of its own: the kernel picks the process anew."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with (
        aiohttp.ClientSession(connector=connector) as http,
        http.request(method, url, **kwargs) as response,
    ):
        return response.status, await response.json()


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return True
    return state in {"Z", "X"}


async def test_two_intake_processes_both_serve_and_one_survives_the_other(
    pipeline: Pipeline,
) -> None:
    pipeline.settings = pipeline.settings.model_copy(update={"http_processes": 2})
    run = pipeline.start()
    await pipeline.set_stock(PRODUCT, STOCK)
    await pipeline.wait_for_stock(PRODUCT, STOCK)
    base = await pipeline.wait_for_status_service()

    # Both processes answer on the port, each with run's roles, all running.
    seen: dict[int, dict[str, Any]] = {}

    async def both_answered() -> bool:
        status, body = await _fresh("GET", f"{base}/readyz")
        if status == 200:
            seen[body["process"]] = body
        return len(seen) == 2

    await pipeline.wait_for("both intake processes to answer /readyz", both_answered)
    assert run.pid in seen, seen
    for body in seen.values():
        assert set(body["roles"]) == ROLES, body
        assert set(body["roles"].values()) == {"running"}, body
    [child] = [pid for pid in seen if pid != run.pid]

    accepted: set[str] = set()

    async def post(order_id: str) -> None:
        order = {"order_id": order_id, "user_id": order_id, "product_id": PRODUCT, "quantity": 1}
        status, body = await _fresh("POST", f"{base}/orders", json=order)
        assert status == 202, body
        accepted.add(order_id)

    for n in range(20):
        await post(f"both-{n}")

    # The second process stops (as an operator or the kernel would stop it): the first
    # serves every new connection meanwhile.
    os.kill(child, signal.SIGTERM)

    async def child_gone() -> bool:
        return _gone(child)

    await pipeline.wait_for("the second intake process to exit", child_gone)
    for n in range(20):
        await post(f"one-{n}")
    assert pipeline.alive(), pipeline.logs()

    await pipeline.wait_for_orders(len(accepted))
    await assert_invariants(pipeline, {PRODUCT: STOCK}, accepted)


async def test_serve_alone_runs_its_processes_each_with_its_own_checks(
    pipeline: Pipeline,
) -> None:
    pipeline.start("worker")
    pipeline.start("sink")
    serve = pipeline.start("serve", ORDERSTREAM_HTTP_PROCESSES="2")
    await pipeline.set_stock(PRODUCT, STOCK)
    await pipeline.wait_for_stock(PRODUCT, STOCK, timeout=120)
    base = await pipeline.wait_for_status_service()
    seen: dict[int, dict[str, Any]] = {}

    async def both_answered() -> bool:
        status, body = await _fresh("GET", f"{base}/readyz")
        if status == 200:
            seen[body["process"]] = body
        return len(seen) == 2

    await pipeline.wait_for("both serve processes to answer /readyz", both_answered, watch="serve")
    assert serve.pid in seen, seen
    assert all("roles" not in body for body in seen.values()), seen  # alone: no roles

    accepted: set[str] = set()
    for n in range(10):
        order = {"order_id": f"s-{n}", "user_id": f"s-{n}", "product_id": PRODUCT, "quantity": 1}
        status, body = await _fresh("POST", f"{base}/orders", json=order)
        assert status == 202, body
        accepted.add(f"s-{n}")
    await pipeline.wait_for_orders(len(accepted))
    await assert_invariants(pipeline, {PRODUCT: STOCK}, accepted)
