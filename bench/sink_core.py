"""What the sink spends per order without Kafka: decode a fetched batch, build rows, COPY.

    python -m bench.sink_core [N] [--batch B]

Encodes N order events as the stock agent writes them for a hot sale (a tenth reserved
at a price, the rest rejected), then, in batches of B as the sink fetches them: decodes
them as the sink does (sink/runner.py), builds the rows (sink/rows.py) and writes them
to PostgreSQL through the sink itself (COPY into staging, one merge per table), in a
schema of its own dropped afterwards. Prints this process's CPU per order for each step
(PostgreSQL's own CPU is not in it), best of 3. Needs the local PostgreSQL (make stack-up).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Callable
from decimal import Decimal

from orderstream.codec import decode_event, decode_request, encode_json
from orderstream.db import make_pool
from orderstream.domain import Decision, OrderStatus, RejectReason, StockLevel
from orderstream.settings import Settings
from orderstream.sink import PostgresSink, drop_schema, migrate
from orderstream.sink.base import LocatedEvent, SinkBatch
from orderstream.sink.rows import batch_rows
from orderstream.tables import Hold

PRODUCT = "hot-1"


def encoded_events(count: int) -> list[bytes]:
    """The decision events of a hot sale, as the stock agent writes them."""
    level = StockLevel(available=count, total_in=count, price=Decimal("19.99"), currency="EUR")
    now_ms = int(time.time() * 1000)
    events = []
    for n in range(count):
        reserved = n % 10 == 0
        decision = (
            Decision(status=OrderStatus.RESERVED)
            if reserved
            else Decision(status=OrderStatus.REJECTED, reason=RejectReason.OUT_OF_STOCK)
        )
        raw = b'{"order_id":"o-%d","user_id":"u-%d","product_id":"%s","quantity":1}' % (
            n,
            n,
            PRODUCT.encode(),
        )
        hold = Hold.of(
            decode_request(raw),
            decision,
            now_ms,
            now_ms + 1,
            stock_version=n + 1 if reserved else None,
            level=level if reserved else None,
        )
        events.append(encode_json(hold.decision_event()))
    return events


def timed(step: Callable[[], object]) -> tuple[object, float]:
    started = time.process_time()
    result = step()
    return result, time.process_time() - started


async def one_run(
    sink: PostgresSink, raw: list[bytes], batch: int, offset: int
) -> dict[str, float]:
    spent = {"decode": 0.0, "rows": 0.0, "write": 0.0}
    for start in range(0, len(raw), batch):
        chunk = raw[start : start + batch]

        def decode(chunk: list[bytes] = chunk, start: int = start) -> SinkBatch:
            located = [
                LocatedEvent(decode_event(value), 0, offset + start + n)
                for n, value in enumerate(chunk)
            ]
            return SinkBatch(order_events=located)

        decoded, seconds = timed(decode)
        assert isinstance(decoded, SinkBatch)
        spent["decode"] += seconds
        _, seconds = timed(lambda decoded=decoded: batch_rows(decoded))
        spent["rows"] += seconds
        started = time.process_time()
        await sink.write(decoded)  # builds the rows again: counted once, under rows
        spent["write"] += time.process_time() - started - seconds
    return spent


async def main_async(count: int, batch: int) -> int:
    settings = Settings(database_schema=f"sink_core_{os.getpid()}")
    await migrate(settings)
    pool = make_pool(settings)
    await pool.open(wait=True)
    try:
        sink = PostgresSink(pool)
        raw = encoded_events(count)
        runs = []
        for attempt in range(3):
            spent = await one_run(sink, raw, batch, attempt * count)
            runs.append({step: seconds * 1e6 / count for step, seconds in spent.items()})
    finally:
        await pool.close()
        await drop_schema(settings)
    best = min(runs, key=lambda run: sum(run.values()))
    totals = ", ".join(f"{sum(run.values()):.1f}" for run in runs)
    print(
        f"sink core, {count:,} events in batches of {batch}: "
        f"{sum(best.values()):.1f} us of sink CPU per order best of 3 ({totals}): "
        + ", ".join(f"{step} {us:.1f}" for step, us in best.items())
    )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("count", nargs="?", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args()
    return asyncio.run(main_async(args.count, args.batch))


if __name__ == "__main__":
    sys.exit(main())
