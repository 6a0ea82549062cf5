"""When each local order next needs the expiry timer: a heap by deadline, not a table scan.

The order agent sets an order's deadline whenever it writes the order (the end of its
TTL while reserved or assembling, the end of its retention once final, none otherwise);
the timer takes what is due. After a rebalance the index is rebuilt from the table once
(its partitions changed), then kept up to date by the writes. An order handed to the
timer is due again ``retry_ms`` later unless a write moves it: an expire command the
agent found not due (another clock), or lost with a crash, is sent again.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable

__all__ = ["DeadlineIndex"]


class DeadlineIndex:
    """Order id -> when it is due; ``due`` takes the orders whose time has come."""

    def __init__(self, retry_ms: int) -> None:
        self._retry_ms = retry_ms
        self._due: dict[str, int] = {}
        self._heap: list[tuple[int, str]] = []  # may hold outdated entries, skipped
        # Rebuilt from the table before its first use, once the table is restored (a
        # rebalance completed): before that, the table is partial and nothing is due.
        self.stale = True
        self.table_restored = False

    def __len__(self) -> int:
        return len(self._due)

    def set(self, order_id: str, due_ms: int | None) -> None:
        """Set when ``order_id`` is due; None: never (it left the table, or cannot expire)."""
        if due_ms is None:
            self._due.pop(order_id, None)
            return
        if self._due.get(order_id) == due_ms:
            return
        self._due[order_id] = due_ms
        heapq.heappush(self._heap, (due_ms, order_id))
        if len(self._heap) > 2 * len(self._due) + 1024:
            self._compact()

    def rebuild(self, deadlines: Iterable[tuple[str, int | None]]) -> None:
        """Replace the index with ``deadlines`` (every local order's), after a rebalance."""
        self._due = {order_id: due for order_id, due in deadlines if due is not None}
        self._compact()
        self.stale = False

    def due(self, now_ms: int) -> list[str]:
        """Return the orders due at ``now_ms``; each is due again ``retry_ms`` later."""
        taken: dict[str, None] = {}
        while self._heap and self._heap[0][0] <= now_ms:
            due_ms, order_id = heapq.heappop(self._heap)
            # Moved or gone since this entry was pushed, or pushed twice for one time.
            if self._due.get(order_id) == due_ms:
                taken[order_id] = None
        for order_id in taken:
            self.set(order_id, now_ms + self._retry_ms)
        return list(taken)

    def _compact(self) -> None:
        self._heap = [(due, order_id) for order_id, due in self._due.items()]
        heapq.heapify(self._heap)
