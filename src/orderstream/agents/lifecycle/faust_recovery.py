"""Faust's table recovery, ending in a safe order: seek the stream partitions, then resume them.

faust-streaming 0.15.3 resumes the source partitions when table recovery completes and
only then seeks them to their committed offsets: records fetched in between reach the
agents and race the seek, so some are never processed (faust-streaming issues #216 and
#596). Here the seek is done while the partitions are still paused.

A partition the group never committed on is not moved by that seek, and the records
fetched into it during recovery are dropped: it is rewound to its beginning (what
``auto_offset_reset="earliest"`` means; replaying is safe, every effect is idempotent),
or orders published during a recovery would stay RESERVED
(tests/integration/test_lifecycle_store.py restarts the lifecycle to check it).
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
            never_committed = {
                tp: 0
                for tp in assignment
                if not self._is_changelog_tp(tp) and read_offsets.get(tp) is None
            }
            for tp in never_committed:
                self.log.info("Seek %s (nothing committed) to its beginning.", tp)
            if never_committed:
                # seek_wait seeks in the consumer's thread (seek() would call aiokafka
                # from this one: its fetcher's wake-up is not thread-safe), all at once.
                await self._wait(
                    consumer.seek_wait(never_committed), timeout=app.conf.broker_request_timeout
                )
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
