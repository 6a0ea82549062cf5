"""The ``orderstream`` command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mode import Worker as ServiceWorker
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from orderstream.cli_shop import InputError, add_db_commands, add_stock_commands
from orderstream.logs import configure as configure_logging
from orderstream.settings import Settings

if TYPE_CHECKING:
    from orderstream.http.roles import RoleRegistry
    from orderstream.services import RoleFactory

log = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"orderstream: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    # Before anything logs, for every command; mode's Worker is told not to redo it.
    configure_logging(settings.log_level, settings.log_format)
    handler: Callable[[Settings, argparse.Namespace], int] = args.handler
    try:
        return handler(settings, args)
    except KeyboardInterrupt:
        return 130
    except InputError as exc:
        print(f"orderstream: invalid input: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        # An id or a number from the command line that no message may carry: say which,
        # as the dead-letter reason would, instead of a traceback.
        from orderstream.topics import describe_invalid

        print(f"orderstream: invalid input: {describe_invalid(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:
        if getattr(exc, "retriable", None) is not None or isinstance(exc, OSError):
            print(f"orderstream: {exc}", file=sys.stderr)
            return 1
        raise


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="orderstream",
        description="Flash-sale order pipeline on Kafka. Settings come from ORDERSTREAM_* "
        "variables; `orderstream settings` shows them.",
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    def command(name: str, handler: Callable[..., int], help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        return sub

    command("run", _run, "run the worker, the sink and the status service in one process")
    command("worker", _worker, "run the stream worker (stock agent) only")
    command("sink", _sink, "run the PostgreSQL sink only")
    serve = command("serve", _serve, "run the HTTP status service only")
    serve.add_argument(
        "--processes",
        type=_positive,
        help="processes sharing the port (default: ORDERSTREAM_HTTP_PROCESSES, else one per core)",
    )
    # Set by the first intake process on the others it starts (intake_processes.py).
    serve.add_argument("--intake", type=int, help=argparse.SUPPRESS)
    serve.add_argument("--roles-file", type=Path, help=argparse.SUPPRESS)
    command("orders", _orders, "run the order lifecycle only (the order and payment agents)")
    command("settings", _settings, "print the effective settings as ORDERSTREAM_NAME=value")
    audit = command(
        "audit",
        _audit,
        "check the invariants against PostgreSQL and the stock changelog; exit 1 on a violation",
    )
    audit.add_argument(
        "--textfile",
        metavar="PATH",
        help="also write the verdict as Prometheus metrics to PATH (for node_exporter's "
        "textfile collector; deploy/alerts.yml alerts on a violation or a stale audit)",
    )

    stock = command("stock", _no_subcommand, "set or add a product's stock, change its catalog")
    add_stock_commands(stock.add_subparsers(required=True, metavar="OPERATION"))

    order = command("order", _order, "place an order: its lines published in one Kafka transaction")
    order.add_argument("order_id")
    order.add_argument("user_id")
    order.add_argument("items", nargs="+", metavar="PRODUCT:QUANTITY")

    db = command("db", _no_subcommand, "database administration")
    db_ops = db.add_subparsers(required=True, metavar="OPERATION")
    db_ops.add_parser("migrate", help="apply pending migrations").set_defaults(handler=_migrate)
    add_db_commands(db_ops)

    topics = command("topics", _no_subcommand, "Kafka topic administration")
    topic_ops = topics.add_subparsers(required=True, metavar="OPERATION")
    topic_ops.add_parser("create", help="create every topic with its partitions").set_defaults(
        handler=_create_topics
    )
    return parser


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def _no_subcommand(settings: Settings, args: argparse.Namespace) -> int:
    raise SystemExit("orderstream: give an operation; see --help")


def _settings(settings: Settings, args: argparse.Namespace) -> int:
    print("\n".join(settings.as_env_lines()))
    return 0


def _audit(settings: Settings, args: argparse.Namespace) -> int:
    from orderstream.admin import check_topics
    from orderstream.audit import audit

    asyncio.run(check_topics(settings))  # a missing changelog is a setup error, said plainly
    report = asyncio.run(audit(settings))  # progress on long reads goes to the log
    print("\n".join(report.lines()))
    if args.textfile:
        from orderstream.audit.report import write_textfile

        write_textfile(report, args.textfile)
    return 0 if report.ok else 1


def _migrate(settings: Settings, args: argparse.Namespace) -> int:
    from orderstream.sink import migrate

    applied = asyncio.run(migrate(settings))
    print(f"migrations applied: {', '.join(applied) if applied else 'none (up to date)'}")
    return 0


def _create_topics(settings: Settings, args: argparse.Namespace) -> int:
    from orderstream.admin import config_drift, create_topics

    created = asyncio.run(create_topics(settings))
    print(f"topics created: {', '.join(created) if created else 'none (all exist, checked)'}")
    for line in asyncio.run(config_drift(settings)):
        print(f"note: {line}")
    return 0


def _order(settings: Settings, args: argparse.Namespace) -> int:
    from orderstream.producer import publish_order_lines

    items = []
    for item in args.items:
        product_id, sep, quantity = item.rpartition(":")
        if not sep or not product_id or not quantity.isdigit():
            print(f"orderstream: {item!r} is not PRODUCT:QUANTITY", file=sys.stderr)
            return 2
        items.append((product_id, int(quantity)))
    try:
        # Checked whole before anything is sent: an invalid order raises ValueError (a
        # field no message may carry: ValidationError, reported by main).
        published = asyncio.run(publish_order_lines(settings, args.order_id, args.user_id, items))
    except ValidationError:
        raise
    except ValueError as exc:
        print(f"orderstream: invalid order: {exc}", file=sys.stderr)
        return 2
    print(
        f"order {args.order_id}: {published} line(s) published to "
        f"{settings.topic('order-requests')} in one transaction; "
        f"GET /orders/{args.order_id} tells what happened"
    )
    return 0


def _run(settings: Settings, args: argparse.Namespace) -> int:
    from orderstream.http.roles import RoleRegistry
    from orderstream.intake_processes import intake_roles, shared_roles_file
    from orderstream.metrics import SinkMetrics
    from orderstream.services import SINK, SinkService

    _tracing("orderstream")
    registry = CollectorRegistry()
    processes = settings.intake_processes()
    # The other intake processes answer /readyz with this process's roles, shared there.
    roles_file = shared_roles_file() if processes > 1 else None
    roles = RoleRegistry(share_at=roles_file)
    sink_metrics = SinkMetrics.register(registry)  # once: every sink attempt counts here
    return _run_worker(
        settings,
        registry,
        roles,
        {
            SINK: lambda: SinkService(settings, sink_metrics),
            **intake_roles(settings, registry, processes, roles, roles_file),
            **(_lifecycle_process(settings) if settings.run_lifecycle else {}),
        },
    )


def _lifecycle_process(settings: Settings) -> dict[str, RoleFactory]:
    """Return the order lifecycle as a child process (`orderstream orders`): a core of its
    own. Its metrics are served on orders_metrics_port, as a lifecycle run apart."""
    import os

    from orderstream.services import ORDER_LIFECYCLE, ChildProcess

    env = dict(os.environ) | settings.to_env()
    return {ORDER_LIFECYCLE: lambda: ChildProcess("orders", env)}


def _worker(settings: Settings, args: argparse.Namespace) -> int:
    _tracing("orderstream-worker")
    registry = CollectorRegistry()
    return _run_worker(
        settings, registry, others=_metrics_server(settings, settings.worker_metrics_port, registry)
    )


def _run_worker(
    settings: Settings,
    registry: CollectorRegistry,
    roles: RoleRegistry | None = None,
    others: Mapping[str, RoleFactory] | None = None,
) -> int:
    from orderstream.admin import await_topics
    from orderstream.agents import StockAgent
    from orderstream.metrics import WorkerMetrics
    from orderstream.services import STOCK_AGENT

    # Fail before joining the group if a topic is missing or has the wrong partitions:
    # a silently auto-created topic would break co-partitioning. Wait for Kafka, though.
    asyncio.run(await_topics(settings))
    metrics = WorkerMetrics.register(registry)
    return _run_services(
        settings, {STOCK_AGENT: lambda: StockAgent(settings, metrics), **(others or {})}, roles
    )


def _sink(settings: Settings, args: argparse.Namespace) -> int:
    from orderstream.metrics import SinkMetrics
    from orderstream.services import SINK, SinkService

    _tracing("orderstream-sink")
    registry = CollectorRegistry()
    metrics = SinkMetrics.register(registry)
    return _run_services(
        settings,
        {
            SINK: lambda: SinkService(settings, metrics),
            **_metrics_server(settings, settings.sink_metrics_port, registry),
        },
    )


def _metrics_server(
    settings: Settings, port: int, registry: CollectorRegistry
) -> dict[str, RoleFactory]:
    """Return the metrics server of a role run apart, as a role of its own (none on port 0).

    A role of its own, so that a taken port is logged and retried, and never stops the
    role whose metrics it serves.
    """
    from orderstream.services import METRICS_SERVER, MetricsService

    if port == 0:
        return {}
    return {METRICS_SERVER: lambda: MetricsService(settings.http_host, port, registry)}


def _orders(settings: Settings, args: argparse.Namespace) -> int:
    from orderstream.admin import await_topics

    asyncio.run(await_topics(settings))  # as the worker: no silently auto-created topic
    _tracing("orderstream-orders")
    registry = CollectorRegistry()
    return _run_services(
        settings,
        {
            **_lifecycle(settings, registry),
            **_metrics_server(settings, settings.orders_metrics_port, registry),
        },
    )


def _lifecycle(settings: Settings, registry: CollectorRegistry) -> dict[str, RoleFactory]:
    """Return the order lifecycle (a Faust app: order and payment agents) as a role."""
    from orderstream.agents.lifecycle.faust_app import new_lifecycle_app
    from orderstream.metrics import LifecycleMetrics
    from orderstream.services import ORDER_LIFECYCLE

    metrics = LifecycleMetrics.register(registry)  # once: every attempt counts here
    return {ORDER_LIFECYCLE: lambda: new_lifecycle_app(settings, metrics)}


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    from orderstream.http.roles import SharedRoles
    from orderstream.intake_processes import intake_roles, member_roles

    _tracing("orderstream-status")
    registry = CollectorRegistry()
    processes = args.processes or settings.intake_processes()
    if args.intake is not None:  # one of the processes another one started
        roles = SharedRoles(args.roles_file) if args.roles_file is not None else None
        return _run_services(
            settings, member_roles(settings, registry, args.intake, processes, roles)
        )
    # Alone, the service has no other roles to report: /readyz shows its own checks.
    return _run_services(settings, intake_roles(settings, registry, processes))


def _tracing(service_name: str) -> None:
    """Set up tracing for this process as the OTEL_ variables say (off by default)."""
    from orderstream.tracing import setup_tracing

    setup_tracing(service_name)


def _run_services(
    settings: Settings, roles: Mapping[str, RoleFactory], registry: RoleRegistry | None = None
) -> int:
    """Run the roles under one Supervisor until SIGTERM or SIGINT; a failed role restarts."""
    import uvloop

    from orderstream import gc_tuning
    from orderstream.http.roles import RoleRegistry
    from orderstream.services import ORDER_LIFECYCLE, Supervisor

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.set_event_loop(asyncio.new_event_loop())
    # The roles' services are made by the supervisor, inside the running loop (aiokafka
    # clients bind to it), and anew for each attempt.
    supervisor = Supervisor(roles, registry if registry is not None else RoleRegistry())
    if ORDER_LIFECYCLE not in roles:
        # Measured on the stock agent, the sink and the door only. The Faust lifecycle
        # left orders unexpired after a kill -9 with it (tests/integration/test_lifecycle,
        # under load), and keeps CPython's defaults.
        gc_tuning.tune()  # everything is imported: no full collection walks it again
    ServiceWorker(
        supervisor,
        # Logging is configured already (orderstream.logs): mode would replace the
        # handler with its own colored one, and JSON lines with text.
        override_logging=False,
        redirect_stdouts=False,
        quiet=settings.log_format == "json",  # mode's own prints are not log lines
    ).execute_from_commandline()
    return 0
