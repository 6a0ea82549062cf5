"""The benchmark: orderstream against the designs it replaces, in one run.

    python -m bench.run [--quick]        (make bench / make bench-quick)

Every system gets the same workloads (bench/workload.py), on the same machine, against
the same PostgreSQL, timed with the same clock to the same end point (an order's row in
PostgreSQL); each result counts only if the system ended correct (no oversell, every
request decided once, stock conserved). Writes bench/results/latest.json and latest.png
(quick.json and quick.png with --quick).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import uvloop

from bench import baseline_groupcommit, baseline_pg, baseline_redis, orderstream_bench
from bench.baseline_groupcommit import run_pg_groupcommit
from bench.baseline_pg import run_pg_rowlock
from bench.baseline_redis import run_redis_lua
from bench.chart import write_chart
from bench.orderstream_bench import run_orderstream
from bench.result import BACKLOG, Latency, Result, format_line
from bench.timing import POLL_INTERVAL_S
from bench.workload import Workload, hot, spread
from orderstream import gc_tuning
from orderstream.settings import Settings

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
WORKDIR = REPO / ".stack" / "bench"
SYSTEMS = (
    orderstream_bench.SYSTEM,
    baseline_groupcommit.SYSTEM,
    baseline_pg.SYSTEM,
    baseline_redis.SYSTEM,
)
# Latency is measured for every system at one fixed rate, open loop: the default is one
# that the slowest system (the row lock on one hot product, ~1,300/s flat out on this
# machine) sustains, so every latency figure is a system below saturation.
DEFAULT_LATENCY_RATE = 500.0
LATENCY_PREFIX = "lat-"  # the latency phase's products and order ids, apart from the rest


@dataclass(frozen=True)
class Sizes:
    hot_requests: int
    hot_stock: int
    spread_requests: int
    spread_products: int
    latency_requests: int


SIZES = {
    "full": Sizes(100_000, 10_000, 200_000, 1_000, 20_000),
    "quick": Sizes(10_000, 1_000, 20_000, 100, 3_000),
}


def build_workloads(size: str, names: list[str]) -> list[tuple[Workload, Workload]]:
    """Return (throughput workload, latency workload of the same shape) per name."""
    sizes = SIZES[size]
    latency = sizes.latency_requests
    built = []
    if "hot" in names:
        # The latency phase reserves the same share of its requests as the burst.
        latency_stock = latency * sizes.hot_stock // sizes.hot_requests
        built.append(
            (
                hot(sizes.hot_requests, sizes.hot_stock),
                hot(latency, latency_stock, prefix=LATENCY_PREFIX),
            )
        )
    if "spread" in names:
        products = sizes.spread_products
        built.append(
            (
                spread(sizes.spread_requests, products),
                spread(latency, products, prefix=LATENCY_PREFIX),
            )
        )
    return built


async def run_all(args: argparse.Namespace) -> list[Result]:
    settings = Settings()
    database_url = settings.database_url.get_secret_value()
    results = []
    for workload, latency_workload in build_workloads(args.size, args.workload):
        print(
            f"== {workload.name}: {len(workload.requests):,} requests; latency phase "
            f"{len(latency_workload.requests):,} at {args.latency_rate:,.0f}/s",
            file=sys.stderr,
        )
        for system in args.system:
            # The harness's own collector pauses would delay its sends and reads, for
            # every system alike: the workload, built once, is frozen out of its sight.
            gc_tuning.tune()
            started = time.monotonic()
            rate = args.latency_rate
            if system == orderstream_bench.SYSTEM:
                runs = [await run_orderstream(workload, latency_workload, rate, settings, WORKDIR)]
            elif system == baseline_groupcommit.SYSTEM:
                runs = await run_pg_groupcommit(workload, latency_workload, rate, settings, WORKDIR)
            elif system == baseline_pg.SYSTEM:
                runs = [
                    await run_pg_rowlock(
                        workload, latency_workload, rate, database_url, args.clients
                    )
                ]
            else:
                runs = [
                    await run_redis_lua(
                        workload, latency_workload, rate, database_url, args.redis_url, args.clients
                    )
                ]
            for result in runs:
                result.settings["wall_s"] = round(time.monotonic() - started, 1)
                print(format_line(result), file=sys.stderr, flush=True)
            results.extend(runs)
    return results


def _reference(results: list[Result], system: str) -> dict[str, float]:
    """Return, per workload, the live rate of a correct run of ``system``."""
    return {
        r.workload: r.rate_per_s
        for r in results
        if r.system == system and r.mode != BACKLOG and r.correct
    }


def _latency_cells(latency: Latency | None) -> str:
    if latency is None:
        return "- | - | - | -"
    values = (latency.p50_ms, latency.p95_ms, latency.p99_ms, latency.max_ms)
    return " | ".join(f"{value:,.1f}" for value in values)


def report(results: list[Result], latency_rate: float) -> str:
    """Return the results as a Markdown table, with the definitions under it."""
    rowlock = _reference(results, baseline_pg.SYSTEM)
    groupcommit = _reference(results, baseline_groupcommit.SYSTEM)
    rate = f"{latency_rate:,.0f}/s"
    lines = [
        f"| workload | system | requests | orders/s in PG | decisions/s at topic | vs row lock "
        f"| vs group commit | p50 ms @{rate} | p95 ms | p99 ms | max ms "
        f"| to decision event p50/p95/p99/max ms @{rate} | correct |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in results:
        ratios = [
            f"{r.rate_per_s / ref[r.workload]:.2f}x" if r.workload in ref else "-"
            for ref in (rowlock, groupcommit)
        ]
        pg, dec = r.latency_to_pg, r.latency_to_decision
        topic = "-" if r.decision_rate_per_s is None else f"{r.decision_rate_per_s:,.0f}"
        to_decision = (
            "-"
            if dec is None
            else f"{dec.p50_ms:.1f} / {dec.p95_ms:.1f} / {dec.p99_ms:.1f} / {dec.max_ms:.1f}"
        )
        lines.append(
            f"| {r.workload} | {r.name} | {r.requests:,} | {r.rate_per_s:,.0f} | {topic} "
            f"| {ratios[0]} | {ratios[1]} | {_latency_cells(pg)} | {to_decision} "
            f"| {'yes' if r.correct else 'NO'} |"
        )
    poll = f"{POLL_INTERVAL_S * 1000:.0f} ms"
    lines += [
        "",
        "orders/s in PG: requests / (first request sent -> last order committed in "
        "PostgreSQL), the whole run. orderstream: first send of the burst -> the first "
        f"{poll} poll of PostgreSQL that shows every order row. pg-groupcommit: first send "
        "-> the writer's COMMIT of the last order returns; (backlog): all requests "
        "published first, the clock starts when the writer's consumers are positioned. "
        "pg-rowlock and redis-lua+pg: 32 closed-loop clients flat out, first request "
        "issued -> last COMMIT returns.",
        "decisions/s at topic (orderstream): requests / (first send -> the bench's "
        "consumer sees the last decision event on order-events).",
        "vs row lock / vs group commit: orders/s in PG over that of pg-rowlock / of "
        "pg-groupcommit (live), same workload.",
        f"Latency: a second set of requests of the same shape, issued open loop at {rate} "
        "(request n due at start + n / rate, Kafka-fed systems publish it then, the "
        "baselines hand it to a free connection of 32), each timed from its due time to "
        f"its orders row seen by a poll of PostgreSQL every {poll} (timed at the start of "
        f"the poll that first returns it: up to {poll} + one query late, about half that "
        "on average, for every system alike). To decision event (orderstream): due time "
        "-> the bench's consumer sees the order's event on order-events.",
    ]
    return "\n".join(lines)


def machine() -> dict[str, object]:
    return {
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "note": "Kafka broker, PostgreSQL, Redis, the load generator and the system under "
        "test all share this machine",
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description="orderstream vs PostgreSQL group commit vs row lock vs Redis Lua"
    )
    parser.add_argument("--quick", action="store_true", help="small counts, a few minutes")
    parser.add_argument("--system", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))
    parser.add_argument(
        "--workload", nargs="+", choices=("hot", "spread"), default=["hot", "spread"]
    )
    parser.add_argument("--clients", type=int, default=32, help="baseline connections")
    parser.add_argument(
        "--latency-rate",
        type=float,
        default=DEFAULT_LATENCY_RATE,
        help=f"requests/s of every system's latency phase (default {DEFAULT_LATENCY_RATE:.0f})",
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:56379/0")
    parser.add_argument("--output", type=Path, help="default: results/latest.json (quick.json)")
    args = parser.parse_args()
    args.size = "quick" if args.quick else "full"

    if args.output is None:
        # A quick run never overwrites the full results that docs/benchmarks.md shows.
        args.output = RESULTS / ("quick.json" if args.quick else "latest.json")
    if baseline_redis.SYSTEM in args.system:
        subprocess.run(["bash", str(REPO / "scripts" / "redis.sh"), "up"], check=True)
    results = uvloop.run(run_all(args))

    args.output.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "mode": args.size,
        "machine": machine(),
        "latency_rate_per_s": args.latency_rate,
        "poll_interval_ms": POLL_INTERVAL_S * 1000,
        "results": [asdict(r) | {"name": r.name} for r in results],
    }
    args.output.write_text(json.dumps(document, indent=2) + "\n")
    write_chart(results, args.output.with_suffix(".png"), args.latency_rate)
    print(report(results, args.latency_rate))
    print(f"\nmachine: {machine()}")
    print(f"written: {args.output} and {args.output.with_suffix('.png')}")
    for r in results:
        for problem in r.problems:
            print(f"INCORRECT {r.name}/{r.workload}: {problem}", file=sys.stderr)
    return 0 if all(r.correct for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
