"""The roles of an orderstream process as mode Services, and the supervisor that runs them.

`orderstream run` runs the stock agent, the sink and the status service in one process;
`orderstream worker`, `sink` and `serve` run one each. Every command runs its roles under
the same Supervisor, so every process survives a failing role and stops the same way on
SIGTERM. A worker or a sink run apart also runs a metrics server: the status service,
which serves /metrics otherwise, is not in its process.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import NamedTuple, TypeAlias

from aiohttp import web
from mode import Service, ServiceT
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from orderstream.db import make_pool
from orderstream.http import create_app
from orderstream.http.roles import Phase, RoleRegistry, RoleState, describe_error
from orderstream.http.server import listen
from orderstream.metrics import SinkMetrics
from orderstream.settings import Settings
from orderstream.sink import PostgresSink, SinkRunner

log = logging.getLogger(__name__)

# Role names, as logs and /readyz show them.
STOCK_AGENT = "stock-agent"
SINK = "sink"
STATUS_SERVICE = "status-service"
METRICS_SERVER = "metrics-server"
ORDER_LIFECYCLE = "order-lifecycle"  # a Faust app: agents/lifecycle/faust_app.py

# SIGTERM must end a process within 30 s whatever is down. Roles stop at the same time,
# each within this bound; closing the event loop afterwards takes the mode Worker ~2 s.
ROLE_STOP_TIMEOUT_S = 20.0
# In-flight HTTP requests get this long to finish when the status service stops; every
# route answers within a few seconds (/readyz's probes time out after 2 s).
_HTTP_SHUTDOWN_S = 5.0

# Makes a new, unstarted Service for one attempt of a role. A mode Service cannot start
# again once stopped (nor can an aiohttp app or an aiokafka client), hence a factory.
RoleFactory: TypeAlias = Callable[[], ServiceT]


class SinkService(Service):
    """Run the PostgreSQL sink's consume loop."""

    def __init__(self, settings: Settings, metrics: SinkMetrics) -> None:
        super().__init__()
        self._settings = settings
        self._pool = make_pool(settings)
        self._metrics = metrics
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

    def __init__(
        self,
        settings: Settings,
        registry: CollectorRegistry,
        roles: RoleRegistry | None = None,
        *,
        reuse_port: bool = False,
    ) -> None:
        """``reuse_port``: share the port with the service's other processes."""
        super().__init__()
        self._settings = settings
        self._reuse_port = reuse_port
        self._runner = web.AppRunner(
            create_app(settings, registry, roles=roles),
            access_log=None,
            shutdown_timeout=_HTTP_SHUTDOWN_S,
        )
        self._server: asyncio.Server | None = None

    async def on_start(self) -> None:
        host, port = self._settings.http_host, self._settings.http_port
        await self._runner.setup()
        self._server = await listen(self._runner, host, port, reuse_port=self._reuse_port)
        log.info("status service on http://%s:%d", host, port)

    async def on_stop(self) -> None:
        if self._server is not None:
            self._server.close()  # no new connections; cleanup() closes the open ones
        await self._runner.cleanup()


class MetricsService(Service):
    """Serve a process's metrics registry at /metrics, for Prometheus to scrape."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry) -> None:
        super().__init__()
        self._host, self._port = host, port

        async def metrics(request: web.Request) -> web.Response:
            return web.Response(
                body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
            )

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=_HTTP_SHUTDOWN_S)
        self._server: asyncio.Server | None = None

    async def on_start(self) -> None:
        await self._runner.setup()
        self._server = await listen(self._runner, self._host, self._port)
        log.info("metrics on http://%s:%d/metrics", self._host, self._port)

    async def on_stop(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._runner.cleanup()


class ChildProcess(Service):
    """Run ``orderstream COMMAND`` as a child process: a role on a core of its own.

    `orderstream run` runs the order lifecycle this way: a Python process uses one core,
    and the lifecycle settles a sale as fast as the stock agent decides it only with
    the second. The child inherits stdout and stderr (one log), is stopped with
    SIGTERM, and dies with its parent (PR_SET_PDEATHSIG), so a kill -9 of `orderstream
    run` leaves no orphan in the consumer group. Its exit is this role's failure.
    """

    def __init__(self, command: str, env: Mapping[str, str], args: Sequence[str] = ()) -> None:
        super().__init__()
        self._command = command
        self._args = list(args)
        self._env = dict(env)
        self._process: asyncio.subprocess.Process | None = None

    async def on_start(self) -> None:
        self._process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "orderstream",
            self._command,
            *self._args,
            env=self._env,
            preexec_fn=_die_with_parent,
        )
        log.info("orderstream %s running as process %d", self._command, self._process.pid)
        self.add_future(self._watch(self._process))

    async def _watch(self, process: asyncio.subprocess.Process) -> None:
        code = await process.wait()
        if not self.should_stop:
            await self.crash(RoleStoppedError(f"orderstream {self._command} exited with {code}"))

    async def on_stop(self) -> None:
        process = self._process
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), ROLE_STOP_TIMEOUT_S)
        except TimeoutError:
            process.kill()
            await process.wait()
            log.warning("orderstream %s did not stop within %.0f s; killed", self._command,
                        ROLE_STOP_TIMEOUT_S)  # fmt: skip


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this (child) process when its parent dies."""
    pr_set_pdeathsig = 1
    # Not Linux: the child may outlive a killed parent.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGKILL)


@dataclass(frozen=True)
class Backoff:
    """How long a failed role waits before its next attempt: doubling, capped."""

    first_s: float = 1.0
    max_s: float = 30.0
    # A role that ran this long before it failed was healthy: it waits first_s again.
    healthy_after_s: float = 60.0

    def delay(self, failures: int) -> float:
        """Return the wait after the ``failures``-th failure in a row (1, 2, ...)."""
        return min(self.first_s * 2.0 ** min(failures - 1, 64), self.max_s)


class RoleStoppedError(Exception):
    """A role's service stopped though nobody asked it to."""


class _Failure(NamedTuple):
    error: BaseException
    at_start: bool  # start() raised, rather than a running service crashing


class Supervisor(Service):
    """Run each role as a fresh Service per attempt; restart a failed role alone.

    A role fails when its start raises, or when its running service crashes (one of its
    tasks raised: mode's ``Service.crash``) or stops by itself. The failed service is
    stopped within ``stop_timeout_s``, the failure logged and put in the RoleRegistry,
    and after a backoff a new instance starts. The other roles never notice.

    A role's service is never made a child of this one or of the Worker: mode marks
    every ancestor of a crashed service crashed too, up to the Worker, which then exits
    the process. Detached, a crash stays in its role, and this supervisor watches for it.
    (mode's own OneForOneSupervisor restarts the same instance, without backoff, and
    exits the process past a restart rate; these roles cannot restart in place.)
    """

    def __init__(
        self,
        roles: Mapping[str, RoleFactory],
        registry: RoleRegistry,
        *,
        backoff: Backoff | None = None,
        stop_timeout_s: float = ROLE_STOP_TIMEOUT_S,
    ) -> None:
        super().__init__()
        self._roles = dict(roles)
        self._registry = registry
        self._backoff = backoff or Backoff()
        self._stop_timeout_s = stop_timeout_s
        self._loops: list[asyncio.Future[None]] = []

    async def on_start(self) -> None:
        for name in self._roles:
            self._registry.set(name, RoleState(Phase.STARTING))
        # A loop that raises is a bug here, not in a role: add_future crashes the process.
        self._loops = [
            self.add_future(self._supervise(name, factory)) for name, factory in self._roles.items()
        ]

    async def on_stop(self) -> None:
        # Each loop stops its role's service, within stop_timeout_s, as it is cancelled;
        # all at once, so stopping takes the slowest role's time, not the sum.
        for loop in self._loops:
            loop.cancel()
        if self._loops:
            await asyncio.wait(self._loops, timeout=self._stop_timeout_s + 1)

    async def _supervise(self, name: str, factory: RoleFactory) -> None:
        failures = 0
        try:
            while True:
                started = time.monotonic()
                failure = await self._attempt(name, factory, failures)
                if time.monotonic() - started >= self._backoff.healthy_after_s:
                    failures = 0
                failures += 1
                delay = self._backoff.delay(failures)
                error = describe_error(failure.error)
                log.error(
                    "role %s %s (failure %d in a row): %s; restarting it in %.0f s",
                    name,
                    "failed to start" if failure.at_start else "failed",
                    failures,
                    error,
                    delay,
                    # A crash's traceback is logged by mode when it happens.
                    exc_info=failure.error if failure.at_start else None,
                )
                retry_at = datetime.now(UTC) + timedelta(seconds=delay)
                self._registry.set(name, RoleState(Phase.RESTARTING, failures, error, retry_at))
                await asyncio.sleep(delay)
        finally:
            self._registry.set(name, RoleState(Phase.STOPPED))

    async def _attempt(self, name: str, factory: RoleFactory, failures: int) -> _Failure:
        """Start a new service for the role, wait until it fails, stop it; say why it failed."""
        last = self._registry.get(name)
        self._registry.set(
            name, RoleState(Phase.STARTING, failures, last.error if last and failures else None)
        )
        service: ServiceT | None = None
        try:
            try:
                service = factory()
                await service.start()
            except Exception as exc:
                return _Failure(exc, at_start=True)
            self._registry.set(name, RoleState(Phase.RUNNING))
            log.info("role %s running", name)
            await service.wait_until_stopped()  # returns once it crashed (or stopped)
            reason = service.crash_reason or RoleStoppedError("stopped by itself")
            return _Failure(reason, at_start=False)
        finally:
            if service is not None:  # stopped however the attempt ended, cancelled too
                await self._stop(name, service)

    async def _stop(self, name: str, service: ServiceT) -> None:
        """Stop ``service`` within stop_timeout_s; past it, leave it and say so."""
        stopping = asyncio.ensure_future(service.stop())
        try:
            done, _ = await asyncio.wait({stopping}, timeout=self._stop_timeout_s)
        except asyncio.CancelledError:
            stopping.cancel()
            raise
        if not done:
            stopping.cancel()
            log.error("role %s did not stop within %.0f s; left behind", name, self._stop_timeout_s)
        elif not stopping.cancelled() and (exc := stopping.exception()) is not None:
            log.warning("role %s raised while stopping: %s", name, describe_error(exc))
