"""Restore and failover of the stock agent after a flash sale, measured on the real stack.

    python -m bench.restore [--requests 100000 1000000] [--stock 10000]   (make bench-restore)

For each size: a worker decides a flash sale of that many requests for one hot product
(so its partition holds that many holds in the changelog); then the worker is killed
with SIGKILL and a replacement started at once. Printed per size:
- restore: the replacement's own log line, "restored partitions [...] in X s";
- kill -> first decision: from the SIGKILL to the first decision event of a request
  published right after the kill (the group waits out the dead member's session,
  ORDERSTREAM_SESSION_TIMEOUT_S, before it hands the partitions over).
Each deployment has its own topics, group and data dir, deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from orderstream.admin import all_topic_specs, create_topics
from orderstream.agents.stock.batcher import RecordBatcher
from orderstream.domain import owner_partition
from orderstream.producer import publish_stock_command
from orderstream.settings import Settings
from orderstream.topics import ORDER_EVENTS, ORDER_REQUESTS

REPO = Path(__file__).resolve().parents[1]
PRODUCT = "sku-restore"
_RESTORED = re.compile(r"restored partitions \[[0-9, ]+\] in ([0-9.]+) s")
_RESTORED_WHICH = re.compile(r"restored partitions \[([0-9, ]+)\] in")


def log(message: str) -> None:
    print(f"[restore] {message}", file=sys.stderr, flush=True)


def request(n: int, tag: str = "") -> bytes:
    order = {"order_id": f"{tag}o-{n}", "user_id": f"u-{n % 5000}", "product_id": PRODUCT}
    return json.dumps(order | {"quantity": 1}).encode()


class Worker:
    """One `orderstream worker` process with its log file."""

    def __init__(self, settings: Settings, workdir: Path, name: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ORDERSTREAM_")}
        self.log_path = workdir / f"{name}.log"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "orderstream", "worker"],
            env=env | settings.to_env(),
            cwd=workdir,
            stdout=self.log_path.open("wb"),
            stderr=subprocess.STDOUT,
        )

    def restored_in(self) -> float | None:
        found = _RESTORED.findall(self.log_path.read_text(errors="replace"))
        return float(found[-1]) if found else None


async def end_offsets(settings: Settings, topic: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(settings.partitions)]
        return sum((await consumer.end_offsets(tps)).values())
    finally:
        await consumer.stop()


async def publish_sale(settings: Settings, requests: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, max_batch_size=65536)
    await producer.start()
    topic, partition = settings.topic(ORDER_REQUESTS), owner_partition(PRODUCT, settings.partitions)
    try:
        for start in range(0, requests, 5000):
            batcher = RecordBatcher(settings.partitions)
            for n in range(start, min(start + 5000, requests)):
                batcher.add(topic, PRODUCT.encode(), request(n), partition)
            await asyncio.gather(*await batcher.send(producer))
    finally:
        await producer.stop()


async def wait_for_events(settings: Settings, count: int, what: str) -> None:
    started = last = time.monotonic()
    topic = settings.topic(ORDER_EVENTS)
    while (seen := await end_offsets(settings, topic)) < count:
        if time.monotonic() - last > 5:
            last = time.monotonic()
            rate = seen / (last - started)
            log(f"{what}: {seen}/{count} decisions, {rate:.0f}/s")
        await asyncio.sleep(0.5)


async def first_decision_after(settings: Settings, order_id: str, deadline_s: float) -> float:
    """Return the time.time() at which the decision of ``order_id`` is first seen."""
    consumer = AIOKafkaConsumer(
        settings.topic(ORDER_EVENTS),
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="latest",
        group_id=f"restore-watch-{uuid.uuid4().hex[:8]}",
    )
    await consumer.start()
    try:
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=50)).values():
                for record in records:
                    if record.key == order_id.encode():
                        return time.time()
        raise TimeoutError(f"no decision for {order_id} within {deadline_s} s")
    finally:
        await consumer.stop()


def owner_of(workers: list[Worker], partition: int) -> Worker:
    """Return the worker that restored ``partition`` last (its current owner)."""
    latest: tuple[str, Worker] | None = None
    for worker in workers:
        for line in worker.log_path.read_text(errors="replace").splitlines():
            found = _RESTORED_WHICH.search(line)
            owns = found is not None and str(partition) in found.group(1).split(", ")
            if owns and (latest is None or line[:23] > latest[0]):
                latest = (line[:23], worker)
    if latest is None:
        raise RuntimeError(f"no worker restored partition {partition}")
    return latest[1]


async def wait_for_log(worker: Worker, pattern: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while pattern not in worker.log_path.read_text(errors="replace"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{worker.log_path.name} never said {pattern!r}")
        await asyncio.sleep(0.2)


async def measure(
    base: Settings,
    requests: int,
    stock: int,
    workdir: Path,
    worker_id: str | None,
    standby: bool = False,
) -> dict[str, float]:
    run_id = f"r{uuid.uuid4().hex[:8]}"
    settings = base.model_copy(
        update={
            "topic_prefix": f"{run_id}.",
            "app_id": f"orderstream-{run_id}",
            "data_dir": workdir / run_id,
            "worker_id": worker_id,
            "standby_replicas": 1 if standby else 0,
        }
    )
    await create_topics(settings)
    workers: list[Worker] = []
    try:
        await publish_stock_command(settings, PRODUCT, "set", stock)
        first = Worker(settings, workdir, f"{run_id}-first")
        workers.append(first)
        log(f"{requests} requests: publishing the sale")
        await publish_sale(settings, requests)
        await wait_for_events(settings, requests, "first worker")
        survivor: Worker | None = None
        if standby:
            # A second worker joins: the group splits the partitions, each worker stands
            # by for the other's. The owner of the sale's partition is killed once the
            # other's standby of it has read the whole changelog.
            workers.append(
                Worker(settings.model_copy(update={"worker_id": None}), workdir, f"{run_id}-second")
            )
            partition = owner_partition(PRODUCT, settings.partitions)
            await wait_for_log(workers[1], "restored partitions", 120)
            await asyncio.sleep(1)
            first = owner_of(workers, partition)
            survivor = next(worker for worker in workers if worker is not first)
            await wait_for_log(survivor, f"standby of partition {partition} caught up", 300)
            log(f"{requests} requests: {survivor.log_path.name} stands by, caught up")
        await asyncio.sleep(2)  # a commit interval or two: the kill lands after commits

        # A watcher subscribes first, so that it sees the decision whatever the timing.
        watcher = asyncio.create_task(first_decision_after(settings, "after-kill", 300))
        await asyncio.sleep(3)
        killed_at = time.time()
        first.process.send_signal(signal.SIGKILL)
        first.process.wait()
        if survivor is None:
            replacement = Worker(settings, workdir, f"{run_id}-replacement")
            workers.append(replacement)
        else:
            replacement = survivor  # takes the partition over after the session timeout
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(
                settings.topic(ORDER_REQUESTS),
                key=PRODUCT.encode(),
                value=json.dumps(
                    {"order_id": "after-kill", "user_id": "u", "product_id": PRODUCT, "quantity": 1}
                ).encode(),
            )
        finally:
            await producer.stop()
        decided_at = await watcher
        restore_s = replacement.restored_in()
        result = {
            "requests": requests,
            "restore_s": restore_s if restore_s is not None else float("nan"),
            "kill_to_first_decision_s": decided_at - killed_at,
            "session_timeout_s": settings.session_timeout_s,
            "standby": standby,
        }
        log(f"{requests} requests: {result}")
        return result
    finally:
        for worker in workers:
            if worker.process.poll() is None:
                worker.process.kill()
                worker.process.wait()
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
        await admin.start()
        try:
            await admin.delete_topics([spec.name for spec in all_topic_specs(settings)])
        finally:
            await admin.close()


async def main(args: argparse.Namespace) -> None:
    workdir = REPO / ".stack" / "bench-restore"
    workdir.mkdir(parents=True, exist_ok=True)
    results = [
        await measure(Settings(), n, args.stock, workdir, args.worker_id, args.standby)
        for n in args.requests
    ]
    how = "standby" if args.standby else "restore"
    print(f"| requests in the sale | holds in the partition | {how} | kill -9 -> first decision |")
    print("|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['requests']:,} | {r['requests']:,} | {r['restore_s']:.2f} s "
            f"| {r['kill_to_first_decision_s']:.2f} s "
            f"(session timeout {r['session_timeout_s']:.0f} s) |"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--stock", type=int, default=10_000)
    parser.add_argument(
        "--worker-id", help="ORDERSTREAM_WORKER_ID of both workers (static membership)"
    )
    parser.add_argument(
        "--standby",
        action="store_true",
        help="a second worker with standbys (ORDERSTREAM_STANDBY_REPLICAS=1) takes over",
    )
    asyncio.run(main(parser.parse_args()))
