"""The fault matrix: each fault, several times, during a sale on the real local stack.

    python -m bench.faults [--runs 3] [--requests 5000] [--fault NAME ...]   (make faults)

Each run is its own deployment (topics, groups, schema, data dir): `orderstream worker`
and `orderstream sink` as processes, 20 products with 100 units each, and a sale of
--requests distinct orders published at a steady pace while the fault happens. Then the
books are checked in PostgreSQL: every accepted order decided once (lost = accepted
orders missing, duplicated = extra rows or events), no product oversold or out of
balance (available + reserved + sold = stock put in, none negative, reserved = the
RESERVED orders' quantity). "Seconds to recover" is from the fault (or its end: the
broker back, PostgreSQL back) to the decision of a probe request published then on
every product's partition, or for PostgreSQL to the sink having written everything;
for "SIGTERM with the broker down" it is the seconds the worker and the sink take to exit
(the slower of the two) on SIGTERM while the broker is down, a problem from 30 s.

The broker and PostgreSQL faults stop the stack's servers (scripts/stack.sh kafka-kill,
pg-stop): run it where nothing else uses the stack.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from tests.integration.pipeline import REPO
from tests.integration.test_replay import reset_sink_offsets, sink_caught_up, snapshot, truncate

from bench.fault_sale import Outcome, Sale
from orderstream.settings import Settings


def log(message: str) -> None:
    print(f"[faults] {message}", file=sys.stderr, flush=True)


def stack(command: str) -> None:
    subprocess.run(["bash", str(REPO / "scripts" / "stack.sh"), command], check=True)


# --- the faults: each runs one sale and returns its outcome -----------------------------


async def worker_kill(sale: Sale, outcome: Outcome) -> None:
    sale.start("worker")
    sale.start("sink")
    await sale.ready()

    async def kill(now: float) -> None:
        sale.pipe.kill("worker")
        sale.start("worker")
        sale.probe_from(time.monotonic())

    await sale.publish(at=kill)
    outcome.recover_s = await sale.probed()


async def scale_out_and_fail(sale: Sale, outcome: Outcome) -> None:
    """1 -> 2 workers, then the first is killed: its partitions fail over to the second."""
    sale.start("worker", "worker-a")
    sale.start("sink")
    await sale.ready()

    async def join_then_kill(now: float) -> None:
        sale.start("worker", "worker-b")
        await asyncio.sleep(8)  # the group rebalances onto both
        sale.pipe.kill("worker-a")
        sale.probe_from(time.monotonic())

    await sale.publish(at=join_then_kill)
    outcome.recover_s = await sale.probed()


async def worker_paused(sale: Sale, outcome: Outcome) -> None:
    """Worker A paused (SIGSTOP) 15 s, past its session: B takes its partitions; A
    resumes and writes what it had in hand before it learns; then B is killed and A
    restores everything from the changelog (which must drop A's fenced records)."""
    sale.start("worker", "worker-a")
    sale.start("sink")
    await sale.ready()
    sale.start("worker", "worker-b")
    await asyncio.sleep(8)  # the group rebalances onto both

    async def pause_resume_kill() -> None:
        worker_a = sale.pipe.processes["worker-a"]
        worker_a.send_signal(signal.SIGSTOP)
        await asyncio.sleep(15)
        worker_a.send_signal(signal.SIGCONT)
        await asyncio.sleep(3)
        sale.pipe.kill("worker-b")
        sale.probe_from(time.monotonic())

    faults: list[asyncio.Task[None]] = []

    async def pause(now: float) -> None:
        faults.append(asyncio.create_task(pause_resume_kill()))  # the sale goes on

    await sale.publish(at=pause)
    await asyncio.gather(*faults)
    outcome.recover_s = await sale.probed()


# The lifecycle's own process with quick payments (90 % paid): a sale settles in seconds.
LIFECYCLE_ENV = {
    "ORDERSTREAM_ORDERS_METRICS_PORT": "0",
    "ORDERSTREAM_PAYMENT_DELAY_MIN_S": "0.05",
    "ORDERSTREAM_PAYMENT_DELAY_MAX_S": "0.3",
}


async def lifecycle_kill(sale: Sale, outcome: Outcome) -> None:
    """`orderstream orders` killed -9 mid-payment and restarted: every order must still
    end final once, nothing reserved, sold = what the CONFIRMED orders bought."""
    sale.start("worker")
    sale.start("sink")
    sale.start("orders", **LIFECYCLE_ENV)
    await sale.ready()

    killed_at: list[float] = []

    async def kill(now: float) -> None:
        sale.pipe.kill("orders")
        killed_at.append(time.monotonic())
        sale.start("orders", **LIFECYCLE_ENV)

    await sale.publish(at=kill)
    await sale.settled(outcome)
    # Recovery here: from the kill to every order of the sale final.
    outcome.recover_s = time.monotonic() - killed_at[0]


async def broker_kill(sale: Sale, outcome: Outcome) -> None:
    sale.start("worker")
    sale.start("sink")
    await sale.ready()

    async def kill(now: float) -> None:
        stack("kafka-kill")
        await asyncio.sleep(5)
        stack("kafka-up")
        sale.probe_from(time.monotonic())

    try:
        await sale.publish(at=kill)
    except Exception as exc:  # the bench's own producer may give up while Kafka is down
        log(f"publisher: {exc!r}; re-sending the sale (duplicates have one effect)")
        await sale.publish()
    outcome.recover_s = await sale.probed()


async def postgres_stop(sale: Sale, outcome: Outcome) -> None:
    sale.start("worker")
    sale.start("sink")
    await sale.ready()
    back_at = 0.0

    async def stop(now: float) -> None:
        nonlocal back_at
        stack("pg-stop")
        await asyncio.sleep(30)
        stack("pg-up")
        back_at = time.monotonic()

    await sale.publish(at=stop)
    await sale.drained()
    outcome.recover_s = time.monotonic() - back_at


async def duplicates_and_hostile(sale: Sale, outcome: Outcome) -> None:
    sale.start("worker")
    sale.start("sink")
    await sale.ready()
    await sale.publish(copies=3, hostile_every=100)


async def replay(sale: Sale, outcome: Outcome) -> None:
    sale.start("worker")
    sale.start("sink")
    await sale.ready()
    await sale.publish()
    await sale.drained()
    await sale.pipe.wait_for("the sink to commit", lambda: sink_caught_up(sale.pipe), watch=None)
    before = await snapshot(sale.pipe)
    sale.pipe.stop("sink")
    await truncate(sale.pipe)
    reset_sink_offsets(sale.pipe)
    started = time.monotonic()
    sale.start("sink")
    await sale.drained()
    await sale.pipe.wait_for("the rebuild", lambda: sink_caught_up(sale.pipe), watch=None)
    outcome.recover_s = time.monotonic() - started
    if await snapshot(sale.pipe) != before:
        outcome.problems.append("replayed tables differ from the originals")


# A role asked to stop must exit within this, even when the broker is gone.
EXIT_BOUND_S = 30.0


async def terminate(sale: Sale, role: str, outcome: Outcome) -> float:
    """SIGTERM ``role``; return the seconds it took to exit (kill -9 after twice the bound)."""
    process = sale.pipe.processes.pop(role)
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        await asyncio.to_thread(process.wait, 2 * EXIT_BOUND_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    took = time.monotonic() - started
    if process.returncode == -signal.SIGKILL:
        outcome.problems.append(f"{role} did not exit within {took:.0f} s of SIGTERM")
    elif took >= EXIT_BOUND_S:
        outcome.problems.append(f"{role} took {took:.1f} s to exit on SIGTERM")
    log(f"{role}: exited {process.returncode} {took:.1f} s after SIGTERM, the broker down")
    return took


async def sigterm_broker_down(sale: Sale, outcome: Outcome) -> None:
    """Stop the worker and the sink while the broker is down; a new pair sells after it."""
    sale.start("worker")
    sale.start("sink")
    await sale.ready()
    stack("kafka-kill")
    try:
        took = await asyncio.gather(
            terminate(sale, "worker", outcome), terminate(sale, "sink", outcome)
        )
    finally:
        stack("kafka-up")
    outcome.recover_s = max(took)
    sale.start("worker")
    sale.start("sink")
    await sale.publish()


FAULTS: dict[str, Callable[[Sale, Outcome], Awaitable[None]]] = {
    "worker kill -9, restart": worker_kill,
    "1 -> 2 workers, one killed": scale_out_and_fail,
    "worker paused past its session": worker_paused,
    "lifecycle kill -9 mid-payment, restart": lifecycle_kill,
    "broker kill -9, back after 5 s": broker_kill,
    "PostgreSQL stopped 30 s": postgres_stop,
    "duplicates x3 + 1 % hostile": duplicates_and_hostile,
    "replay onto emptied tables": replay,
    "SIGTERM with the broker down": sigterm_broker_down,
}


async def run_fault(name: str, runs: int, requests: int, workdir: Path) -> list[Outcome]:
    outcomes = []
    for run in range(1, runs + 1):
        sale = Sale(Settings(), workdir, requests)
        outcome = Outcome()
        log(f"{name}: run {run}/{runs}")
        try:
            await sale.setup()
            await FAULTS[name](sale, outcome)
            await sale.drained()
            await sale.books(outcome)
        except Exception as exc:
            outcome.problems.append(f"{exc!r}"[:300])
            log(f"{name}: run {run} failed: {exc!r}\n{sale.pipe.logs()[-3000:]}")
        finally:
            await sale.drop()
        log(f"{name}: run {run}: {outcome} (logs in {sale.pipe.workdir})")
        outcomes.append(outcome)
    return outcomes


def table(results: dict[str, list[Outcome]]) -> str:
    lines = [
        "| fault | runs | requests | decided | lost | duplicated | oversold | seconds to recover |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, outcomes in results.items():
        recovers = [o.recover_s for o in outcomes if o.recover_s is not None]
        recover = (
            f"{statistics.median(recovers):.1f} (max {max(recovers):.1f})" if recovers else "-"
        )
        total = {
            key: sum(getattr(o, key) for o in outcomes)
            for key in ("requests", "decided", "lost", "duplicated", "oversold")
        }
        failed = sum(1 for o in outcomes if o.problems)
        lines.append(
            f"| {name} | {len(outcomes)}{f' ({failed} with problems)' if failed else ''} "
            f"| {total['requests']:,} | {total['decided']:,} | {total['lost']} "
            f"| {total['duplicated']} | {total['oversold']} | {recover} |"
        )
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="orderstream-faults-"))
    results = {}
    for name in args.fault or list(FAULTS):
        results[name] = await run_fault(name, args.runs, args.requests, workdir)
    print(table(results))
    problems = [p for outcomes in results.values() for o in outcomes for p in o.problems]
    for problem in problems:
        print(f"problem: {problem}")
    bad = any(o.lost or o.duplicated or o.oversold for v in results.values() for o in v)
    return 1 if bad or problems else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--requests", type=int, default=5_000)
    parser.add_argument("--fault", action="append", choices=list(FAULTS))
    sys.exit(asyncio.run(main(parser.parse_args())))
