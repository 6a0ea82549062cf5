"""The expiry timer's index: orders by deadline, taken when due, due again if unmoved."""

from __future__ import annotations

import random

from orderstream.agents.lifecycle.deadlines import DeadlineIndex

RETRY = 1_000


def test_due_orders_are_taken_in_time_and_come_back_unless_moved() -> None:
    index = DeadlineIndex(RETRY)
    index.rebuild([("a", 100), ("b", 200), ("c", None)])
    assert (len(index), index.stale) == (2, False)
    assert index.due(99) == []
    assert index.due(150) == ["a"]
    assert index.due(150) == []  # taken: due again RETRY later, not at once
    index.set("b", 500)  # its state moved: the new deadline replaces the old one
    assert index.due(300) == []
    assert index.due(500) == ["b"]
    assert index.due(150 + RETRY) == ["a"]  # the expire command changed nothing: again
    index.set("a", None)  # forgotten
    assert index.due(10**9) == ["b"]


def test_the_index_agrees_with_a_plain_scan_over_random_moves() -> None:
    rng = random.Random(5)
    index = DeadlineIndex(RETRY)
    index.rebuild([])
    plain: dict[str, int] = {}
    now = 0
    for _ in range(20_000):
        order = f"o{rng.randrange(300)}"
        if rng.random() < 0.2:
            index.set(order, None)
            plain.pop(order, None)
        elif rng.random() < 0.6:
            due = now + rng.randrange(-50, 500)
            index.set(order, due)
            plain[order] = due
        else:
            now += rng.randrange(0, 40)
            expected = sorted(o for o, due in plain.items() if due <= now)
            assert sorted(index.due(now)) == expected
            for o in expected:
                plain[o] = now + RETRY
    assert len(index) == len(plain)
