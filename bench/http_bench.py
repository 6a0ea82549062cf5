"""The HTTP door under a flash sale: POST /orders against the aiohttp + row-lock service.

    python -m bench.http_bench [--quick]        (make bench-http)

Per workload (bench/workload.py: hot, spread), in one run, on one machine:
- **orderstream (producer)**: the whole workload published by a plain Kafka producer
  (bench/orderstream_bench.py, as `make bench`): orderstream's own rate, the reference;
- **orderstream (HTTP)**: `orderstream worker`, `orderstream sink` and `orderstream serve`
  (ORDERSTREAM_HTTP_PROCESSES processes on one port, one per core by default), every
  request sent as POST /orders by the load generator (bench/http_load.py: wrk, or
  Python processes; keep-alive connections), flat out, timed from the first request
  sent to the last order row seen in PostgreSQL;
- **aiohttp+pg-rowlock**: bench/baseline_http_rowlock.py, as many processes on one port,
  each POST running the row-lock transaction, driven and timed the same way.
Then each HTTP system gets a second request stream of the same shape open loop at a fixed
rate (half of what the row-lock service did flat out: a rate it sustains), each request
timed from its due time to its answer, and to its row in PostgreSQL.
Every system is checked: one orders row per request, reserved = min(stock, demand), stock
conserved, nothing negative.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import aiohttp
import uvloop

from bench import baseline_http_rowlock
from bench.baseline_common import connect, load_products, recreate_schema, server_settings
from bench.baseline_pg import _check as check_rowlock
from bench.http_load import LoadRun, WrkLoad, send
from bench.orderstream_bench import Deployment, check_correct, run_orderstream, set_stock
from bench.result import Latency, Result
from bench.timing import POLL_INTERVAL_S, RowPoller, log, now
from bench.workload import Workload, combine, hot, spread
from orderstream.settings import Settings

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
WORKDIR = REPO / ".stack" / "bench"
PRODUCER = "orderstream (producer)"
HTTP = "orderstream (HTTP)"
ROWLOCK_SCHEMA = "bench_http_rowlock"
# Without the row-lock service in the run and no --latency-rate: the rate bench.run uses.
FALLBACK_LATENCY_RATE = 500.0
LATENCY_PREFIX = "lat-"
FLAT_OUT_TIMEOUT_S = 180.0

SIZES = {
    # (hot requests, hot stock, spread requests, spread products, latency requests)
    "full": (40_000, 4_000, 40_000, 200, 10_000),
    "quick": (10_000, 1_000, 10_000, 100, 3_000),
}


def build_workloads(size: str, names: list[str]) -> list[tuple[Workload, Workload]]:
    hot_n, hot_stock, spread_n, products, latency = SIZES[size]
    built = []
    if "hot" in names:
        built.append(
            (
                hot(hot_n, hot_stock),
                hot(latency, latency * hot_stock // hot_n, prefix=LATENCY_PREFIX),
            )
        )
    if "spread" in names:
        built.append((spread(spread_n, products), spread(latency, products, prefix=LATENCY_PREFIX)))
    return built


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _wait_http(url: str, what: str, timeout_s: float = 120.0) -> None:
    deadline = now() + timeout_s
    async with aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.get(url) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if now() > deadline:
                raise TimeoutError(f"{what} did not answer {url} within {timeout_s:.0f} s")
            await asyncio.sleep(0.2)


def _answered(run: LoadRun, label: str) -> list[str]:
    """Return problems with the answers: every request must end 202."""
    return _statuses(run.statuses(), run.retries, label)


def _statuses(statuses: dict[int, int], retries: int, label: str) -> list[str]:
    log(label, f"answers {statuses}, 503 retries {retries}")
    bad = {status: n for status, n in statuses.items() if status != 202}
    return [f"answers other than 202: {bad}"] if bad else []


def _generator(args: argparse.Namespace) -> str:
    flat_out = (
        f"wrk, {args.generators} threads"
        if args.generator == "wrk"
        else f"{args.generators} aiohttp processes"
    )
    return (
        f"flat out: {flat_out}; open loop: {args.generators} aiohttp processes;"
        f" {args.connections} keep-alive connections; on the same machine"
    )


async def flat_out(
    orders: str,
    workload: Workload,
    poller: RowPoller,
    args: argparse.Namespace,
    label: str,
    dead: Callable[[], str | None] = lambda: None,
) -> tuple[float, float, list[str], int]:
    """Send every request flat out; return when the first was sent, when the poller saw
    the last row, the problems with the answers, and the 503s retried."""
    if args.generator == "wrk":
        load = WrkLoad(orders, workload.requests, args.connections, args.generators)
        load.start()
        try:
            pg_done = await poller.wait(dead, timeout_s=FLAT_OUT_TIMEOUT_S)
        finally:
            statuses = await asyncio.to_thread(load.stop)
        # wrk does not retry a 503: one would show among the statuses, and a row missing.
        return load.started, pg_done, _statuses(statuses, 0, label), 0
    run = await asyncio.to_thread(
        send, orders, workload.requests, connections=args.connections, processes=args.generators
    )
    pg_done = await poller.wait(dead)
    return run.first_sent, pg_done, _answered(run, label), run.retries


async def run_http_orderstream(
    workload: Workload,
    latency_workload: Workload,
    rate: float,
    base: Settings,
    args: argparse.Namespace,
) -> Result:
    """Measure orderstream's door: flat out to PostgreSQL, then open loop at ``rate``."""
    label = f"{HTTP}/{workload.name}"
    everything = combine(workload, latency_workload)
    port = _free_port()
    WORKDIR.mkdir(parents=True, exist_ok=True)
    deployment = await Deployment.create(base, WORKDIR)
    processes = args.processes or deployment.settings.intake_processes()
    deployment.settings = deployment.settings.model_copy(
        update={
            "http_host": "127.0.0.1",
            "http_port": port,
            "http_processes": processes,
            # Every request is published and decided, as with the producer and the row
            # lock: no sold-out answers from the door's live view, no per-user limit.
            "http_sold_out_hint": False,
            "rate_limit_user_per_s": 0.0,
        }
    )
    settings = deployment.settings
    url = settings.database_url.get_secret_value()
    orders = f"http://127.0.0.1:{port}/orders"
    pollers: list[RowPoller] = []
    try:
        for role in ("worker", "sink", "serve"):
            deployment.start(role)
        await set_stock(deployment, everything.stock)
        await _wait_http(f"http://127.0.0.1:{port}/readyz", "orderstream serve")
        throughput = RowPoller(
            url, settings.database_schema, workload.order_ids(), label, appended=True
        )
        pollers.append(throughput)
        await throughput.start()
        log(label, f"{len(workload.requests):,} POSTs flat out, {processes} door processes")
        first_sent, pg_done, problems, retries = await flat_out(
            orders, workload, throughput, args, label, deployment.dead
        )
        elapsed = pg_done - first_sent
        log(label, f"{len(workload.requests) / elapsed:,.0f}/s to PostgreSQL ({elapsed:.2f} s)")

        latency = RowPoller(url, settings.database_schema, latency_workload.order_ids(), label)
        pollers.append(latency)
        await latency.start()
        paced = await _paced(orders, latency_workload, args, rate, label)
        problems += _answered(paced, label)
        await latency.wait(deployment.dead)
        to_pg = [latency.seen[order_id] - due for order_id, due, _, _ in paced.rows]
        problems += await check_correct(deployment, everything)
    finally:
        for poller in pollers:
            await poller.stop()
        await deployment.stop()
    return _result(
        HTTP,
        (workload, latency_workload),
        args,
        elapsed,
        (rate, to_pg, paced, retries),
        problems,
        {
            "door_processes": processes,
            "http_max_in_flight": settings.http_max_in_flight,
            "poll_interval_ms": POLL_INTERVAL_S * 1000,
        },
    )


def _result(
    system: str,
    workloads: tuple[Workload, Workload],
    args: argparse.Namespace,
    elapsed: float,
    latency: tuple[float, list[float], LoadRun, int],
    problems: list[str],
    settings: dict[str, object],
) -> Result:
    """One system's result over HTTP: flat out, then its open-loop latency phase."""
    workload, latency_workload = workloads
    rate, to_pg, paced, retries = latency
    return Result(
        system=system,
        workload=workload.name,
        mode=f"POST /orders, {args.connections} connections",
        requests=len(workload.requests),
        elapsed_s=elapsed,
        rate_per_s=len(workload.requests) / elapsed,
        correct=not problems,
        latency_rate_per_s=rate,
        latency_requests=len(latency_workload.requests),
        latency_to_pg=Latency.of(to_pg),
        problems=problems,
        settings={
            **settings,
            "load_generator": _generator(args),
            "retries_503": retries + paced.retries,
            "latency_to_answer": asdict(Latency.of(paced.latencies())),
        },
    )


async def run_http_rowlock(
    workload: Workload,
    latency_workload: Workload,
    rate: float | None,
    base: Settings,
    args: argparse.Namespace,
) -> Result:
    """Measure the aiohttp + row-lock service the same way."""
    label = f"{baseline_http_rowlock.SYSTEM}/{workload.name}"
    everything = combine(workload, latency_workload)
    database_url = base.database_url.get_secret_value()
    admin = await connect(database_url, ROWLOCK_SCHEMA)
    processes = args.processes or base.intake_processes()
    port = _free_port()
    servers: list[subprocess.Popen[bytes]] = []
    poller: RowPoller | None = None
    try:
        await recreate_schema(admin, ROWLOCK_SCHEMA)
        await load_products(admin, everything.stock)
        servers = _start_rowlock_services(processes, port, database_url, args.pg_connections)
        await _wait_http(f"http://127.0.0.1:{port}/healthz", baseline_http_rowlock.SYSTEM)
        orders = f"http://127.0.0.1:{port}/orders"
        log(label, f"{len(workload.requests):,} POSTs flat out, {processes} service processes")
        throughput = RowPoller(database_url, ROWLOCK_SCHEMA, workload.order_ids(), label)
        await throughput.start()
        try:
            first_sent, pg_done, problems, retries = await flat_out(
                orders, workload, throughput, args, label
            )
        finally:
            await throughput.stop()
        elapsed = pg_done - first_sent
        log(label, f"{len(workload.requests) / elapsed:,.0f}/s to PostgreSQL ({elapsed:.2f} s)")

        if rate is None:
            rate = sustained_rate(len(workload.requests) / elapsed)
        poller = RowPoller(
            database_url, ROWLOCK_SCHEMA, latency_workload.order_ids(), f"{label} latency"
        )
        await poller.start()
        paced = await _paced(orders, latency_workload, args, rate, label)
        problems += _answered(paced, label)
        await poller.wait()
        to_pg = [poller.seen[order_id] - due for order_id, due, _, _ in paced.rows]
        problems += await check_rowlock(admin, everything)
        pg = await server_settings(admin)
    finally:
        if poller is not None:
            await poller.stop()
        for server in servers:
            server.send_signal(signal.SIGTERM)
        for server in servers:
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
        await admin.close()
    return _result(
        baseline_http_rowlock.SYSTEM,
        (workload, latency_workload),
        args,
        elapsed,
        (rate, to_pg, paced, retries),
        problems,
        {"service_processes": processes, "pg_connections": args.pg_connections, **pg},
    )


async def _paced(
    orders: str, latency_workload: Workload, args: argparse.Namespace, rate: float, label: str
) -> LoadRun:
    """Send the latency phase's POSTs open loop at ``rate`` from the generator processes."""
    log(label, f"latency phase: {len(latency_workload.requests):,} POSTs at {rate:,.0f}/s")
    return await asyncio.to_thread(
        send,
        orders,
        latency_workload.requests,
        connections=args.connections,
        processes=args.generators,
        rate=rate,
    )


def sustained_rate(flat_out_per_s: float) -> float:
    """Return the open-loop rate for the latency phases: half what the row-lock service
    did flat out (a rate it sustains, with room), in steps of 50/s."""
    return max(50.0, (flat_out_per_s / 2) // 50 * 50)


def _start_rowlock_services(
    processes: int, port: int, database_url: str, pg_connections: int
) -> list[subprocess.Popen[bytes]]:
    """Start the row-lock service's processes on ``port``; their pool shares the connections."""
    WORKDIR.mkdir(parents=True, exist_ok=True)
    servers = []
    for n in range(processes):
        out = (WORKDIR / f"http-rowlock-{n}.log").open("wb")
        command = [
            sys.executable,
            "-m",
            "bench.baseline_http_rowlock",
            "--port",
            str(port),
            "--schema",
            ROWLOCK_SCHEMA,
            "--database-url",
            database_url,
            "--connections",
            str(max(1, pg_connections // processes)),
        ]
        servers.append(subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT))
    return servers


def report(results: list[Result]) -> str:
    """Return the results as a Markdown table with ratios, and the definitions under it."""
    by = {(r.system, r.workload): r for r in results}
    lines = [
        "| workload | system | requests | orders/s in PG | vs aiohttp+row lock | vs producer "
        "| open loop at | answer p50 / p99 ms | to PG row p50 / p99 ms | 503 retries "
        "| correct |",
        "|---|---|---:|---:|---:|---:|---:|---|---|---:|---|",
    ]
    for r in results:
        rowlock = by.get((baseline_http_rowlock.SYSTEM, r.workload))
        producer = by.get((PRODUCER, r.workload))
        ratios = [
            f"{r.rate_per_s / ref.rate_per_s:.2f}x" if ref is not None and ref.correct else "-"
            for ref in (rowlock, producer)
        ]
        answer = r.settings.get("latency_to_answer")
        answer_cell = (
            f"{answer['p50_ms']:.1f} / {answer['p99_ms']:.1f}" if isinstance(answer, dict) else "-"
        )
        pg = r.latency_to_pg
        pg_cell = "-" if pg is None else f"{pg.p50_ms:.1f} / {pg.p99_ms:.1f}"
        retries = r.settings.get("retries_503", "-")
        lines.append(
            f"| {r.workload} | {r.name} | {r.requests:,} | {r.rate_per_s:,.0f} | {ratios[0]} "
            f"| {ratios[1]} | {r.latency_rate_per_s or 0:,.0f}/s | {answer_cell} | {pg_cell} "
            f"| {retries} "
            f"| {'yes' if r.correct else 'NO'} |"
        )
    lines += [
        "",
        "orders/s in PG: requests / (first request sent -> last order row in PostgreSQL): "
        "every system as seen by a "
        f"{POLL_INTERVAL_S * 1000:.0f} ms poll of PostgreSQL. vs producer: over orderstream "
        "fed by one plain Kafka producer (a burst of record batches), same workload.",
        "Latency: a second stream of the same shape, open loop at the rate shown (half of what "
        "aiohttp+pg-rowlock did flat out on the workload, unless --latency-rate), each "
        "request from its due time to its HTTP answer (202), and to its orders row seen by "
        "the poll (orderstream (producer): to the row only).",
    ]
    return "\n".join(lines)


async def run_all(args: argparse.Namespace) -> list[Result]:
    base = Settings()
    results: list[Result] = []
    # The row-lock service first: the latency phases run at a rate it sustains.
    systems = sorted(args.system, key=lambda system: system != baseline_http_rowlock.SYSTEM)
    for workload, latency_workload in build_workloads(args.size, args.workload):
        log("bench-http", f"== {workload.name}: {len(workload.requests):,} requests")
        rate: float | None = args.latency_rate
        for system in systems:
            started = time.monotonic()
            if system == baseline_http_rowlock.SYSTEM:
                result = await run_http_rowlock(workload, latency_workload, rate, base, args)
                rate = result.latency_rate_per_s  # the others' latency phases run at it too
            elif system == PRODUCER:
                result = await run_orderstream(
                    workload, latency_workload, rate or FALLBACK_LATENCY_RATE, base, WORKDIR
                )
                result.system = PRODUCER
            else:
                result = await run_http_orderstream(
                    workload, latency_workload, rate or FALLBACK_LATENCY_RATE, base, args
                )
            result.settings["wall_s"] = round(time.monotonic() - started, 1)
            log(
                "bench-http",
                f"{result.name}/{result.workload}: {result.rate_per_s:,.0f}/s, "
                f"correct={result.correct} {result.problems[:3]}",
            )
            results.append(result)
    return results


def main() -> int:
    systems = (PRODUCER, HTTP, baseline_http_rowlock.SYSTEM)
    parser = argparse.ArgumentParser(description="POST /orders: orderstream vs aiohttp+row lock")
    parser.add_argument("--quick", action="store_true", help="small counts, a few minutes")
    parser.add_argument("--system", nargs="+", choices=systems, default=list(systems))
    parser.add_argument(
        "--workload", nargs="+", choices=("hot", "spread"), default=["hot", "spread"]
    )
    parser.add_argument(
        "--processes", type=int, help="door and service processes (default: one per core)"
    )
    parser.add_argument("--connections", type=int, default=64, help="keep-alive connections")
    parser.add_argument(
        "--generator",
        choices=("wrk", "python"),
        default="wrk" if shutil.which("wrk") else "python",
        help="what sends the flat-out phase (the open-loop phase is always Python)",
    )
    parser.add_argument(
        "--generators", type=int, default=2, help="load generator threads (wrk) or processes"
    )
    parser.add_argument("--pg-connections", type=int, default=32, help="row-lock service pool")
    parser.add_argument(
        "--latency-rate",
        type=float,
        help="open-loop requests/s of the latency phases (default: half of what the"
        " aiohttp+pg-rowlock service did flat out on the workload)",
    )
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    args.size = "quick" if args.quick else "full"
    output = args.output or RESULTS / ("http-quick.json" if args.quick else "http.json")
    results = uvloop.run(run_all(args))
    document = {
        "mode": args.size,
        "machine": {"cores": os.cpu_count(), "note": "everything on this one machine"},
        "results": [asdict(r) | {"name": r.name} for r in results],
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(document, indent=2) + "\n")
    print(report(results))
    print(f"\nwritten: {output}")
    for r in results:
        for problem in r.problems:
            print(f"INCORRECT {r.name}/{r.workload}: {problem}", file=sys.stderr)
    return 0 if all(r.correct for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
