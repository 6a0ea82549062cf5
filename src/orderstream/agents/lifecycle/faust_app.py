"""Build the lifecycle's Faust app: configuration, topics, the orders table, the agents.

Every setting that differs from Faust's default is chosen here, with the reason beside
it. The app id is ``<app_id>-orders``: never the stock agent's consumer group (the app
id itself), whose partitions and offsets are another agent's.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import faust
from aiokafka.helpers import create_ssl_context
from faust.types import TableT

from orderstream.agents.lifecycle import faust_commits, faust_recovery
from orderstream.agents.lifecycle.faust_io import DirectProducer, raw_topic
from orderstream.agents.lifecycle.lag import LifecycleLag
from orderstream.agents.lifecycle.orders import OrderAgentContext, register_order_agent
from orderstream.agents.lifecycle.payment import PaymentClient, register_payment_agent
from orderstream.agents.lifecycle.provider import MockPaymentProvider, PaymentProvider
from orderstream.metrics import LifecycleMetrics
from orderstream.settings import Settings
from orderstream.tables import ORDERS_TABLE, lifecycle_app_id
from orderstream.topics import (
    DLQ_SUFFIX,
    LINE_OUTCOMES,
    ORDER_COMMANDS,
    ORDER_EVENTS,
    PAYMENT_REQUESTS,
    PAYMENT_RESULTS,
    STOCK_COMMANDS,
)

log = logging.getLogger(__name__)

# rocksdict is the maintained RocksDB binding; python-rocksdb does not build on 3.11.
# Faust's defaults give every partition's database 3 x 64 MiB of memtables and a 2 GiB
# block cache; a table whose truth is the changelog, rebuilt at every start, needs far
# less.
_STORE_OPTIONS = {
    "driver": "rocksdict",
    "write_buffer_size": 8 * 1024**2,
    "max_write_buffer_number": 2,
    "block_cache_size": 32 * 1024**2,
    "block_cache_compressed_size": 8 * 1024**2,
}


def lifecycle_datadir(settings: Settings) -> Path:
    """Return the app's data directory: Faust puts tables under <datadir>/v1/tables
    whatever the app id, so the directory itself is the app's own."""
    return settings.data_dir / lifecycle_app_id(settings)


def reset_local_store(settings: Settings) -> None:
    """Delete the local table cache, so that recovery rebuilds it from the changelog.

    A table write reaches RocksDB at once, its changelog record only when the producer
    flushes: after a kill -9 the local store can hold a state the changelog never got,
    whose input was not committed. Rebuilt from the changelog, the redelivered input
    finds the state unmoved and sends its (idempotent) effects again.
    """
    path = lifecycle_datadir(settings)
    if path.exists():
        log.info("dropping local table cache %s; recovery rebuilds it from the changelog", path)
        shutil.rmtree(path)


def faust_credentials(settings: Settings) -> dict[str, Any]:
    """Return the faust.App settings for the same access: {} for PLAINTEXT."""
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return {}
    cafile = settings.kafka_ssl_cafile
    ssl_context = (
        create_ssl_context(cafile=str(cafile) if cafile else None)
        if protocol in ("SSL", "SASL_SSL")
        else None
    )
    if not protocol.startswith("SASL"):
        return {"broker_credentials": faust.SSLCredentials(ssl_context)}
    password = settings.kafka_sasl_password
    credentials = faust.SASLCredentials(
        username=settings.kafka_sasl_username,
        password=password.get_secret_value() if password else None,
        mechanism=settings.kafka_sasl_mechanism,
        ssl_context=ssl_context,
    )
    return {"broker_credentials": credentials}


def build_lifecycle_app(
    settings: Settings, metrics: LifecycleMetrics, provider: PaymentProvider | None = None
) -> faust.App:
    """Return a Faust app with the order agent, its expiry timer and the payment agent."""
    app = faust.App(
        lifecycle_app_id(settings),
        broker=[f"kafka://{host.strip()}" for host in settings.kafka_bootstrap.split(",")],
        datadir=str(lifecycle_datadir(settings)),
        store="rocksdb://",
        # exactly_once has open bugs that lose or double table updates after a crash;
        # at least once plus idempotent effects (agents/lifecycle/orders.py) is what we rely on.
        processing_guarantee="at_least_once",
        # Co-partitioning is explicit: sources and the changelog share one count.
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        # No leader-only timer: the expiry timer scans each worker's own partitions.
        topic_disable_leader=True,
        # A worker that starts after events were published must still apply them.
        consumer_auto_offset_reset="earliest",
        # Faust commits every 2.8 s by default; a shorter interval shrinks what a crash
        # makes us redeliver (harmless, every effect is idempotent, but repeated work).
        broker_commit_interval=settings.commit_interval_s,
        # Faust's 60 s session timeout leaves a killed worker's orders unattended for a
        # minute. 10 s with 1 s heartbeats fails over fast without flapping on pauses.
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=min(1.0, settings.session_timeout_s / 5),
        # A payment waits on the provider up to attempts x (timeout + backoff): Faust's
        # 300 s poll interval already covers it with room; nothing to change.
        producer_acks=-1,  # an effect is durable on every in-sync replica before commit
        # One replica per partition is enough on a single worker; standbys double the
        # changelog reads for nothing until there are several workers.
        table_standby_replicas=0,
        # The status service is our HTTP face; Faust's own web server stays off.
        web_enabled=False,
        autodiscover=False,
        key_serializer="raw",
        value_serializer="raw",
        **faust_credentials(settings),  # SASL/TLS when the cluster asks for them
    )
    events = raw_topic(app, settings.topic(ORDER_EVENTS))
    lines = raw_topic(app, settings.topic(LINE_OUTCOMES))
    commands = raw_topic(app, settings.topic(ORDER_COMMANDS))
    results = raw_topic(app, settings.topic(PAYMENT_RESULTS))
    requests = raw_topic(app, settings.topic(PAYMENT_REQUESTS))
    dead_letters = {
        name: raw_topic(app, name + DLQ_SUFFIX)
        for name in (
            lines.get_topic_name(),
            commands.get_topic_name(),
            results.get_topic_name(),
            requests.get_topic_name(),
        )
    }
    table: TableT[bytes, bytes] = app.Table(
        ORDERS_TABLE,
        partitions=settings.partitions,
        key_type=bytes,
        value_type=bytes,
        options=_STORE_OPTIONS,
    )
    direct = app.add_dependency(DirectProducer(settings))  # started and stopped with the app
    app.add_dependency(LifecycleLag(settings, metrics))
    assert isinstance(direct, DirectProducer)
    context = OrderAgentContext(
        settings=settings,
        metrics=metrics,
        store=table.data,
        changelog=table.changelog_topic.get_topic_name(),
        producer=direct.producer,
        order_events=events,
        line_outcomes=lines,
        order_commands=commands,
        payment_requests=requests,
        stock_commands=raw_topic(app, settings.topic(STOCK_COMMANDS)),
        dead_letters=dead_letters,
    )
    # One agent reads the three order-keyed topics: Faust assigns partition p of all
    # three, and of the changelog, to the same worker.
    source = raw_topic(
        app, lines.get_topic_name(), commands.get_topic_name(), results.get_topic_name()
    )
    register_order_agent(app, context, source)
    if provider is None:
        provider = MockPaymentProvider(
            settings.payment_success_rate,
            (settings.payment_delay_min_s, settings.payment_delay_max_s),
            settings.payment_error_rate,
        )
    client = PaymentClient.from_settings(provider, settings, metrics)
    faust_recovery.install(app)  # before the app starts: see faust_recovery.py
    # Never commit past a message not processed (see faust_commits.py).
    faust_commits.install(app, lambda topic: metrics.refetches.labels(topic).inc())
    _report_readiness(app, lines.get_topic_name(), metrics)
    register_payment_agent(
        app,
        settings,
        requests=requests,
        results=results,
        dead_letters=dead_letters,
        client=client,
        metrics=metrics,
        producer=direct.producer,
    )
    return app


def _report_readiness(app: faust.App, topic: str, metrics: LifecycleMetrics) -> None:
    """Keep ``partitions_ready`` at the order partitions this process serves: set when a
    rebalance completes (the table restored), 0 as soon as one begins. Operators and the
    benchmarks read it to know the lifecycle is ready before a drop."""
    gauge = metrics.partitions_ready

    @app.on_rebalance_complete.connect
    async def ready(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        gauge.set(sum(1 for tp in app.assignor.assigned_actives() if tp.topic == topic))

    @app.on_partitions_revoked.connect
    async def rebalancing(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        gauge.set(0)


def new_lifecycle_app(settings: Settings, metrics: LifecycleMetrics) -> faust.App:
    """Return a fresh, unstarted app for one run of the lifecycle role, its cache dropped.

    A Faust app is a mode Service: the supervisor starts it, watches it crash and stops
    it like any other role, and makes a new one for each attempt.
    """
    reset_local_store(settings)
    # Faust creates its data directory, but not the directories above it.
    lifecycle_datadir(settings).parent.mkdir(parents=True, exist_ok=True)
    return build_lifecycle_app(settings, metrics)
