"""`orderstream run`: one failing role is restarted alone, named by /readyz; SIGTERM is bounded.

Every failure here is one that happens in operation: another application in the sink's
consumer group, the HTTP port still held by another process, PostgreSQL unreachable.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import time
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.coordinator.assignors.range import RangePartitionAssignor

from tests.integration.pipeline import Pipeline, request_json

pytestmark = pytest.mark.integration

PRODUCT = "sku-roles"
ROLES = ("stock-agent", "sink", "status-service")


async def get_json(pipeline: Pipeline, path: str) -> tuple[int, Any]:
    """GET a path of the status service; (0, None) while nothing answers."""
    url = f"http://127.0.0.1:{pipeline.settings.http_port}{path}"
    try:
        async with aiohttp.ClientSession() as http, http.get(url) as response:
            return response.status, await response.json()
    except aiohttp.ClientError:
        return 0, None


async def wait_until_ready(pipeline: Pipeline) -> dict[str, Any]:
    answer: dict[str, Any] = {}

    async def ready() -> bool:
        status, body = await get_json(pipeline, "/readyz")
        answer.update(body or {})
        return status == 200

    await pipeline.wait_for("/readyz to answer 200", ready, timeout=120)
    return answer


async def test_a_failing_sink_is_restarted_alone_and_named_by_readyz(pipeline: Pipeline) -> None:
    # Another application consumes in the sink's group with another partition assignor
    # (two deployments sharing a group id): the broker refuses the sink's join with
    # InconsistentGroupProtocol. The sink cannot absorb that; it fails until the
    # intruder leaves.
    intruder = AIOKafkaConsumer(
        pipeline.topic("order-events"),
        bootstrap_servers=pipeline.settings.kafka_bootstrap,
        group_id=pipeline.settings.sink_group,
        partition_assignment_strategy=(RangePartitionAssignor,),
        enable_auto_commit=False,
    )
    await intruder.start()  # returns once it holds the group's partitions
    try:
        pipeline.start()
        readyz: dict[str, Any] = {}

        async def only_the_sink_fails() -> bool:
            status, body = await get_json(pipeline, "/readyz")
            readyz.update(body or {})
            roles = readyz.get("roles", {})
            others = [roles.get(role) for role in ROLES if role != "sink"]
            sink_failing = "InconsistentGroupProtocolError" in roles.get("sink", "")
            return status == 503 and others == ["running", "running"] and sink_failing

        await pipeline.wait_for("/readyz to name the sink alone", only_the_sink_fails, timeout=90)
        assert readyz["ready"] is False
        assert readyz["checks"] == {"postgres": "ok", "kafka": "ok"}
        sink = readyz["roles"]["sink"]
        assert sink.startswith(("restarting", "starting (attempt")), sink

        # Meanwhile the stock agent decides: its decisions reach Kafka, not PostgreSQL.
        orders = {f"r-{i}" for i in range(5)}
        await pipeline.set_stock(PRODUCT, 3)
        await pipeline.publish(
            [(PRODUCT.encode(), request_json(order, "u", PRODUCT)) for order in sorted(orders)]
        )

        async def decided() -> bool:
            events = await pipeline.read_topic("order-events")
            return {record.key.decode() for record in events} >= orders

        await pipeline.wait_for("the stock agent to decide every order", decided, timeout=120)
        assert await pipeline.count("SELECT count(*) FROM orders") == 0
        assert (await get_json(pipeline, "/healthz"))[0] == 200
    finally:
        await intruder.stop()

    # The intruder gone, the sink's next attempt joins the group and catches up.
    await pipeline.wait_for_orders(len(orders))
    answer = await wait_until_ready(pipeline)
    assert answer["roles"] == dict.fromkeys(ROLES, "running")
    assert pipeline.alive(), pipeline.logs()
    assert "role sink failed to start" in pipeline.logs()


async def test_status_service_retries_a_taken_port_while_the_others_work(
    pipeline: Pipeline,
) -> None:
    # The HTTP port is still held by another process (say, the previous instance).
    holder = socket.socket()
    holder.bind(("127.0.0.1", pipeline.settings.http_port))
    holder.listen()
    try:
        pipeline.start()
        await pipeline.set_stock(PRODUCT, 2)
        await pipeline.wait_for_stock(PRODUCT, 2)  # stock agent, then sink, into PostgreSQL
        await pipeline.publish([(PRODUCT.encode(), request_json("p-1", "u", PRODUCT))])
        await pipeline.wait_for_orders(1)

        async def named_in_log() -> bool:
            return "role status-service failed to start" in pipeline.logs()

        await pipeline.wait_for("the status service's failure in the log", named_in_log)
        assert "address already in use" in pipeline.logs()
    finally:
        holder.close()

    answer = await wait_until_ready(pipeline)
    assert answer["roles"] == dict.fromkeys(ROLES, "running")
    status, order = await get_json(pipeline, "/orders/p-1")
    assert status == 200
    assert order["status"] == "RESERVED"


async def test_sigterm_ends_run_within_30s_while_postgres_is_unreachable(
    pipeline: Pipeline,
) -> None:
    # Nothing listens on port 1: the sink's start waits for a connection that never comes.
    unreachable = "postgresql://orderstream:orderstream@127.0.0.1:1/orderstream"
    process = pipeline.start(ORDERSTREAM_DATABASE_URL=unreachable)
    readyz: dict[str, Any] = {}

    async def serving() -> bool:
        status, body = await get_json(pipeline, "/readyz")
        readyz.update(body or {})
        return status == 503 and readyz.get("roles", {}).get("stock-agent") == "running"

    await pipeline.wait_for("the stock agent and the status service", serving, timeout=90)
    assert readyz["checks"]["postgres"].startswith("failed")
    # Never the connection's details (host, port, user) to whoever asks: the log has them.
    said = json.dumps(readyz)
    assert "127.0.0.1" not in said, said
    assert "orderstream:orderstream" not in said, said
    assert readyz["roles"]["sink"] != "running"  # its start waits for a connection

    pipeline.processes.pop("run")
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        code = await asyncio.to_thread(process.wait, 30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        pytest.fail(f"orderstream run still running 30 s after SIGTERM\n{pipeline.logs()}")
    assert code == 0, pipeline.logs()
    assert time.monotonic() - started < 30
