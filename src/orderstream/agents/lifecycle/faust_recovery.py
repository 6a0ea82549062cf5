"""Faust's table recovery, with its end in a safe order: seek the stream partitions, then
resume them.

faust-streaming 0.15.3 resumes the source partitions when table recovery completes and
only then seeks them to their committed offsets. Records fetched in between reach the
agents, and the seek that follows races their read offsets: in the lifecycle's kill -9
test the order agent lost a few order events this way after a restart (offsets 5-7 of a
partition never processed, 2-4 and 8 on). The same race is described in faust-streaming
issues #216 and #596. Here the seek is done while the partitions are still paused.

A partition the group never committed on is not moved by that seek, and records fetched
into it during recovery were drained and dropped: it is rewound to its beginning (what
``auto_offset_reset="earliest"`` means; replaying is safe, every effect is idempotent).
Found by tests/integration/test_lifecycle_store.py: after a plain restart, orders
published during recovery on such partitions stayed RESERVED.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import faust
from faust.tables.recovery import Recovery

log = logging.getLogger(__name__)


class SeekFirstRecovery(Recovery):
    """Recovery that seeks stream partitions to their committed offsets before resuming them."""

    async def on_recovery_completed(self, generation_id: int = 0) -> None:
        """Call when active table recovery is completed (Faust's, with the seek first)."""
        app: Any = self.app
        consumer = app.consumer
        self.log.info("Restore complete!")
        await app.on_rebalance_complete.send()
        self._set_recovery_ended()
        callbacks = [
            asyncio.ensure_future(
                table.on_recovery_completed(
                    self.actives_for_table[table], self.standbys_for_table[table]
                )
            )
            for table in self.tables.values()
        ]
        if callbacks:
            await asyncio.wait(callbacks)
        assignment = consumer.assignment()
        if app.consumer_generation_id != generation_id:
            self.log.warning(
                "Recovery rebalancing again app id %s param %s",
                app.consumer_generation_id,
                generation_id,
            )
            return
        if assignment:
            # Still paused: nothing is fetched from them until the seek is done.
            self.log.info("Seek stream partitions to committed offsets.")
            await self._wait(consumer.perform_seek(), timeout=app.conf.broker_request_timeout)
            # perform_seek leaves the read offset of a partition with no commit at None.
            read_offsets = consumer._read_offset
            for tp in assignment:
                if not self._is_changelog_tp(tp) and read_offsets.get(tp) is None:
                    self.log.info("Seek %s (nothing committed) to its beginning.", tp)
                    await self._wait(consumer.seek(tp, 0), timeout=app.conf.broker_request_timeout)
        consumer.resume_partitions({tp for tp in assignment if not self._is_changelog_tp(tp)})
        self.completed.set()
        app.flow_control.resume()
        consumer.resume_flow()
        await app._fetcher.maybe_start()
        self.tables.on_actives_ready()
        if not app.assignor.assigned_standbys():
            self.tables.on_standbys_ready()
        app.on_rebalance_end()
        self.log.info("Worker ready")


def install(app: faust.App) -> None:
    """Make ``app``'s table manager recover with SeekFirstRecovery."""
    tables: Any = app.tables
    tables._recovery = SeekFirstRecovery(app, tables, beacon=tables.beacon, loop=tables.loop)
