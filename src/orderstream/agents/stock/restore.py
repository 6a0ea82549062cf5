"""Rebuild partitions' stores from the stock changelog, a fetch at a time, with progress."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition

from orderstream.agents.stock.store import PartitionStore, RestoreReport

log = logging.getLogger(__name__)

__all__ = ["restore_partitions"]

_PROGRESS_S = 5.0


async def restore_partitions(
    reader: AIOKafkaConsumer,
    changelog: str,
    partitions: list[int],
    root: Path,
    standbys: Mapping[int, tuple[PartitionStore, int]] | None = None,
) -> dict[int, PartitionStore]:
    """Return a store per partition, rebuilt from ``changelog`` with ``reader`` (no group).

    The stores are new (under ``root``/<partition>): the changelog is the truth. A
    partition with a standby (its store, and the offset it has read to) goes on from
    there instead.
    """
    started = time.monotonic()
    standbys = standbys or {}
    stores = {
        partition: standbys[partition][0]
        if partition in standbys
        else PartitionStore(root / str(partition))
        for partition in partitions
    }
    assigned = [TopicPartition(changelog, p) for p in partitions]
    reader.assign(assigned)
    await reader.seek_to_beginning(*assigned)
    starts = await reader.beginning_offsets(assigned)
    for tp in assigned:
        if tp.partition in standbys:
            starts[tp] = max(starts[tp], standbys[tp.partition][1])
            reader.seek(tp, starts[tp])
    if standbys:
        log.info(
            "taking over partitions %s from their standbys at offsets %s",
            sorted(standbys),
            {p: offset for p, (_, offset) in sorted(standbys.items())},
        )
    ends = await reader.end_offsets(assigned)
    total = sum(ends[tp] - starts[tp] for tp in assigned)
    read = 0
    last_progress = started
    remaining = {tp for tp in assigned if ends[tp] > starts[tp]}
    while remaining:
        # One fetch at a time, applied and dropped: memory stays flat however long the
        # changelog is.
        for tp, records in (await reader.getmany(timeout_ms=500)).items():
            store = stores[tp.partition]
            for record in records:
                if record.offset < ends[tp] and record.key is not None:
                    store.restore(record.key, record.value, record.timestamp, record.headers)
            read += len(records)
            if records and records[-1].offset + 1 >= ends[tp]:
                remaining.discard(tp)
        remaining = {tp for tp in remaining if await reader.position(tp) < ends[tp]}
        now = time.monotonic()
        if now - last_progress > _PROGRESS_S:
            last_progress = now
            rate = read / (now - started)
            eta = (total - read) / rate if rate else float("inf")
            log.info(
                "restoring partitions %s: %d of ~%d records, %.0f/s, about %.0f s left",
                partitions,
                read,
                total,
                rate,
                eta,
            )
    reader.assign([])
    for partition, store in stores.items():
        _report(changelog, partition, store.finish_restore())
    log.info("restored partitions %s in %.2f s", partitions, time.monotonic() - started)
    return stores


def _report(changelog: str, partition: int, report: RestoreReport) -> None:
    if report.orphans:
        log.error(
            "changelog %s partition %d has reservations of products with no stock snapshot: %s",
            changelog,
            partition,
            report.orphans[:10],
        )
    if report.fenced:
        log.warning(
            "changelog %s partition %d: dropped %d records a fenced writer appended after"
            " it had lost the partition (paused past its session)",
            changelog,
            partition,
            report.fenced,
        )
    log.info(
        "partition %d restored: %d changelog records, stock of %d products, "
        "%d hold records, %d stock events re-applied, writer epoch %d",
        partition,
        report.records,
        report.snapshots,
        report.holds,
        report.replayed,
        report.epoch,
    )
