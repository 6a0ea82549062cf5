"""The sink and the status service as mode Services, so one worker can run them all.

`orderstream run` starts the Faust worker with both of these beside it in one process;
`orderstream sink` and `orderstream serve` run one each under the same supervisor, so
every process shuts down the same way on SIGTERM.
"""

from __future__ import annotations

import logging

from aiohttp import web
from mode import Service
from prometheus_client import CollectorRegistry

from orderstream.db import make_pool
from orderstream.http import create_app
from orderstream.metrics import SinkMetrics
from orderstream.settings import Settings
from orderstream.sink import PostgresSink, SinkRunner

log = logging.getLogger(__name__)


class SinkService(Service):
    """Run the PostgreSQL sink's consume loop."""

    def __init__(self, settings: Settings, registry: CollectorRegistry) -> None:
        super().__init__()
        self._settings = settings
        self._pool = make_pool(settings)
        self._metrics = SinkMetrics.register(registry)
        self._runner: SinkRunner | None = None

    async def on_start(self) -> None:
        await self._pool.open(wait=True, timeout=60)
        self._runner = SinkRunner(self._settings, PostgresSink(self._pool), self._metrics)
        await self._runner.start()
        log.info(
            "sink consuming as group %s into schema %s",
            self._settings.sink_group,
            self._settings.database_schema,
        )
        self.add_future(self._runner.run())

    async def on_stop(self) -> None:
        if self._runner is not None:
            await self._runner.stop()
        await self._pool.close()


class StatusService(Service):
    """Serve the status service over HTTP."""

    def __init__(self, settings: Settings, registry: CollectorRegistry) -> None:
        super().__init__()
        self._settings = settings
        self._runner = web.AppRunner(create_app(settings, registry), access_log=None)

    async def on_start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._settings.http_host, self._settings.http_port)
        await site.start()
        log.info(
            "status service on http://%s:%d", self._settings.http_host, self._settings.http_port
        )

    async def on_stop(self) -> None:
        await self._runner.cleanup()
