"""Faust's commit offset with the guard of agents/lifecycle/faust_commits.py, on Faust's
own code."""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace
from typing import Any

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
    faust_commits.install(SimpleNamespace(consumer=state))  # type: ignore[arg-type]
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
