"""Faust's offset commits, never past a message the agents did not process.

Two holes in faust-streaming 0.15.3's ``Consumer`` are closed here:

- It commits the first run of consecutive acknowledged offsets, checking that the run
  starts at the committed offset only when that offset is truthy. The payment agent
  acknowledges out of order (as answers come), so a fresh partition could be committed
  past requests still in flight. A partition is not committed while a message it
  delivered before the acknowledged run is unacknowledged.
- It counts a gap in offsets as acknowledged (``_add_gap``), as transaction markers and
  compaction leave, and the lifecycle's topics have neither. After a rebalance, a kept
  partition can be fetched past where its seek put it (a batch fetched before the seek):
  the skipped messages were committed as done and never processed (payment answers lost
  so left orders RESERVED). Such a partition is sought back to fetch them; a gap still
  there after that is real (retention) and let pass.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import faust

log = logging.getLogger(__name__)


def install(app: faust.App, on_refetch: Callable[[str], None] = lambda topic: None) -> None:
    """Guard ``app``'s consumer against committing past a message it did not process;
    ``on_refetch`` is told the topic of each partition sought back."""
    consumer: Any = app.consumer
    guard_commits(consumer)
    refetch_skipped(consumer, app.topics.acks_enabled_for, on_refetch)


def guard_commits(consumer: Any) -> None:
    """Never commit a partition past a message it delivered that is still unacknowledged."""
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


def refetch_skipped(
    consumer: Any,
    acks_enabled_for: Callable[[str], bool],
    on_refetch: Callable[[str], None] = lambda topic: None,
) -> None:
    """Seek a partition back when its next fetched message is past one never delivered."""
    fetch = consumer.getmany
    yielded: dict[Any, int] = {}  # tp -> the last offset handed to Faust's delivery
    rewound_at: dict[Any, int] = {}  # tp -> the offset it was last sought back to

    async def contiguous(
        timeout: float,  # noqa: ASYNC109 (the name Faust passes it by)
    ) -> AsyncIterator[tuple[Any, Any]]:
        rewound: set[Any] = set()  # this batch's rest of such a partition comes again
        async for tp, message in fetch(timeout=timeout):
            if tp in rewound:
                continue
            # Faust's read offset is the last offset delivered, or, right after a seek,
            # the next one to read; with none, any offset is the one expected.
            read = consumer._read_offset.get(tp)
            expected: int = (
                message.offset if read is None else read + 1 if yielded.get(tp) == read else read
            )
            skipped = message.offset > expected and acks_enabled_for(tp.topic)
            if skipped and rewound_at.get(tp) != expected:
                log.warning(
                    "%s fetched at %d, expected %d: seeking back to fetch what was skipped",
                    tp, message.offset, expected,
                )  # fmt: skip
                rewound_at[tp] = expected
                rewound.add(tp)
                on_refetch(tp.topic)
                try:
                    # In the consumer's own thread: Faust's seek() calls aiokafka from
                    # this one, whose wake-up of the fetcher is not thread-safe (it can
                    # stall).
                    await consumer.seek_wait({tp: expected})
                except Exception:  # no longer assigned: its next owner starts from a commit
                    log.exception("could not seek %s back to %d", tp, expected)
                continue
            if skipped:
                log.error(
                    "offsets %d-%d of %s are not in the log (deleted by retention?); "
                    "moving on from %d",
                    expected, message.offset - 1, tp, message.offset,
                )  # fmt: skip
            yielded[tp] = message.offset
            yield tp, message

    consumer.getmany = contiguous
