"""A sale as a shopper lives it: from the request to the order's final state.

    python -m bench.settle [--units 10000] [--requests 50000] [--instant] [--ttl S] [--audit]

One product with ``units`` in stock meets ``requests`` single-line orders published as a
burst from a plain Kafka producer, while ``orderstream run`` runs on its defaults (stock
agent, order lifecycle, sink, status service). Timed from the first send:
- decided: every order has its row in PostgreSQL (the stock agent's decision reached it);
- final: every order is in a terminal state in PostgreSQL (paid and confirmed, cancelled
  by a declined payment, rejected or expired), and no unit is reserved.
Then the invariants: every order final once, stock conserved, nothing reserved, ``sold``
= the quantity of CONFIRMED lines. ``--instant`` makes the mock provider answer at once
(0-1 ms) so that the lifecycle itself, not the provider's delay, is what is measured.
``--audit`` runs `orderstream audit` once every order is decided (the lifecycle still
paying) and once every order is final, and reports what each said.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import uvloop

from bench.kafka_load import publish_burst
from bench.orderstream_bench import Deployment, set_stock
from bench.timing import log, now
from bench.workload import Workload, hot
from orderstream.settings import Settings
from orderstream.topics import ORDER_REQUESTS

REPO = Path(__file__).resolve().parents[1]
WORKDIR = REPO / ".stack" / "bench"
TERMINAL = "('CONFIRMED', 'REJECTED', 'CANCELLED', 'EXPIRED')"
POLL_S = 0.1


@dataclass
class SettleResult:
    units: int
    requests: int
    instant_payment: bool
    order_ttl_s: float
    publish_s: float
    decided_s: float  # first send -> every order's row in PostgreSQL
    final_s: float  # first send -> every order terminal, nothing reserved
    final_after_last_request_s: float
    settled_per_s: float  # reserved orders settled / (decided -> final) ... see below
    # --lifecycle-later: the lifecycle started once every order was decided; reserved
    # orders settled per second from its readiness to every order final (its own pace).
    lifecycle_alone_per_s: float | None = None
    statuses: dict[str, int] = field(default_factory=dict)
    # CPU milliseconds per unit sold or released, by process (run, worker, sink, orders...)
    cpu_ms_per_unit: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    audits: list[str] = field(default_factory=list)  # when, exit code, last line

    @property
    def correct(self) -> bool:
        return not self.problems

    def line(self) -> str:
        return (
            f"settle {self.units:,} units / {self.requests:,} requests"
            f"{' (instant payment)' if self.instant_payment else ''}: "
            f"decided {self.decided_s:.1f} s, every order final {self.final_s:.1f} s "
            f"({self.final_after_last_request_s:.1f} s after the last request), "
            f"{self.settled_per_s:,.0f} reserved orders settled/s, "
            + (
                f"the lifecycle alone {self.lifecycle_alone_per_s:,.0f}/s, "
                if self.lifecycle_alone_per_s is not None
                else ""
            )
            + f"EXPIRED {self.statuses.get('EXPIRED', 0)}, "
            f"{'correct' if self.correct else 'INCORRECT'}"
        )


async def _wait(deployment: Deployment, label: str, what: str, sql: str, target: int) -> float:
    """Poll ``sql`` (a count) until it reaches ``target``; return when, with progress."""
    last_report = started = now()
    while True:
        count = await deployment.scalar(sql)
        at = now()
        if count >= target:
            return at
        dead = deployment.dead()
        if dead:
            raise RuntimeError(f"{dead} died; {count:,}/{target:,} {what}")
        if at - started > 600:
            raise TimeoutError(f"{count:,}/{target:,} {what} after 600 s")
        if at - last_report >= 5:
            log(label, f"{count:,}/{target:,} {what}")
            last_report = at
        await asyncio.sleep(POLL_S)


async def check_settled(deployment: Deployment, workload: Workload) -> list[str]:
    """Check the invariants once every order is final."""
    problems = []
    [(product, stock)] = workload.stock.items()
    orders = await deployment.scalar("SELECT count(*) FROM orders")
    if orders != len(workload.requests):
        problems.append(f"{orders:,} orders in PostgreSQL, expected {len(workload.requests):,}")
    twice = await deployment.scalar(
        "SELECT count(*) FROM (SELECT order_id FROM order_events "
        f"WHERE status IN {TERMINAL} GROUP BY order_id HAVING count(*) > 1) t"
    )
    if twice:
        problems.append(f"{twice} orders with more than one terminal event")
    open_ = await deployment.scalar(f"SELECT count(*) FROM orders WHERE status NOT IN {TERMINAL}")
    if open_:
        problems.append(f"{open_} orders not final")
    available = await deployment.scalar(
        f"SELECT available FROM product_stock WHERE product_id = '{product}'"
    )
    reserved = await deployment.scalar(
        f"SELECT reserved FROM product_stock WHERE product_id = '{product}'"
    )
    sold = await deployment.scalar(f"SELECT sold FROM product_stock WHERE product_id = '{product}'")
    if available + reserved + sold != stock or min(available, reserved, sold) < 0:
        problems.append(f"stock not conserved: {available} + {reserved} + {sold} != {stock}")
    if reserved:
        problems.append(f"{reserved} units still reserved")
    confirmed = await deployment.scalar(
        "SELECT coalesce(sum(i.quantity), 0) FROM order_items i JOIN orders o USING (order_id) "
        "WHERE o.status = 'CONFIRMED'"
    )
    if confirmed != sold:
        problems.append(f"sold {sold} but CONFIRMED lines hold {confirmed}")
    return problems


async def _audit(deployment: Deployment, when: str) -> str:
    """Run `orderstream audit` against the deployment; return when, its exit and verdict."""
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "orderstream", "audit"],
        env=deployment.env(),
        capture_output=True,
        text=True,
        check=False,
    )
    lines = (done.stdout + done.stderr).strip().splitlines()
    failed = [line for line in lines if line.startswith("FAIL")]
    verdict = "; ".join(failed[:3]) or (lines[-1] if lines else "")
    log("orderstream/settle", f"audit {when}: exit {done.returncode}: {verdict}")
    return f"{when}: exit {done.returncode}: {verdict}"


async def run_settle(
    base: Settings,
    units: int,
    requests: int,
    instant: bool,
    ttl_s: float | None,
    audit: bool = False,
    lifecycle_later: bool = False,
) -> SettleResult:
    label = "orderstream/settle"
    workload = hot(requests, units, seed=3, prefix="settle-")
    updates: dict[str, object] = {}
    if instant:
        updates |= {"payment_delay_min_s": 0.0, "payment_delay_max_s": 0.001}
    if ttl_s is not None:
        updates["order_ttl_s"] = ttl_s
    if lifecycle_later:
        # The lifecycle in its own process, started once the sale is decided: its pace
        # alone, not shared with the stock agent's deciding.
        updates["run_lifecycle"] = False
    WORKDIR.mkdir(parents=True, exist_ok=True)
    deployment = await Deployment.create(base.model_copy(update=updates), WORKDIR)
    settings = deployment.settings
    try:
        deployment.start("run")
        await set_stock(deployment, workload.stock)
        if not lifecycle_later:
            # A drop starts once the lifecycle has joined its group and restored its table.
            await deployment.wait_until("the order lifecycle", deployment.lifecycle_ready)
        cpu_start = deployment.cpu_by_command("run")
        burst = await publish_burst(
            settings.kafka_bootstrap,
            settings.topic(ORDER_REQUESTS),
            settings.partitions,
            workload.requests,
            label,
        )
        decided_at = await _wait(
            deployment, label, "orders in PostgreSQL", "SELECT count(*) FROM orders", requests
        )
        log(label, f"every order decided in PostgreSQL after {decided_at - burst.first_send:.2f} s")
        audits = [await _audit(deployment, "mid-sale (every order decided)")] if audit else []
        if lifecycle_later:
            deployment.start("orders")
            await deployment.wait_until("the order lifecycle", deployment.lifecycle_ready)
            lifecycle_from = now()
            log(label, "the lifecycle is ready; settling the decided sale")
        final_at = await _wait(
            deployment,
            label,
            "orders final",
            f"SELECT count(*) FROM orders WHERE status IN {TERMINAL}",
            requests,
        )
        await _wait(
            deployment,
            label,
            "products with nothing reserved",
            "SELECT count(*) FROM product_stock WHERE reserved = 0",
            1,
        )
        log(label, f"every order final after {final_at - burst.first_send:.2f} s")
        # CPU per unit on sale (a reserved order each) of each process of the sale: less
        # at the mercy of the machine's other work than a rate is.
        cpu_end = deployment.cpu_by_command("run")
        if lifecycle_later:
            cpu_end |= deployment.cpu_by_command("orders")
        cpu_ms = {
            command: round((spent - cpu_start.get(command, 0.0)) * 1000 / units, 3)
            for command, spent in cpu_end.items()
        }
        log(label, f"CPU ms per unit on sale, by process: {cpu_ms}")
        rows = await deployment.scalar(
            "SELECT count(*) FROM orders WHERE status <> 'REJECTED' OR reason <> 'OUT_OF_STOCK'"
        )
        statuses = {}
        for status in ("CONFIRMED", "CANCELLED", "EXPIRED", "REJECTED"):
            statuses[status] = await deployment.scalar(
                f"SELECT count(*) FROM orders WHERE status = '{status}'"
            )
        problems = await check_settled(deployment, workload)
        if audit:
            audits.append(await _audit(deployment, "after (every order final)"))
    finally:
        await deployment.stop()
    settle_window = max(final_at - burst.first_send, 1e-9)
    return SettleResult(
        units=units,
        requests=requests,
        instant_payment=instant,
        order_ttl_s=settings.order_ttl_s,
        publish_s=round(burst.last_acked - burst.first_send, 3),
        decided_s=round(decided_at - burst.first_send, 3),
        final_s=round(final_at - burst.first_send, 3),
        final_after_last_request_s=round(final_at - burst.last_acked, 3),
        # Orders that went through the lifecycle (reserved, then paid, cancelled or
        # expired) per second of the whole sale, first send to the last one final.
        settled_per_s=round(rows / settle_window, 1),
        statuses=statuses,
        cpu_ms_per_unit=cpu_ms,
        problems=problems,
        audits=audits,
        lifecycle_alone_per_s=(
            round(rows / max(final_at - lifecycle_from, 1e-9), 1) if lifecycle_later else None
        ),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description="time a sale to every order's final state")
    parser.add_argument("--units", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--instant", action="store_true", help="mock payment answers at once")
    parser.add_argument("--ttl", type=float, help="ORDERSTREAM_ORDER_TTL_S for the run")
    parser.add_argument("--audit", action="store_true", help="orderstream audit mid-sale and after")
    parser.add_argument(
        "--lifecycle-later",
        action="store_true",
        help="start the lifecycle once every order is decided: time its pace alone",
    )
    parser.add_argument("--output", type=Path, help="write the result as JSON here")
    args = parser.parse_args()
    result = uvloop.run(
        run_settle(
            Settings(),
            args.units,
            args.requests,
            args.instant,
            args.ttl,
            args.audit,
            args.lifecycle_later,
        )
    )
    print(result.line())
    for audit in result.audits:
        print(f"audit {audit}")
    for problem in result.problems:
        print(f"INCORRECT: {problem}", file=sys.stderr)
    if args.output:
        args.output.write_text(json.dumps(asdict(result), indent=2) + "\n")
    return 0 if result.correct else 1


if __name__ == "__main__":
    sys.exit(main())
