"""The status service as N processes on one port: this process, and N-1 children.

One Python process serves HTTP on one core. Each of the N processes is a whole status
service (every route) listening on ``http_port`` with SO_REUSEPORT, and the kernel
spreads new connections over them. Everything a request touches is the process's own:
its Kafka producer, its live view of stock-changes, its rate limiters (N processes let
N times a limit through), its PostgreSQL pool, its metrics registry. The children are
`orderstream serve --intake K` processes, supervised as roles of this one (restarted
when they exit) and killed with it.

Metrics stay per process (prometheus_client's multiprocess mode would change every
metric of the process and drop callback gauges): the shared port's /metrics answers for
whichever process took the connection; with ``http_metrics_port`` set, process K also
serves its own at that port + K, for Prometheus to scrape each one.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import tempfile
from pathlib import Path

from prometheus_client import CollectorRegistry

from orderstream.http.roles import RoleRegistry
from orderstream.services import (
    METRICS_SERVER,
    STATUS_SERVICE,
    ChildProcess,
    MetricsService,
    RoleFactory,
    StatusService,
)
from orderstream.settings import Settings

__all__ = ["intake_roles", "member_roles", "shared_roles_file"]


def intake_roles(
    settings: Settings,
    registry: CollectorRegistry,
    processes: int,
    roles: RoleRegistry | None = None,
    roles_file: Path | None = None,
) -> dict[str, RoleFactory]:
    """Return the status service's roles in this process: its own service, and one child
    process per other intake process (``status-service-2``, ...).

    ``roles``: this process's roles, for its /readyz; ``roles_file``: where they are
    shared, for the children's /readyz to show the same.
    """
    shared = processes > 1
    found: dict[str, RoleFactory] = {
        STATUS_SERVICE: lambda: StatusService(settings, registry, roles, reuse_port=shared),
        **_own_metrics(settings, registry, 0, processes),
    }
    env = dict(os.environ) | settings.to_env()
    for member in range(1, processes):
        args = ["--intake", str(member), "--processes", str(processes)]
        if roles_file is not None:
            args += ["--roles-file", str(roles_file)]
        found[f"{STATUS_SERVICE}-{member + 1}"] = _child(env, args)
    return found


def member_roles(
    settings: Settings,
    registry: CollectorRegistry,
    member: int,
    processes: int,
    roles: RoleRegistry | None,
) -> dict[str, RoleFactory]:
    """Return the roles of intake process ``member`` (1, 2, ...), a child of the first."""
    return {
        STATUS_SERVICE: lambda: StatusService(settings, registry, roles, reuse_port=True),
        **_own_metrics(settings, registry, member, processes),
    }


def shared_roles_file() -> Path:
    """Return a file for this process's roles to be shared at; removed when it exits."""
    descriptor, name = tempfile.mkstemp(prefix="orderstream-roles-", suffix=".json")
    os.close(descriptor)
    path = Path(name)
    atexit.register(_remove, path)
    return path


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def _child(env: dict[str, str], args: list[str]) -> RoleFactory:
    return lambda: ChildProcess("serve", env, args)


def _own_metrics(
    settings: Settings, registry: CollectorRegistry, member: int, processes: int
) -> dict[str, RoleFactory]:
    """Return process ``member``'s own metrics server, when several share the port and a
    metrics port is set."""
    if processes < 2 or settings.http_metrics_port == 0:
        return {}
    port = settings.http_metrics_port + member
    return {METRICS_SERVER: lambda: MetricsService(settings.http_host, port, registry)}
