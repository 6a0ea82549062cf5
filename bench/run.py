"""The benchmark: orderstream against the designs it replaces, in one run.

    python -m bench.run [--quick]        (make bench / make bench-quick)

Every system gets the same workloads (bench/workload.py), on the same machine, against
the same PostgreSQL; each result counts only if the system ended correct (no oversell,
every request decided once). Writes bench/results/latest.json and latest.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import uvloop

from bench import baseline_pg, baseline_redis
from bench.baseline_pg import run_pg_rowlock
from bench.baseline_redis import run_redis_lua
from bench.chart import write_chart
from bench.orderstream_bench import SYSTEM_NAMES, run_orderstream
from bench.result import Result, format_line
from bench.workload import Workload, hot, spread
from orderstream.settings import Settings

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
ENGINES = {system: engine for engine, system in SYSTEM_NAMES.items()}
SYSTEMS = (*ENGINES, baseline_pg.SYSTEM, baseline_redis.SYSTEM)
BASELINE = baseline_pg.SYSTEM  # ratios are to the classic row-lock design

# (requests, stock of the hot product | number of products), latency-phase requests
SIZES = {
    "full": {"hot": (100_000, 10_000), "spread": (200_000, 1_000), "latency": 20_000},
    "quick": {"hot": (10_000, 1_000), "spread": (20_000, 100), "latency": 3_000},
}


def build_workloads(size: str, names: list[str]) -> list[Workload]:
    sizes = SIZES[size]
    built = []
    if "hot" in names:
        built.append(hot(requests=sizes["hot"][0], stock=sizes["hot"][1]))
    if "spread" in names:
        built.append(spread(requests=sizes["spread"][0], products=sizes["spread"][1]))
    return built


async def run_all(args: argparse.Namespace) -> list[Result]:
    settings = Settings()
    database_url = settings.database_url.get_secret_value()
    size = "quick" if args.quick else "full"
    results = []
    for workload in build_workloads(size, args.workload):
        print(f"== {workload.name}: {len(workload.requests)} requests", file=sys.stderr)
        for system in args.system:
            started = time.monotonic()
            if system in ENGINES:
                result = await run_orderstream(
                    workload,
                    settings,
                    REPO / ".stack" / "bench",
                    latency_requests=SIZES[size]["latency"],
                    engine=ENGINES[system],
                )
            elif system == baseline_pg.SYSTEM:
                result = await run_pg_rowlock(workload, database_url, args.clients)
            else:
                result = await run_redis_lua(workload, database_url, args.redis_url, args.clients)
            result.settings["wall_s"] = round(time.monotonic() - started, 1)
            print(format_line(result), file=sys.stderr, flush=True)
            results.append(result)
    return results


def report(results: list[Result]) -> str:
    """Return the results as a Markdown table with the ratio to the row-lock baseline."""
    base = {r.workload: r.decisions_per_s for r in results if r.system == BASELINE and r.correct}
    lines = [
        "| workload | system | decisions/s | vs row lock | p50 ms | p95 ms | p99 ms | max ms "
        "| correct |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        ratio = f"{r.decisions_per_s / base[r.workload]:.1f}x" if r.workload in base else "-"
        lines.append(
            f"| {r.workload} | {r.system} | {r.decisions_per_s:,.0f} | {ratio} | {r.p50_ms:.1f} "
            f"| {r.p95_ms:.1f} | {r.p99_ms:.1f} | {r.max_ms:.1f} | {'yes' if r.correct else 'NO'} |"
        )
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
    parser = argparse.ArgumentParser(description="orderstream vs row lock vs Redis Lua")
    parser.add_argument("--quick", action="store_true", help="small counts, about two minutes")
    parser.add_argument("--system", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))
    parser.add_argument(
        "--workload", nargs="+", choices=("hot", "spread"), default=["hot", "spread"]
    )
    parser.add_argument("--clients", type=int, default=32, help="baseline connections")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:56379/0")
    parser.add_argument("--output", type=Path, help="default: results/latest.json (quick.json)")
    args = parser.parse_args()

    if args.output is None:
        # A quick run never overwrites the full results that the README shows.
        args.output = RESULTS / ("quick.json" if args.quick else "latest.json")
    if baseline_redis.SYSTEM in args.system:
        subprocess.run(["bash", str(REPO / "scripts" / "redis.sh"), "up"], check=True)
    results = uvloop.run(run_all(args))

    args.output.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "mode": "quick" if args.quick else "full",
        "machine": machine(),
        "results": [asdict(r) for r in results],
    }
    args.output.write_text(json.dumps(document, indent=2) + "\n")
    write_chart(results, args.output.with_suffix(".png"))
    print(report(results))
    print(f"\nmachine: {machine()}")
    print(f"written: {args.output} and {args.output.with_suffix('.png')}")
    for r in results:
        for problem in r.problems:
            print(f"INCORRECT {r.system}/{r.workload}: {problem}", file=sys.stderr)
    return 0 if all(r.correct for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
