"""Build the Faust app: configuration, topics, tables, agents.

Every setting that differs from Faust's default is chosen here, with the reason beside it.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path
from typing import Any, cast

import faust
from faust.types import TableT

from orderstream.agents import store
from orderstream.agents.decider import Decider
from orderstream.agents.stock import StockAgentContext, register_stock_agent
from orderstream.metrics import WorkerMetrics
from orderstream.settings import Settings
from orderstream.tables import HOLDS_TABLE, STOCK_TABLE
from orderstream.topics import (
    DLQ_SUFFIX,
    ORDER_EVENTS,
    ORDER_REQUESTS,
    STOCK_CHANGES,
    STOCK_COMMANDS,
)

log = logging.getLogger(__name__)

# rocksdict is the maintained RocksDB binding; python-rocksdb does not build on 3.11.
# Faust's defaults give every partition's database 3 x 64 MiB of memtables and a 2 GiB
# block cache, so a worker's memory climbs by hundreds of MiB as tables fill. A cache
# whose truth is the changelog needs far less: 8 MiB memtables, 64 MiB of block cache.
_STORE_OPTIONS = {
    "driver": "rocksdict",
    "write_buffer_size": 8 * 1024**2,
    "max_write_buffer_number": 2,
    "block_cache_size": 64 * 1024**2,
    "block_cache_compressed_size": 16 * 1024**2,
}


def build_worker_app(settings: Settings, metrics: WorkerMetrics) -> faust.App:
    """Return a Faust app with the stock agent, configured from ``settings``."""
    app = faust.App(
        settings.app_id,
        broker=f"kafka://{settings.kafka_bootstrap}",
        datadir=str(settings.data_dir),
        # RocksDB through rocksdict, as a cache without a write-ahead log (see store.py).
        store=store.register(),
        # exactly_once has open bugs that lose or double table updates after a crash;
        # at-least-once plus idempotent effects (holds, versions, seqs) is what we rely on.
        processing_guarantee="at_least_once",
        # Co-partitioning is explicit: tables, sources and changelogs share one count.
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        # A worker that starts after requests were published must still decide them.
        consumer_auto_offset_reset="earliest",
        # Faust commits every 2.8 s by default; a shorter interval shrinks what a crash
        # makes us redeliver (harmless, but it is repeated work and latency).
        broker_commit_interval=settings.commit_interval_s,
        # Faust's 60 s session timeout means a killed worker's partitions sit idle for a
        # minute. 10 s with 1 s heartbeats fails over fast without flapping on GC pauses.
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=min(1.0, settings.session_timeout_s / 5),
        # A little linger lets the producer batch the decisions and changelog records of
        # many requests into few produce requests. Measured on the hot workload (30k
        # requests, 2 runs each): 2 ms gave 1,263 and 1,030 decisions/s, 10 ms gave
        # 1,447 and 1,232, and a lower latency at half that rate (socket writes were
        # the largest single cost in the worker's profile).
        producer_linger=settings.producer_linger_ms / 1000,
        producer_acks=-1,  # a decision is durable on every in-sync replica before commit
        # One replica per partition is enough on a single worker; standbys double the
        # changelog reads for nothing until there are several workers.
        table_standby_replicas=0,
        # The status service is our HTTP face; Faust's own web server stays off.
        web_enabled=False,
        autodiscover=False,
        key_serializer="raw",
        value_serializer="raw",
    )
    requests = _raw_topic(app, settings.topic(ORDER_REQUESTS))
    commands = _raw_topic(app, settings.topic(STOCK_COMMANDS))
    context = StockAgentContext(
        settings=settings,
        metrics=metrics,
        requests=requests,
        commands=commands,
        source=_raw_topic(app, requests.get_topic_name(), commands.get_topic_name()),
        order_events=settings.topic(ORDER_EVENTS),
        stock_changes=settings.topic(STOCK_CHANGES),
        dead_letters={
            topic.get_topic_name(): _raw_topic(app, topic.get_topic_name() + DLQ_SUFFIX)
            for topic in (requests, commands)
        },
        stock=_raw_table(app, STOCK_TABLE, settings.partitions),
        holds=_raw_table(app, HOLDS_TABLE, settings.partitions),
        emit=ProducerEmit(app),
        decider=Decider(settings, metrics),
    )
    register_stock_agent(app, context)
    return app


class ProducerEmit:
    """Send outputs straight to the app's Kafka producer.

    Faust's ``Topic.send`` wraps every record in futures, sensors and callbacks; the
    transport producer under it only appends to a batch. At-least-once still holds:
    Faust flushes this same producer before it commits any offset.
    """

    def __init__(self, app: faust.App) -> None:
        self._app = app
        self._crashing: set[asyncio.Task[None]] = set()

    async def __call__(self, topic: str, key: bytes, value: bytes) -> None:
        sent = await self._app.producer.send(topic, key, value, None, None, None)
        cast(asyncio.Future[Any], sent).add_done_callback(self._check_delivery)

    def _check_delivery(self, sent: asyncio.Future[Any]) -> None:
        error = None if sent.cancelled() else sent.exception()
        if error is None:
            return
        # The producer gave up after its retries: this record is lost unless the worker
        # stops before committing past it, so crash and let a restart redeliver.
        log.critical("could not deliver an output record: %r; stopping", error)
        task = asyncio.ensure_future(self._app.crash(error))
        self._crashing.add(task)


def _raw_topic(app: faust.App, *names: str) -> faust.TopicT:
    # Bytes in, bytes out: messages are decoded by pydantic in the agent, so a malformed
    # one becomes a dead letter instead of an exception inside Faust's deserializer.
    return app.topic(*names, key_serializer="raw", value_serializer="raw")


def _raw_table(app: faust.App, name: str, partitions: int) -> TableT[bytes, bytes]:
    return app.Table(
        name,
        partitions=partitions,
        # Raw bytes through the app-wide "raw" serializers; values are pydantic JSON.
        key_type=bytes,
        value_type=bytes,
        options=_STORE_OPTIONS,
    )


def reset_local_store(settings: Settings) -> None:
    """Delete the worker's local RocksDB cache so that recovery rebuilds it from changelogs.

    A table write reaches RocksDB at once but its changelog record only when the producer
    flushes; after a kill -9 the local store can hold writes the changelog never got. The
    changelog is the truth, so a starting worker drops the cache rather than trust it.
    """
    path = Path(settings.data_dir) / f"{settings.app_id}-data"
    if path.exists():
        log.info("dropping local table cache %s; recovery rebuilds it from the changelog", path)
        shutil.rmtree(path)
