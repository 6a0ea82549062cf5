"""What one decision costs without Kafka: the ceiling the per-event path is measured against.

    python -m bench.core [N]

Runs the stock agent's own work for N requests in a loop, in one process: the processor
(decode the request JSON, look up the hold, call the domain rule, build the hold and the
decision event), then what the store does with the effects (encode the hold, apply the
stock event). Dicts stand in for RocksDB; no Kafka client, no changelog, no sink.
"""

from __future__ import annotations

import sys
import time

from prometheus_client import CollectorRegistry

from orderstream.agents.stock.processor import SourceRecord, StockProcessor
from orderstream.domain import StockLevel, evolve
from orderstream.metrics import WorkerMetrics
from orderstream.settings import Settings
from orderstream.tables import encode_hold
from orderstream.topics import ORDER_REQUESTS

PRODUCT = "hot-1"
PARTITIONS = 1  # every product is owned here: nothing is forwarded


class DictPartition:
    """A partition's state in plain dicts (the processor's PartitionView)."""

    def __init__(self, stock: dict[str, StockLevel]) -> None:
        self.stock = stock
        self.holds: dict[bytes, bytes] = {}

    def level(self, product_id: str) -> StockLevel | None:
        return self.stock.get(product_id)

    def hold(self, key: bytes) -> bytes | None:
        return self.holds.get(key)

    def held(self, user_id: str, product_id: str) -> int:
        return 0


def run(requests: int) -> float:
    """Decide ``requests`` lines against one hot product; return decisions per second."""
    settings = Settings(partitions=PARTITIONS)
    processor = StockProcessor(settings, WorkerMetrics.register(CollectorRegistry()))
    topic = settings.topic(ORDER_REQUESTS)
    now_ms = int(time.time() * 1000)
    records = [
        SourceRecord(
            topic,
            0,
            n,
            now_ms,
            PRODUCT.encode(),
            b'{"order_id":"o-%d","user_id":"u-%d","product_id":"hot-1","quantity":1}'
            % (n, n % 50_000),
        )
        for n in range(requests)
    ]
    stock = requests // 10
    state = DictPartition({PRODUCT: StockLevel(available=stock, total_in=stock)})
    started = time.perf_counter()
    for record in records:
        effects = processor.process(record, state, now_ms)
        for key, hold in effects.holds:
            state.holds[key] = encode_hold(hold)
        for product_id, event in effects.stock:
            state.stock[product_id] = evolve(state.stock.get(product_id), event)
        if record.offset % 500 == 499:  # the end of a batch, as the stock agent fetches them
            processor.flush_metrics()
    elapsed = time.perf_counter() - started
    if len(state.holds) != requests or state.stock[PRODUCT].available != 0:
        raise RuntimeError("the loop did not decide every request")
    return requests / elapsed


def main() -> int:
    requests = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    rates = [run(requests) for _ in range(3)]
    print(
        f"decision core without Kafka: {max(rates):,.0f} decisions/s best of 3 "
        f"({', '.join(f'{r:,.0f}' for r in rates)}); {1e6 / max(rates):.1f} us per decision"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
