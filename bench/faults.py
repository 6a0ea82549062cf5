"""The fault matrix: each fault, several times, during a sale on the real local stack.

    python -m bench.faults [--runs 3] [--requests 5000] [--fault NAME ...] [--stack DIR]
    (make faults)

Each run is its own deployment (topics, groups, schema, data dir): `orderstream run` on
its defaults as a process (stock agent, sink, status service, and the order lifecycle in
a child process; the mock provider pays 90 % of orders in 50-300 ms), 20 products with
100 units each, and a sale of --requests distinct orders published at a steady pace
while the fault happens. "Seconds to recover" is from the fault (or its end: the broker
back, PostgreSQL back) to the decision of a probe request published then on every
product's partition, or for PostgreSQL to the sink having written everything; for the
lifecycle's kill, to its restarted child having restored every order partition; for
"SIGTERM with the broker down" it is the seconds `orderstream run` takes to exit on
SIGTERM while the broker is down, a problem from 30 s.

After every fault the sale must settle (bench/fault_sale.py, ``Sale.settle``): every
order final in PostgreSQL and nothing reserved, timed from the fault; then the books
(every accepted order once, lost = missing, duplicated = extra rows, a status twice in
an order's history or two terminal states; "oversold" = products whose stock is not
conserved, is negative, or whose sold differs from the quantity of their CONFIRMED
lines; stock still reserved is a problem too, and makes the sale not final) and
`orderstream audit`, which must exit 0.

The broker and PostgreSQL faults stop the stack's servers (scripts/stack.sh kafka-kill,
pg-stop, of the checkout given by --stack): run it where nothing else uses the stack.
"""

from __future__ import annotations

import argparse
import asyncio
import os
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

from bench.fault_sale import Outcome, Sale, log
from orderstream.settings import Settings

# --- the faults: each runs one sale through its fault; run_fault settles it --------------


async def worker_kill(sale: Sale, outcome: Outcome) -> None:
    """`orderstream run` killed -9 (its stock agent, sink and lifecycle child at once) and
    restarted: the replacement takes its partitions over."""
    sale.start()
    await sale.ready()

    async def kill(now: float) -> None:
        killed_at = sale.fault()
        sale.pipe.kill("run")
        sale.start()
        sale.probe_from(killed_at)

    await sale.publish(at=kill)
    outcome.recover_s = await sale.probed()


async def scale_out_and_fail(sale: Sale, outcome: Outcome) -> None:
    """1 -> 2 processes, then the first is killed: its partitions (stock, sink and
    lifecycle) fail over to the second."""
    sale.start("run-a")
    await sale.ready()

    async def join_then_kill(now: float) -> None:
        sale.start("run-b")
        await asyncio.sleep(8)  # the groups rebalance onto both
        killed_at = sale.fault()
        sale.pipe.kill("run-a")
        sale.probe_from(killed_at)

    await sale.publish(at=join_then_kill)
    outcome.recover_s = await sale.probed()


async def worker_paused(sale: Sale, outcome: Outcome) -> None:
    """Process A and its lifecycle child paused (SIGSTOP) 15 s, past their sessions: B
    takes their partitions; A resumes and writes what it had in hand before it learns;
    then B is killed and A restores everything from the changelogs (which must drop A's
    fenced records)."""
    sale.start("run-a")
    await sale.ready()
    sale.start("run-b")
    await asyncio.sleep(8)  # the groups rebalance onto both

    async def pause_resume_kill() -> None:
        paused = sale.family("run-a")
        sale.fault()
        for pid in paused:
            os.kill(pid, signal.SIGSTOP)
        await asyncio.sleep(15)
        for pid in paused:
            os.kill(pid, signal.SIGCONT)
        await asyncio.sleep(3)
        sale.pipe.kill("run-b")
        sale.probe_from(time.monotonic())

    faults: list[asyncio.Task[None]] = []

    async def pause(now: float) -> None:
        faults.append(asyncio.create_task(pause_resume_kill()))  # the sale goes on

    await sale.publish(at=pause)
    await asyncio.gather(*faults)
    outcome.recover_s = await sale.probed()


async def lifecycle_kill(sale: Sale, outcome: Outcome) -> None:
    """The lifecycle child (`orderstream orders`) killed -9 mid-payment: `orderstream
    run` restarts it, and every order must still end final once."""
    sale.start()
    await sale.ready()
    restored: list[asyncio.Task[float]] = []

    async def kill(now: float) -> None:
        killed_at = sale.fault()
        killed = sale.kill_lifecycle()
        restored.append(asyncio.create_task(sale.lifecycle_restored(killed_at, killed)))

    await sale.publish(at=kill)
    outcome.recover_s = await restored[0]


async def broker_kill(sale: Sale, outcome: Outcome) -> None:
    sale.start()
    await sale.ready()

    async def kill(now: float) -> None:
        sale.fault()
        sale.stack("kafka-kill")
        await asyncio.sleep(5)
        sale.stack("kafka-up")
        sale.probe_from(time.monotonic())

    try:
        await sale.publish(at=kill)
    except Exception as exc:  # the bench's own producer may give up while Kafka is down
        log(f"publisher: {exc!r}; re-sending the sale (duplicates have one effect)")
        await sale.publish()
    outcome.recover_s = await sale.probed()


async def postgres_stop(sale: Sale, outcome: Outcome) -> None:
    sale.start()
    await sale.ready()
    back_at = 0.0

    async def stop(now: float) -> None:
        nonlocal back_at
        sale.fault()
        sale.stack("pg-stop")
        await asyncio.sleep(30)
        sale.stack("pg-up")
        back_at = time.monotonic()

    await sale.publish(at=stop)
    await sale.drained()
    outcome.recover_s = time.monotonic() - back_at


async def duplicates_and_hostile(sale: Sale, outcome: Outcome) -> None:
    sale.start()
    await sale.ready()
    sale.fault()  # the whole sale is the fault
    await sale.publish(copies=3, hostile_every=100)


async def replay(sale: Sale, outcome: Outcome) -> None:
    """Once the sale is settled: stop `orderstream run`, empty the tables, rewind the
    sink's group with Kafka's tool, start it again: the same tables must come back."""
    sale.start()
    await sale.ready()
    await sale.publish()
    pending = await sale.all_final()
    if any(pending.values()):
        raise RuntimeError(f"the sale did not settle before the replay: {pending}")
    await sale.pipe.wait_for("the sink to commit", lambda: sink_caught_up(sale.pipe), watch=None)
    before = await snapshot(sale.pipe)
    sale.pipe.stop("run")
    await truncate(sale.pipe)
    reset_sink_offsets(sale.pipe, sale.stack_root)
    started = sale.fault()
    sale.start()
    await sale.drained()
    await sale.pipe.wait_for("the rebuild", lambda: sink_caught_up(sale.pipe), watch=None)
    outcome.recover_s = time.monotonic() - started
    if await snapshot(sale.pipe) != before:
        outcome.problems.append("replayed tables differ from the originals")


# A process asked to stop must exit within this, even when the broker is gone.
EXIT_BOUND_S = 30.0


async def terminate(sale: Sale, name: str, outcome: Outcome) -> float:
    """SIGTERM process ``name``; return the seconds it took to exit (kill -9 after twice
    the bound). Its children must be gone with it."""
    family = sale.family(name)
    process = sale.pipe.processes.pop(name)
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        await asyncio.to_thread(process.wait, 2 * EXIT_BOUND_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    took = time.monotonic() - started
    if process.returncode == -signal.SIGKILL:
        outcome.problems.append(f"{name} did not exit within {took:.0f} s of SIGTERM")
    elif took >= EXIT_BOUND_S:
        outcome.problems.append(f"{name} took {took:.1f} s to exit on SIGTERM")
    for pid, command in family.items():
        if Path(f"/proc/{pid}/cmdline").exists() and Path(f"/proc/{pid}/cmdline").read_bytes():
            outcome.problems.append(f"{name} exited, its child orderstream {command} did not")
            os.kill(pid, signal.SIGKILL)
    log(f"{name}: exited {process.returncode} {took:.1f} s after SIGTERM, the broker down")
    return took


async def sigterm_broker_down(sale: Sale, outcome: Outcome) -> None:
    """Stop `orderstream run` while the broker is down; a new one sells after it."""
    sale.start()
    await sale.ready()
    sale.fault()
    sale.stack("kafka-kill")
    try:
        outcome.recover_s = await terminate(sale, "run", outcome)
    finally:
        sale.stack("kafka-up")
    sale.start()
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


async def run_fault(
    name: str, runs: int, requests: int, workdir: Path, stack_root: Path
) -> list[Outcome]:
    outcomes = []
    for run in range(1, runs + 1):
        sale = Sale(Settings(), workdir, requests, stack_root)
        outcome = Outcome()
        log(f"{name}: run {run}/{runs}")
        try:
            await sale.setup()
            await FAULTS[name](sale, outcome)
            await sale.settle(outcome)
        except Exception as exc:
            outcome.problems.append(f"{exc!r}"[:300])
            log(f"{name}: run {run} failed: {exc!r}\n{sale.pipe.logs()[-3000:]}")
        finally:
            await sale.drop()
        log(f"{name}: run {run}: {outcome} (logs in {sale.pipe.workdir})")
        outcomes.append(outcome)
    return outcomes


def seconds(values: list[float]) -> str:
    """Return the median and the largest of ``values``, as the table shows them."""
    return f"{statistics.median(values):.1f} ({max(values):.1f})" if values else "-"


def table(results: dict[str, list[Outcome]]) -> str:
    lines = [
        "| fault | runs | requests | decided | lost | duplicated | oversold "
        "| seconds to recover (median, max) | every order final, s after the fault "
        "(median, max) | audit ok |",
        "|---|---:|---:|---:|---:|---:|---:|---|---|---|",
    ]
    for name, outcomes in results.items():
        total = {
            key: sum(getattr(o, key) for o in outcomes)
            for key in ("requests", "decided", "lost", "duplicated", "oversold")
        }
        failed = sum(1 for o in outcomes if o.problems)
        final = [o.final_s for o in outcomes if o.final_s is not None]
        not_final = sum(1 for o in outcomes if not o.final)
        audited = sum(1 for o in outcomes if o.audit_ok)
        runs = len(outcomes)
        lines.append(
            f"| {name} | {len(outcomes)}{f' ({failed} with problems)' if failed else ''} "
            f"| {total['requests']:,} | {total['decided']:,} | {total['lost']} "
            f"| {total['duplicated']} | {total['oversold']} "
            f"| {seconds([o.recover_s for o in outcomes if o.recover_s is not None])} "
            f"| {f'no, in {not_final} of {runs} runs' if not_final else 'yes'}: {seconds(final)} "
            f"| {'yes' if audited == runs else f'no, {runs - audited} of {runs} runs'} |"
        )
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="orderstream-faults-"))
    results = {}
    for name in args.fault or list(FAULTS):
        results[name] = await run_fault(name, args.runs, args.requests, workdir, args.stack)
    print(table(results))
    for name, outcomes in results.items():
        for run, outcome in enumerate(outcomes, 1):
            print(f"audit: {name}, run {run}: {outcome.audit or 'not run'}")
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
    parser.add_argument(
        "--stack",
        type=Path,
        default=REPO,
        help="the checkout whose scripts/stack.sh runs the local stack (its .stack folder "
        "holds the broker, PostgreSQL and Kafka's tools; default: this one)",
    )
    sys.exit(asyncio.run(main(parser.parse_args())))
