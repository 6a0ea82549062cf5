"""Faust's offset commits, never past a message still being processed.

faust-streaming 0.15.3 commits, per partition, the end of the first run of consecutive
acknowledged offsets (``Consumer._new_offset``). It checks that this run starts right
after the committed offset only when that offset is truthy: on a partition with nothing
committed yet (or offset 0 committed), acknowledged offsets 3-5 are committed while 0-2
are still being processed. The payment agent acknowledges each request when it is
answered, in whatever order the provider answers: a kill -9 then lost the first requests
of a fresh partition for good (their orders stayed RESERVED, found by
tests/integration/test_lifecycle.py's kill -9 expiry test). Here a partition is not
committed while a message it delivered and that precedes the acknowledged run is still
unacknowledged.
"""

from __future__ import annotations

from typing import Any

import faust


def install(app: faust.App) -> None:
    """Guard ``app``'s consumer against committing past an unacknowledged message."""
    consumer: Any = app.consumer
    new_offset = consumer._new_offset

    def guarded_new_offset(tp: Any) -> int | None:
        acked = consumer._acked[tp]
        if acked:
            first_acked = min(acked)
            for message in list(consumer._unacked_messages):
                if message.tp == tp and not message.acked and message.offset < first_acked:
                    return None  # committed once it is acknowledged (or redelivered)
        result: int | None = new_offset(tp)
        return result

    consumer._new_offset = guarded_new_offset
