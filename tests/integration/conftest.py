"""Fixtures for tests against the real Kafka broker and PostgreSQL (`make stack-up`).

Each test gets its own topic prefix, Faust app id, sink group and PostgreSQL schema, so
tests never see each other's data. Without a stack they skip, saying why, unless
ORDERSTREAM_REQUIRE_STACK=1 (CI sets it) turns the skip into a failure.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import psycopg
import pytest

from orderstream.admin import create_topics, delete_topics
from orderstream.settings import Settings
from orderstream.sink import drop_schema, migrate
from tests.integration.pipeline import Pipeline

pytestmark = pytest.mark.integration


def _reachable(host_port: str) -> bool:
    host, _, port = host_port.rpartition(":")
    try:
        with socket.create_connection((host or "localhost", int(port)), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def base_settings() -> Settings:
    settings = Settings()
    missing = []
    if not _reachable(settings.kafka_bootstrap.split(",")[0]):
        missing.append(f"Kafka at {settings.kafka_bootstrap}")
    try:
        psycopg.connect(settings.database_url.get_secret_value(), connect_timeout=3).close()
    except psycopg.OperationalError:
        missing.append("PostgreSQL at ORDERSTREAM_DATABASE_URL")
    if missing:
        message = f"no {' and no '.join(missing)}: run `make stack-up` first"
        if os.environ.get("ORDERSTREAM_REQUIRE_STACK") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return settings


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
async def pipeline(base_settings: Settings, tmp_path: Path) -> AsyncIterator[Pipeline]:
    run_id = f"t{uuid.uuid4().hex[:10]}"
    settings = base_settings.model_copy(
        update={
            "topic_prefix": f"{run_id}.",
            "app_id": f"orderstream-{run_id}",
            "sink_group": f"sink-{run_id}",
            "database_schema": run_id,
            "data_dir": tmp_path / "data",
            "http_host": "127.0.0.1",
            "http_port": _free_port(),
            # Several workers and sinks run on this host at once: no fixed metrics ports
            # (tests that scrape a role apart give it a free port).
            "worker_metrics_port": 0,
            "sink_metrics_port": 0,
            "orders_metrics_port": 0,
            # One status service process: tests count what one process refused or saw
            # (rate limits, metrics, roles); test_intake_processes runs several.
            "http_processes": 1,
            # The stock path's tests watch orders stay where the stock agent put them;
            # the lifecycle's tests turn it on (ORDERSTREAM_RUN_LIFECYCLE=1).
            "run_lifecycle": False,
        }
    )
    async with deployed(settings, tmp_path) as pipe:
        yield pipe


@asynccontextmanager
async def deployed(settings: Settings, workdir: Path) -> AsyncIterator[Pipeline]:
    """Create a deployment's topics and schema; yield its Pipeline; then stop its
    processes and drop both."""
    await create_topics(settings)
    await migrate(settings)
    pipe = Pipeline(settings, workdir)
    try:
        yield pipe
    finally:
        pipe.stop_all()
        await _drop(settings)


async def _drop(settings: Settings) -> None:
    """Delete the test's topics (its own and Faust's changelogs) and schema."""
    await delete_topics(settings)
    await drop_schema(settings)
