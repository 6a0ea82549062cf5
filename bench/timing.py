"""The one clock and the one end point every system is timed with.

Clock: ``time.monotonic()`` (CLOCK_MONOTONIC, one clock for every process on the
machine, so a time printed by a child process compares with the bench's own).
End point: an order's row visible in PostgreSQL, seen by ``RowPoller``.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Sequence

import psycopg
from psycopg.rows import TupleRow

PROGRESS_EVERY_S = 5.0
# How often the poller asks PostgreSQL for newly visible rows. A row is timed at the
# start of the first poll that returns it, so the figure is late by at most one poll
# interval plus that poll's query time (on average about half the interval).
POLL_INTERVAL_S = 0.02
# A poll reads its range in pages of this many rows (keyset pagination).
POLL_PAGE = 20_000

_FIRST_PAGE = (
    "SELECT order_id FROM orders WHERE order_id >= %s AND order_id <= %s ORDER BY order_id LIMIT %s"
)
_NEXT_PAGE = (
    "SELECT order_id FROM orders WHERE order_id > %s AND order_id <= %s ORDER BY order_id LIMIT %s"
)

# Heap tuples after a given one: PostgreSQL 14+ reads only those pages (TID range scan).
_APPENDED = "SELECT order_id, ctid::text FROM orders WHERE ctid > %s::tid"
# With appended reads, a poll by id runs after this long without a new row.
SWEEP_AFTER_S = 0.5

now = time.monotonic


def log(label: str, message: str) -> None:
    """Print a progress line to stderr, flushed (long phases must show they are alive)."""
    print(f"[{label}] {message}", file=sys.stderr, flush=True)


class RowPoller:
    """Poll the ``orders`` table for a known set of ids; note when each first appears.

    Two ways to find the rows that appeared since the last poll:
    - by id (the default): order ids are zero-padded with one prefix per set
      (bench/workload.py), so request order is id order in Python and in any collation,
      and a poll reads one primary-key range, in pages, from the lowest id not seen yet
      to the last id wanted. A row visible ahead of a lower one is read again on every
      poll until the lower one appears: cheap when rows appear about in request order
      (a paced phase), costly when one partition lags far behind the others (a burst
      over partitions of unequal load reads the same rows again, poll after poll);
    - appended (``appended=True``): read only the heap tuples after the last one read
      (a TID range scan on ``ctid``). Exact for a table that only one transaction at a
      time inserts into and nothing deletes from, as orderstream's sink does. Should a
      row ever land behind the last one read, a poll by id runs whenever no new row
      appeared for ``SWEEP_AFTER_S``, and what it finds is counted in ``swept``
      (such a row is timed late by up to that long).
    """

    def __init__(
        self,
        database_url: str,
        schema: str,
        order_ids: Sequence[str],
        label: str,
        interval_s: float = POLL_INTERVAL_S,
        appended: bool = False,
    ) -> None:
        self._url, self._schema = database_url, schema
        self._ids = sorted(order_ids)
        self._wanted = frozenset(self._ids)
        self.appended = appended
        self.swept = 0  # rows found by a poll by id that the appended reads had missed
        self._after_tid = (0, 0)  # the last heap tuple an appended read returned
        if len(set(self._ids)) != len(self._ids):
            raise ValueError("order ids must be distinct")
        self.label = label
        self.interval_s = interval_s
        self.seen: dict[str, float] = {}
        self.all_seen_at: float | None = None  # poll time at which the last id appeared
        self.polls = 0
        self.rows_read = 0  # what polling cost: rows read again count each time
        self._next = 0  # index of the lowest id not seen yet
        self._task: asyncio.Task[None] | None = None
        self._conn: psycopg.AsyncConnection[TupleRow] | None = None

    async def start(self) -> None:
        """Connect and start polling."""
        self._conn = await psycopg.AsyncConnection.connect(
            self._url, autocommit=True, options=f"-c search_path={self._schema}"
        )
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop polling and close the connection."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._conn is not None:
            await self._conn.close()

    def done(self) -> bool:
        return self.all_seen_at is not None

    async def _run(self) -> None:
        # Autocommit: every poll is its own statement and sees every commit before it.
        last_new = now()
        while self._next < len(self._ids):
            started = now()
            if not self.appended:
                await self._poll_by_id(started)
            elif await self._poll_appended(started):
                last_new = started
            elif started - last_new > SWEEP_AFTER_S:
                self.swept += await self._poll_by_id(started)
                last_new = started
            self.polls += 1
            while self._next < len(self._ids) and self._ids[self._next] in self.seen:
                self._next += 1
            if self._next == len(self._ids):
                self.all_seen_at = started
                return
            await asyncio.sleep(max(0.0, started + self.interval_s - now()))

    async def _poll_by_id(self, started: float) -> int:
        """Read the id range from the lowest id not seen; return how many were new."""
        assert self._conn is not None
        before = len(self.seen)
        query, low, page = _FIRST_PAGE, self._ids[self._next], None
        while page is None or len(page) == POLL_PAGE:
            # Every page of one poll is timed at the poll's start.
            cursor = await self._conn.execute(query, (low, self._ids[-1], POLL_PAGE))
            page = await cursor.fetchall()
            self.rows_read += len(page)
            for (order_id,) in page:
                self.seen.setdefault(order_id, started)
            if page:
                query, low = _NEXT_PAGE, page[-1][0]
        return len(self.seen) - before

    async def _poll_appended(self, started: float) -> int:
        """Read the tuples after the last one read; return how many were new wanted rows."""
        assert self._conn is not None
        before = len(self.seen)
        cursor = await self._conn.execute(
            _APPENDED, (f"({self._after_tid[0]},{self._after_tid[1]})",)
        )
        rows = await cursor.fetchall()
        self.rows_read += len(rows)
        for order_id, tid in rows:
            if order_id in self._wanted:
                self.seen.setdefault(order_id, started)
            page, item = tid.strip("()").split(",")
            self._after_tid = max(self._after_tid, (int(page), int(item)))
        return len(self.seen) - before

    async def wait(
        self,
        alive: Callable[[], str | None] = lambda: None,
        timeout_s: float = 600.0,
        extra: Callable[[], str] = lambda: "",
    ) -> float:
        """Wait until every id was seen; return when. ``alive`` names a dead process."""
        deadline = now() + timeout_s
        async with Progress(
            self.label, "in PostgreSQL", len(self._ids), lambda: len(self.seen), extra
        ):
            while self.all_seen_at is None:
                if self._task is not None and self._task.done():
                    self._task.result()  # a failed poll raises here
                dead = alive()
                if dead:
                    raise RuntimeError(
                        f"{dead} died; {len(self.seen)}/{len(self._ids)} in PostgreSQL"
                    )
                if now() > deadline:
                    raise TimeoutError(
                        f"{self.label}: {len(self.seen)}/{len(self._ids)} in PostgreSQL "
                        f"after {timeout_s:.0f} s"
                    )
                await asyncio.sleep(0.05)
        return self.all_seen_at


class Progress:
    """Print ``done/total`` and the rate every few seconds while a phase runs."""

    def __init__(
        self,
        label: str,
        what: str,
        total: int,
        count: Callable[[], int],
        extra: Callable[[], str] = lambda: "",
    ) -> None:
        self.label, self.what, self.total = label, what, total
        self.count, self.extra = count, extra
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Progress:
        self._task = asyncio.create_task(self._report())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _report(self) -> None:
        started = last_at = now()
        first = last_done = self.count()
        while True:
            await asyncio.sleep(PROGRESS_EVERY_S)
            at, done = now(), self.count()
            rate_now = (done - last_done) / (at - last_at)
            extra = self.extra()
            log(
                self.label,
                f"{done:,}/{self.total:,} {self.what}, {rate_now:,.0f}/s now, "
                f"{(done - first) / (at - started):,.0f}/s since this phase began"
                + (f"; {extra}" if extra else ""),
            )
            last_done, last_at = done, at


async def wait_for(
    label: str,
    what: str,
    total: int,
    count: Callable[[], int],
    alive: Callable[[], str | None] = lambda: None,
    timeout_s: float = 600.0,
    poll_s: float = 0.01,
) -> None:
    """Wait until ``count()`` reaches ``total``, with progress lines and a deadline."""
    deadline = now() + timeout_s
    async with Progress(label, what, total, count):
        while count() < total:
            dead = alive()
            if dead:
                raise RuntimeError(f"{dead} died; {count()}/{total} {what}")
            if now() > deadline:
                raise TimeoutError(f"{label}: {count()}/{total} {what} after {timeout_s:.0f} s")
            await asyncio.sleep(poll_s)


async def at(when: float) -> None:
    """Sleep until the monotonic time ``when`` (at once if it has passed)."""
    delay = when - now()
    if delay > 0:
        await asyncio.sleep(delay)
