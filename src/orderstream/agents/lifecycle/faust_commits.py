"""Faust's offset commits, never past a message still being processed.

faust-streaming 0.15.3 commits, per partition, the end of the first run of consecutive
acknowledged offsets (``Consumer._new_offset``). It checks that this run starts right
after the committed offset only when that offset is truthy: on a partition with nothing
committed yet (or offset 0 committed), acknowledged offsets 3-5 are committed while 0-2
are still being processed. The payment agent acknowledges each request when it is
answered, in whatever order the provider answers: a kill -9 then lost the first requests
of a fresh partition for good (their orders stayed RESERVED, found by
tests/integration/test_lifecycle.py's kill -9 expiry test). (With an offset committed,
Faust's check still lets the run start one past a message in flight.) Here a partition
is not committed while a message it delivered before the acknowledged run is still
unacknowledged.
"""

from __future__ import annotations

from typing import Any

import faust


def install(app: faust.App) -> None:
    """Guard ``app``'s consumer against committing past an unacknowledged message."""
    consumer: Any = app.consumer
    committable = consumer._filter_committable_offsets

    def guarded(tps: Any) -> dict[Any, int]:
        # One pass over the messages in flight per commit, not one per partition.
        first_unacked: dict[Any, int] = {}
        for message in list(consumer._unacked_messages):
            if not message.acked:
                offset = first_unacked.get(message.tp)
                if offset is None or message.offset < offset:
                    first_unacked[message.tp] = message.offset
        ready = [
            tp
            for tp in tps
            if tp not in first_unacked
            or not consumer._acked[tp]
            or first_unacked[tp] > min(consumer._acked[tp])
        ]
        # A partition left out keeps its acknowledged offsets for a later round.
        result: dict[Any, int] = committable(ready)
        return result

    consumer._filter_committable_offsets = guarded
