"""The aiohttp application factory and its resources."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool

from orderstream.db import make_pool
from orderstream.http import routes
from orderstream.http.keys import POOL, PRODUCER, REGISTRY, SETTINGS
from orderstream.settings import Settings

log = logging.getLogger(__name__)


def create_app(
    settings: Settings,
    registry: CollectorRegistry,
    pool: AsyncConnectionPool | None = None,
) -> web.Application:
    """Return the status service; it opens its own pool unless one is given."""
    app = web.Application(middlewares=[routes.json_errors])
    app[SETTINGS] = settings
    app[REGISTRY] = registry
    if pool is not None:
        app[POOL] = pool
    else:
        app.cleanup_ctx.append(_pool_ctx)
    app.cleanup_ctx.append(_producer_ctx)
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


async def _producer_ctx(app: web.Application) -> AsyncIterator[None]:
    # The HTTP intake publishes requests; it also tells /readyz whether Kafka answers.
    producer = AIOKafkaProducer(
        bootstrap_servers=app[SETTINGS].kafka_bootstrap, acks="all", enable_idempotence=True
    )
    try:
        await producer.start()
    except Exception:
        log.exception("Kafka is not reachable at %s yet", app[SETTINGS].kafka_bootstrap)
        await producer.stop()
        yield
        return
    app[PRODUCER] = producer
    yield
    await producer.stop()
