"""Standby stores: the changelog partitions a worker does not own, tailed into stores.

With ORDERSTREAM_STANDBY_REPLICAS=1, every worker keeps a store for each partition it
does not own, fed from the stock changelog as the owner writes it (the same restore
fold: restore() now, finish_restore() at takeover). When the group gives it one of those
partitions, the takeover reads only what its standby had not read yet, instead of the
whole changelog. With N workers that is N - 1 copies of each partition's state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from orderstream.agents.stock.store import PartitionStore
from orderstream.kafka_clients import reader
from orderstream.settings import Settings

log = logging.getLogger(__name__)

_FETCH_WAIT_MS = 200  # a takeover waits at most this long for the tailing to pause


class Standbys:
    """Tail the changelog partitions this worker stands by for, each into its own store."""

    def __init__(self, settings: Settings, changelog: str, root: Path) -> None:
        self._settings = settings
        self._changelog = changelog
        self._root = root
        self._stores: dict[int, PartitionStore] = {}
        self._next: dict[int, int] = {}  # partition -> next changelog offset to read
        self._caught_up: set[int] = set()  # partitions whose standby reached the end once
        self._lock = asyncio.Lock()  # held while a fetch is applied or the set changes
        self._reader: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        # Offset 0 of a compacted or trimmed changelog may be gone: its start then.
        self._reader = reader(self._settings, auto_offset_reset="earliest")
        await self._reader.start()
        self._task = asyncio.create_task(self._tail(), name="standby-tail")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._reader is not None:
            await self._reader.stop()
        for store in self._stores.values():
            store.close()
        self._stores.clear()

    async def follow(self, partitions: set[int]) -> None:
        """Stand by for exactly ``partitions``: new ones start from the changelog's start."""
        async with self._lock:
            for partition in set(self._stores) - partitions:
                self._stores.pop(partition).close()
                self._next.pop(partition, None)
                self._caught_up.discard(partition)
            for partition in sorted(partitions - set(self._stores)):
                self._stores[partition] = PartitionStore(self._root / f"standby-{partition}")
                self._next[partition] = 0
            await self._assign()
        if partitions:
            log.info("standing by for partitions %s", sorted(partitions))

    async def adopt(self, stores: dict[int, PartitionStore], offsets: dict[int, int]) -> None:
        """Keep the stores of partitions this worker just gave up, as their standbys.

        ``offsets`` are the changelog's ends when they were given up: everything before
        is in them already (the owner wrote it), so they go on from there.
        """
        async with self._lock:
            for partition, store in stores.items():
                old = self._stores.pop(partition, None)
                if old is not None:
                    old.close()
                self._stores[partition] = store
                self._next[partition] = offsets[partition]
            await self._assign()

    async def take(self, partition: int) -> tuple[PartitionStore, int] | None:
        """Hand over the standby of ``partition`` and the offset it has read to, if any."""
        async with self._lock:
            store = self._stores.pop(partition, None)
            if store is None:
                return None
            offset = self._next.pop(partition)
            self._caught_up.discard(partition)
            await self._assign()
        return store, offset

    async def _assign(self) -> None:
        reader = self._reader
        if reader is None:
            return
        assigned = [TopicPartition(self._changelog, p) for p in sorted(self._stores)]
        reader.assign(assigned)
        for tp in assigned:
            reader.seek(tp, self._next[tp.partition])

    def _note_caught_up(self, tp: TopicPartition) -> None:
        """Say once per standby when it has read to the changelog's end."""
        assert self._reader is not None
        end = self._reader.highwater(tp)
        if tp.partition in self._caught_up or end is None or self._next[tp.partition] < end:
            return
        self._caught_up.add(tp.partition)
        log.info("standby of partition %d caught up at offset %d", tp.partition, end)

    async def _tail(self) -> None:
        reader = self._reader
        assert reader is not None
        while True:
            if not self._stores:
                await asyncio.sleep(_FETCH_WAIT_MS / 1000)
                continue
            try:
                async with self._lock:
                    fetched = await reader.getmany(timeout_ms=_FETCH_WAIT_MS)
                    for tp, records in fetched.items():
                        store = self._stores.get(tp.partition)
                        if store is None or not records:
                            continue  # given up while the fetch was on its way
                        for record in records:
                            if record.key is not None:
                                store.restore(
                                    record.key, record.value, record.timestamp, record.headers
                                )
                        self._next[tp.partition] = records[-1].offset + 1
                        self._note_caught_up(tp)
            except KafkaError as exc:
                # A standby is an optimisation: behind, a takeover just reads more.
                log.warning("standby tailing paused: %r", exc)
                await asyncio.sleep(1.0)
