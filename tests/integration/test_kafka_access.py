"""Kafka access with SASL/SCRAM and ACLs (deploy/kafka-access): shops may write
order-requests only; orderstream, with its own principal, runs the whole pipeline.

A second broker of the local stack's jars, on ports of its own, formatted with three
SCRAM users and the ACLs of deploy/kafka-access/acls.sh. A shop's producer that can
write payment-results or stock-commands could confirm orders and set prices: it is
refused there, and its order is decided and paid as any other.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from pydantic import SecretStr

from orderstream.producer import publish_stock_command
from orderstream.settings import Settings
from tests.integration.conftest import deployed
from tests.integration.pipeline import REPO, Pipeline

pytestmark = pytest.mark.integration

ACCESS = REPO / "deploy" / "kafka-access"
LIB = REPO / ".stack" / "kafka" / "lib"
PASSWORDS = {"admin": "admin-secret", "orderstream": "orderstream-secret", "shop": "shop-secret"}
PRODUCT = "sku-sasl"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _java(*args: str) -> list[str]:
    log4j = REPO / ".stack" / "kafka" / "tools-log4j2.properties"
    return ["java", f"-Dlog4j2.configurationFile={log4j}", "-cp", f"{LIB}/*", *args]


@pytest.fixture
def sasl_broker(tmp_path: Path) -> Iterator[str]:
    """Start a SCRAM + ACL broker; yield its bootstrap address."""
    if not LIB.is_dir():
        pytest.skip("no Kafka jars in .stack/kafka/lib: run `make stack-up` first")
    port, controller = _free_port(), _free_port()
    conf = tmp_path / "server.properties"
    conf.write_text(
        (ACCESS / "server.properties.template")
        .read_text()
        .replace("@PORT@", str(port))
        .replace("@CONTROLLER_PORT@", str(controller))
        .replace("@HOST@", "127.0.0.1")
        .replace("@DATA_DIR@", str(tmp_path / "data"))
        .replace("@ADMIN_PASSWORD@", PASSWORDS["admin"])
    )
    scram = [
        arg
        for user, password in PASSWORDS.items()
        for arg in ("--add-scram", f"SCRAM-SHA-512=[name={user},password={password}]")
    ]
    cluster = "-"
    while cluster.startswith("-"):  # as Kafka's own ids: StorageTool reads "-..." as an option
        cluster = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
    subprocess.run(
        _java("kafka.tools.StorageTool", "format", "-t", cluster, "-c", str(conf), *scram),
        check=True,
        capture_output=True,
    )
    log = (tmp_path / "kafka.log").open("wb")
    broker = subprocess.Popen(
        ["java", "-Xms128m", "-Xmx384m", "-cp", f"{LIB}/*", "kafka.Kafka", str(conf)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        admin_config = tmp_path / "admin.properties"
        admin_config.write_text(
            "security.protocol=SASL_PLAINTEXT\nsasl.mechanism=SCRAM-SHA-512\n"
            "sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule"
            f' required username="admin" password="{PASSWORDS["admin"]}";\n'
        )
        acl = " ".join(_java("org.apache.kafka.tools.AclCommand"))
        bootstrap = f"127.0.0.1:{port}"
        for _ in range(60):  # the broker takes a few seconds to answer
            done = subprocess.run(
                ["bash", str(ACCESS / "acls.sh"), bootstrap, str(admin_config)],
                env=os.environ | {"ACL": acl},
                capture_output=True,
                text=True,
                check=False,
            )
            if done.returncode == 0:
                break
            assert broker.poll() is None, (tmp_path / "kafka.log").read_text()[-3000:]
        else:
            raise AssertionError(f"ACLs never applied: {done.stdout}{done.stderr}")
        yield bootstrap
    finally:
        broker.kill()
        broker.wait(timeout=30)


def _client(bootstrap: str, user: str) -> dict[str, str]:
    return {
        "bootstrap_servers": bootstrap,
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": user,
        "sasl_plain_password": PASSWORDS[user],
    }


@pytest.fixture
async def secured(
    base_settings: Settings, sasl_broker: str, tmp_path: Path
) -> AsyncIterator[Pipeline]:
    run_id = f"s{uuid.uuid4().hex[:10]}"
    settings = base_settings.model_copy(
        update={
            "kafka_bootstrap": sasl_broker,
            "kafka_security_protocol": "SASL_PLAINTEXT",
            "kafka_sasl_username": "orderstream",
            "kafka_sasl_password": SecretStr(PASSWORDS["orderstream"]),
            "app_id": f"orderstream-{run_id}",
            "sink_group": f"sink-{run_id}",
            "database_schema": run_id,
            "data_dir": tmp_path / "os-data",
            "http_port": _free_port(),
            "worker_metrics_port": 0,
            "sink_metrics_port": 0,
            "orders_metrics_port": 0,
            "payment_delay_min_s": 0.01,
            "payment_delay_max_s": 0.05,
            "payment_success_rate": 1.0,
        }
    )
    async with deployed(settings, tmp_path) as pipe:  # as orderstream: its ACLs allow it
        yield pipe


async def test_a_shop_writes_order_requests_only_and_orderstream_runs_the_sale(
    secured: Pipeline,
) -> None:
    secured.start()  # worker, sink, status service and lifecycle, as principal orderstream
    await publish_stock_command(secured.settings, PRODUCT, "set", 3)
    await secured.wait_for_stock(PRODUCT, 3)

    shop = AIOKafkaProducer(**_client(secured.settings.kafka_bootstrap, "shop"), acks="all")
    await shop.start()
    try:
        order = {"order_id": "sasl-1", "user_id": "u-1", "product_id": PRODUCT, "quantity": 1}
        await shop.send_and_wait("order-requests", json.dumps(order).encode(), key=PRODUCT.encode())
        # What a shop must never do: set prices, confirm orders, read the events.
        forged = {
            "stock-commands": {"product_id": PRODUCT, "operation": "set", "quantity": 10**6},
            "payment-results": {"order_id": "sasl-1", "paid": True},
        }
        for topic, value in forged.items():
            with pytest.raises((KafkaError, asyncio.TimeoutError)):
                await asyncio.wait_for(
                    shop.send_and_wait(topic, json.dumps(value).encode(), key=b"x"), 20
                )
    finally:
        await shop.stop()

    async def confirmed() -> bool:
        rows = await secured.query("SELECT status FROM orders WHERE order_id = 'sasl-1'")
        return rows == [{"status": "CONFIRMED"}]

    await secured.wait_for("the shop's order paid and confirmed", confirmed, timeout=90)
    [level] = await secured.query("SELECT available, reserved, sold, total_in FROM product_stock")
    assert level == {"available": 2, "reserved": 0, "sold": 1, "total_in": 3}, level
    history = await secured.query("SELECT status FROM order_events ORDER BY seq")
    assert [row["status"] for row in history] == ["RESERVED", "PAID", "CONFIRMED"]
