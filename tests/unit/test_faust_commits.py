"""Faust's commit offset with the guard of agents/lifecycle/faust_commits.py, on Faust's
own code."""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace
from typing import Any

from aiokafka import TopicPartition
from faust.transport.consumer import Consumer
from intervaltree import IntervalTree

from orderstream.agents.lifecycle import faust_commits

TP = ("payment-requests", 4)


def consumer(committed: int | None, acked: list[int], unacked: list[int]) -> Any:
    """A consumer's commit state, with Faust's own ``_new_offset``."""
    state = SimpleNamespace(
        _acked=defaultdict(list, {TP: list(acked)}),
        _acked_index=defaultdict(set, {TP: set(acked)}),
        _gap=defaultdict(IntervalTree),
        _committed_offset=defaultdict(lambda: None, {TP: committed}),
        _unacked_messages=[SimpleNamespace(tp=TP, offset=o, acked=False) for o in unacked],
    )
    state._new_offset = lambda tp: Consumer._new_offset(state, tp)  # type: ignore[arg-type]
    state._should_commit = lambda tp, offset: Consumer._should_commit(state, tp, offset)  # type: ignore[arg-type]
    state._filter_committable_offsets = lambda tps: Consumer._filter_committable_offsets(
        state,  # type: ignore[arg-type]
        tps,
    )
    faust_commits.guard_commits(state)
    return state


def committed(state: Any) -> int | None:
    """Return the offset the next commit would write for TP, None for none."""
    offsets: dict[Any, int] = state._filter_committable_offsets([TP])
    return offsets.get(TP)


def test_faust_alone_commits_past_messages_in_flight() -> None:
    """The bugs the guard is for: nothing committed, 0-2 in flight, 3-5 answered; and
    11 committed (next to read), 11 in flight, 12 answered."""
    fresh = SimpleNamespace(
        _acked=defaultdict(list, {TP: [3, 4, 5]}),
        _acked_index=defaultdict(set, {TP: {3, 4, 5}}),
        _gap=defaultdict(IntervalTree),
        _committed_offset=defaultdict(lambda: None),
    )
    assert Consumer._new_offset(fresh, TP) == 6  # type: ignore[arg-type]
    fresh._acked[TP], fresh._acked_index[TP] = [12], {12}
    fresh._committed_offset[TP] = 11
    assert Consumer._new_offset(fresh, TP) == 13  # type: ignore[arg-type]


def test_nothing_is_committed_past_a_message_in_flight() -> None:
    assert committed(consumer(None, [3, 4, 5], unacked=[0, 1, 2])) is None
    assert committed(consumer(0, [3, 4], unacked=[1, 2])) is None
    # Committed 11 (the next to read): 11 still in flight, 12-13 answered.
    assert committed(consumer(11, [12, 13], unacked=[11])) is None


def test_the_run_before_a_message_in_flight_is_committed() -> None:
    assert committed(consumer(None, [0, 1, 2, 5], unacked=[3, 4])) == 3
    assert committed(consumer(None, [0, 1, 2], unacked=[])) == 3
    assert committed(consumer(10, [11, 12], unacked=[13])) == 13


class Fetching:
    """A consumer's fetch loop as Faust drives it: a read offset per partition, set by a
    seek (the next offset to read: the ones given at the start) and by each delivered
    message (the last offset delivered)."""

    def __init__(self, logs: dict[Any, list[int]], read: dict[Any, int]) -> None:
        self.logs = logs  # tp -> the offsets a fetch returns next, in order
        self._read_offset: dict[Any, int] = dict(read)
        self.seeks: list[tuple[Any, int]] = []
        self.getmany = self._fetch
        faust_commits.refetch_skipped(self, lambda topic: topic != "changelog")

    async def _fetch(self, timeout: float) -> Any:
        batch, self.logs = self.logs, {}
        for tp, offsets in batch.items():
            for offset in offsets:
                yield tp, SimpleNamespace(offset=offset)

    async def seek_wait(self, partitions: dict[Any, int]) -> None:
        for tp, offset in partitions.items():
            self.seeks.append((tp, offset))
            self._read_offset[tp] = offset

    async def delivered(self) -> list[tuple[Any, int]]:
        """Run one fetch; return what reached the agents."""
        out = []
        async for tp, message in self.getmany(timeout=1.0):
            out.append((tp, message.offset))
            self._read_offset[tp] = message.offset
        return out


RESULTS = TopicPartition("payment-results", 4)
LINES = TopicPartition("line-outcomes", 4)
CHANGELOG = TopicPartition("changelog", 4)


async def test_a_partition_fetched_past_what_it_delivered_is_sought_back() -> None:
    """Sought to 113 in a rebalance, a stale batch brings 199-200: they are held back, the
    partition sought back to 113, and the next fetch delivers 113 on; other partitions
    of the batch flow."""
    fetching = Fetching({RESULTS: [199, 200], LINES: [7, 8]}, {RESULTS: 113, LINES: 7})
    assert await fetching.delivered() == [(LINES, 7), (LINES, 8)]
    assert fetching.seeks == [(RESULTS, 113)]
    fetching.logs = {RESULTS: [113, 114, 115]}
    assert await fetching.delivered() == [(RESULTS, 113), (RESULTS, 114), (RESULTS, 115)]


async def test_one_message_skipped_right_after_a_seek_is_fetched_again() -> None:
    """Sought to 113 (the next to read), the fetch starts at 114: 113 would be lost
    (Faust lets a commit start one past its committed offset)."""
    fetching = Fetching({RESULTS: [114, 115]}, {RESULTS: 113})
    assert await fetching.delivered() == []
    assert fetching.seeks == [(RESULTS, 113)]
    fetching.logs = {RESULTS: [113, 114]}
    assert await fetching.delivered() == [(RESULTS, 113), (RESULTS, 114)]
    fetching.logs = {RESULTS: [116]}  # 115 missing after a delivered 114: sought back
    assert await fetching.delivered() == []
    assert fetching.seeks[-1] == (RESULTS, 115)


async def test_a_gap_that_stays_after_the_seek_is_let_pass_once() -> None:
    """Offsets gone from the log (retention): sought back once, then moved on from."""
    fetching = Fetching({RESULTS: [199]}, {RESULTS: 113})
    assert await fetching.delivered() == []
    fetching.logs = {RESULTS: [199, 200]}
    assert await fetching.delivered() == [(RESULTS, 199), (RESULTS, 200)]
    assert fetching.seeks == [(RESULTS, 113)]


async def test_compaction_gaps_in_a_changelog_are_not_sought() -> None:
    fetching = Fetching({CHANGELOG: [40, 90]}, {CHANGELOG: 3})
    assert await fetching.delivered() == [(CHANGELOG, 40), (CHANGELOG, 90)]
    assert fetching.seeks == []
