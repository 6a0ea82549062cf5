"""Faust's commit offset with the guard of agents/faust_commits.py, on Faust's own code."""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace
from typing import Any

from faust.transport.consumer import Consumer
from intervaltree import IntervalTree

from orderstream.agents import faust_commits

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
    faust_commits.install(SimpleNamespace(consumer=state))  # type: ignore[arg-type]
    return state


def test_faust_alone_commits_past_messages_in_flight_on_a_fresh_partition() -> None:
    """The bug the guard is for: nothing committed, 0-2 in flight, 3-5 answered."""
    fresh = SimpleNamespace(
        _acked=defaultdict(list, {TP: [3, 4, 5]}),
        _acked_index=defaultdict(set, {TP: {3, 4, 5}}),
        _gap=defaultdict(IntervalTree),
        _committed_offset=defaultdict(lambda: None),
    )
    assert Consumer._new_offset(fresh, TP) == 6  # type: ignore[arg-type]


def test_nothing_is_committed_past_a_message_in_flight() -> None:
    assert consumer(None, [3, 4, 5], unacked=[0, 1, 2])._new_offset(TP) is None
    assert consumer(0, [3, 4], unacked=[1, 2])._new_offset(TP) is None


def test_the_run_before_a_message_in_flight_is_committed() -> None:
    assert consumer(None, [0, 1, 2, 5], unacked=[3, 4])._new_offset(TP) == 3
    assert consumer(None, [0, 1, 2], unacked=[])._new_offset(TP) == 3
    assert consumer(10, [11, 12], unacked=[13])._new_offset(TP) == 13
