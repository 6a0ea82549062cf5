"""A load generator for HTTP doors: a workload's requests as ``POST /orders``.

The requests are sent by processes of their own (multiprocessing, spawned), each an
aiohttp client with keep-alive connections, so the generator's CPU is not the bench's
event loop. Two ways to send:
- closed loop (``rate=None``): every connection sends its next request when the last
  one is answered, flat out;
- open loop at ``rate`` per second: request n is due at start + n / rate, whatever the
  answers; it waits for a free connection if every one is busy, and its latency runs
  from its due time, so queueing in front of a slow door counts.
A 503 (the door's backpressure) is retried after RETRY_AFTER_S: the Retry-After header
says at least a second, which a flash-sale client does not wait; the retries are
counted, and the latency includes them.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import signal
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import uvloop

from bench.timing import now
from bench.workload import Request

# Clients of every process wait until this long after the parent asked: spawning a
# Python process and opening its connections is setup, not load.
START_DELAY_S = 3.0
RETRY_AFTER_S = 0.05
MAX_ATTEMPTS = 50

Row = tuple[str, float, float, int]  # order id, due (or first sent), answered, status


@dataclass
class LoadRun:
    """Every request's due (or sent) time, answer time and final status; retries made."""

    rows: list[Row]
    retries: int

    @property
    def first_sent(self) -> float:
        return min(row[1] for row in self.rows)

    @property
    def last_answered(self) -> float:
        return max(row[2] for row in self.rows)

    def statuses(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for row in self.rows:
            counts[row[3]] = counts.get(row[3], 0) + 1
        return counts

    def latencies(self) -> list[float]:
        return [answered - due for _, due, answered, _ in self.rows]


def send(
    url: str,
    requests: Sequence[Request],
    *,
    connections: int,
    processes: int,
    rate: float | None = None,
) -> LoadRun:
    """POST every request to ``url`` from ``processes`` processes; return what each got.

    Blocks: call it from a thread (``asyncio.to_thread``) inside an event loop.
    """
    start = now() + START_DELAY_S
    jobs = [
        (
            url,
            [
                (n, r.order_id, r.user_id, r.product_id, r.quantity)
                for n, r in enumerate(requests)
                if n % processes == p
            ],
            max(1, connections // processes),
            rate,
            start,
        )
        for p in range(processes)
    ]
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        parts = pool.starmap(_process, jobs)
    rows = [row for part, _ in parts for row in part]
    return LoadRun(rows, sum(retries for _, retries in parts))


def _process(
    url: str,
    requests: list[tuple[int, str, str, str, int]],
    connections: int,
    rate: float | None,
    start: float,
) -> tuple[list[Row], int]:
    return uvloop.run(_clients(url, requests, connections, rate, start))


async def _clients(
    url: str,
    requests: list[tuple[int, str, str, str, int]],
    connections: int,
    rate: float | None,
    start: float,
) -> tuple[list[Row], int]:
    rows: list[Row] = []
    retries = 0
    connector = aiohttp.TCPConnector(limit=connections, force_close=False)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        health = url.rsplit("/", 1)[0] + "/healthz"

        async def warm() -> None:
            async with http.get(health) as response:
                await response.read()

        # Open every connection before the clock starts.
        await asyncio.gather(*(warm() for _ in range(connections)))

        async def post(order: tuple[int, str, str, str, int], due: float) -> None:
            nonlocal retries
            _, order_id, user_id, product_id, quantity = order
            body = json.dumps(
                {
                    "order_id": order_id,
                    "user_id": user_id,
                    "product_id": product_id,
                    "quantity": quantity,
                }
            ).encode()
            headers = {"Content-Type": "application/json"}
            status = 0
            for _ in range(MAX_ATTEMPTS):
                async with http.post(url, data=body, headers=headers) as response:
                    await response.read()
                    status = response.status
                if status != 503:
                    break
                retries += 1
                await asyncio.sleep(RETRY_AFTER_S)
            rows.append((order_id, due, now(), status))

        queue: asyncio.Queue[tuple[tuple[int, str, str, str, int], float] | None] = asyncio.Queue()

        async def client() -> None:
            while (item := await queue.get()) is not None:
                await post(*item)

        async def dispatch_open_loop(per_s: float) -> None:
            for order in requests:
                due = start + order[0] / per_s
                delay = due - now()
                if delay > 0:
                    await asyncio.sleep(delay)
                queue.put_nowait((order, due))
            for _ in range(connections):
                queue.put_nowait(None)

        async def closed_loop_client(orders: list[tuple[int, str, str, str, int]]) -> None:
            for order in orders:
                await post(order, now())

        delay = start - now()
        if delay > 0:
            await asyncio.sleep(delay)
        if rate is None:
            # Each connection takes every connections-th request: request order per
            # connection, and no shared queue to pay for.
            await asyncio.gather(
                *(closed_loop_client(requests[c::connections]) for c in range(connections))
            )
        else:
            await asyncio.gather(dispatch_open_loop(rate), *(client() for _ in range(connections)))
    return rows, retries


WRK_SCRIPT = Path(__file__).with_name("wrk_orders.lua")


class WrkLoad:
    """Send every request once as POST /orders with wrk, flat out (closed loop).

    wrk (C, epoll) costs the shared cores far less per request than a Python client, so
    a flat-out phase measures the door rather than the generator. It runs until
    ``stop`` (the caller knows when it has what it waits for); its threads stop sending
    once their POSTs are answered.
    """

    def __init__(self, url: str, requests: Sequence[Request], connections: int, threads: int):
        self._url, self._connections, self._threads = url, connections, threads
        self._bodies = tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False)  # noqa: SIM115
        with self._bodies:
            for r in requests:
                order = {
                    "order_id": r.order_id,
                    "user_id": r.user_id,
                    "product_id": r.product_id,
                    "quantity": r.quantity,
                }
                self._bodies.write(json.dumps(order) + "\n")
        self._process: subprocess.Popen[str] | None = None
        self.started = 0.0

    def start(self) -> None:
        self.started = now()
        self._process = subprocess.Popen(
            [
                "wrk",
                "-s",
                str(WRK_SCRIPT),
                "-t",
                str(self._threads),
                "-c",
                str(self._connections),
                "-d",
                "600s",
                self._url,
                "--",
                self._bodies.name,
                str(self._threads),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def stop(self) -> dict[int, int]:
        """End wrk; return the POSTs' answers by status."""
        process = self._process
        if process is None:
            return {}
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=30)
        Path(self._bodies.name).unlink(missing_ok=True)
        statuses: dict[int, int] = {}
        for line in output.splitlines():
            if line.startswith("status "):
                _, code, count = line.split()
                statuses[int(code)] = int(count)
        if not statuses:
            raise RuntimeError(f"wrk said no answers:\n{output}")
        return statuses
