"""The aiohttp application factory and its resources."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web
from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool

from orderstream.db import make_pool
from orderstream.domain.partitioning import kafka_partitioner
from orderstream.http import rate_limit, routes, shoppers
from orderstream.http.errors import json_errors
from orderstream.http.keys import KAFKA, METRICS, POOL, REGISTRY, ROLES, SETTINGS
from orderstream.http.publishing import ORDER_PUBLISHER, OrderPublisher
from orderstream.http.queue import QUEUE, QueueProgress
from orderstream.http.roles import RoleRegistry
from orderstream.http.stock_view import STOCK_FIGURES, StockFigures, StockView
from orderstream.http.validation import MAX_BODY_BYTES
from orderstream.kafka_link import KafkaLink
from orderstream.metrics import status_metrics
from orderstream.settings import Settings

log = logging.getLogger(__name__)


def create_app(
    settings: Settings,
    registry: CollectorRegistry,
    pool: AsyncConnectionPool | None = None,
    roles: RoleRegistry | None = None,
    stock_figures: StockFigures | None = None,
) -> web.Application:
    """Return the status service; it opens its own pool unless one is given.

    ``roles``: the states of the process's roles, for /readyz to show beside its checks.
    ``stock_figures``: figures fed by the caller (a test) instead of the live view that
    the service otherwise keeps of the stock-changes topic.
    """
    app = web.Application(middlewares=[json_errors], client_max_size=MAX_BODY_BYTES)
    app[SETTINGS] = settings
    app[REGISTRY] = registry
    app[METRICS] = status_metrics(registry)
    if roles is not None:
        app[ROLES] = roles
    if pool is not None:
        app[POOL] = pool
    else:
        app.cleanup_ctx.append(_pool_ctx)
    app.cleanup_ctx.append(_kafka_ctx)
    app.cleanup_ctx.append(_queue_ctx)
    if stock_figures is not None:
        _use_figures(app, stock_figures)
    else:
        app.cleanup_ctx.append(_stock_view_ctx)
    rate_limit.install(app)
    shoppers.install(app)
    routes.add_routes(app)
    return app


async def _pool_ctx(app: web.Application) -> AsyncIterator[None]:
    pool = make_pool(app[SETTINGS], max_size=8)
    # Open without waiting: the service starts (and /readyz says why it is not ready)
    # even while PostgreSQL is still coming up.
    await pool.open(wait=False)
    app[POOL] = pool
    yield
    await pool.close()


async def _kafka_ctx(app: web.Application) -> AsyncIterator[None]:
    # The HTTP intake publishes requests, and /readyz asks whether Kafka answers. The
    # link connects lazily, so a service started before Kafka becomes ready without a
    # restart once Kafka is up.
    settings = app[SETTINGS]
    # Kafka's default partition for a key, hashed in C: paid once per order published.
    link = KafkaLink(settings, partitioner=kafka_partitioner)
    app[KAFKA] = link
    app[ORDER_PUBLISHER] = OrderPublisher(
        link, settings.http_max_in_flight, app[METRICS].publishes_in_flight
    )
    yield
    await link.close()


async def _queue_ctx(app: web.Application) -> AsyncIterator[None]:
    # Where a queued order stands: the stock agent's committed offsets, read on demand.
    queue = QueueProgress(app[SETTINGS])
    app[QUEUE] = queue
    yield
    await queue.close()


async def _stock_view_ctx(app: web.Application) -> AsyncIterator[None]:
    # Started in the background: the service answers (from PostgreSQL) while the view
    # replays the topic, and while Kafka does not answer at all.
    figures = StockFigures()
    view = StockView(app[SETTINGS], figures)
    _use_figures(app, figures)
    view.start()
    yield
    await view.stop()


def _use_figures(app: web.Application, figures: StockFigures) -> None:
    """Answer from ``figures``, and show them in the metrics (read when scraped)."""
    app[STOCK_FIGURES] = figures
    metrics = app[METRICS]
    metrics.view_products.set_function(lambda: len(figures))
    metrics.view_caught_up.set_function(lambda: float(figures.caught_up))
