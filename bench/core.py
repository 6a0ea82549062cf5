"""What one decision costs without Kafka: the ceiling the per-event path is measured against.

    python -m bench.core [N]

Runs the stock agent's own work for N requests in a loop, in one process: decode the
request JSON, look up and decode the stock level and the hold (dict lookups standing in
for RocksDB), call the domain rule, encode the new stock level, the hold and the decision
event. Everything the worker does per request except Faust's stream machinery, the
Kafka client and RocksDB.
"""

from __future__ import annotations

import sys
import time

from orderstream.domain import LineRequest, StockLevel, reserve_line
from orderstream.tables import Hold, hold_key
from orderstream.topics import OrderRequest, StockChange, decode


def run(requests: int) -> float:
    """Decide ``requests`` lines against one hot product; return decisions per second."""
    raw = [
        (
            b'{"order_id":"o-%d","user_id":"u-%d","product_id":"hot-1","quantity":1}'
            % (n, n % 50_000)
        )
        for n in range(requests)
    ]
    stock: dict[bytes, bytes] = {
        b"hot-1": StockLevel(available=requests // 10, total_in=requests // 10)
        .model_dump_json()
        .encode()
    }
    holds: dict[bytes, bytes] = {}
    started = time.perf_counter()
    for value in raw:
        request = decode(OrderRequest, value)
        key = hold_key(request.order_id, request.product_id)
        if key in holds:
            continue
        level = StockLevel.model_validate_json(stock[request.product_id.encode()])
        line = LineRequest(product_id=request.product_id, quantity=request.quantity)
        decision, new_level = reserve_line(level, line, 10)
        now_ms = int(time.time() * 1000)
        snapshot = None
        if new_level is not None:
            stock[request.product_id.encode()] = new_level.model_dump_json().encode()
            snapshot = StockChange.of(request.product_id, new_level, now_ms)
        hold = Hold.of(request, decision, now_ms, now_ms)
        holds[key] = hold.model_dump_json().encode()
        hold.decision_event(snapshot).model_dump_json().encode()
    return requests / (time.perf_counter() - started)


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
