"""The sink's progress lines while it catches up (a replay): rate, lag left, time left."""

from __future__ import annotations

import pytest

from orderstream.sink.runner import CatchUp

BEHIND = 10_000
EVERY_S = 5.0


def test_a_sink_near_the_end_of_its_topics_says_nothing() -> None:
    catch_up = CatchUp(BEHIND, EVERY_S)
    assert [catch_up.update(float(t), 500, BEHIND) for t in range(20)] == [None] * 20


def test_a_sink_far_behind_reports_every_few_seconds_and_once_caught_up() -> None:
    catch_up = CatchUp(BEHIND, EVERY_S)
    assert catch_up.update(0.0, 0, 500_000) is None  # fell behind: counting starts
    lines = [catch_up.update(float(t), 9_800, 500_000 - 9_800 * t) for t in range(1, 11)]
    assert lines == [None] * 4 + [
        "catching up: 49,000 written, 9,800/s, 451,000 behind, about 46 s left"
    ] + [None] * 4 + ["catching up: 98,000 written, 9,800/s, 402,000 behind, about 41 s left"]
    assert (
        catch_up.update(51.0, 400_000, 2_000) == "caught up: 498,000 written in 51 s, 2,000 behind"
    )
    assert catch_up.update(60.0, 500, 1_500) is None
    # Behind again (another replay): counted from there.
    assert catch_up.update(100.0, 100, 300_000) is None
    assert catch_up.update(105.0, 1_000, 299_000) == (
        "catching up: 1,000 written, 200/s, 299,000 behind, about 25 min left"
    )


@pytest.mark.parametrize(
    ("lag_after", "time_left"),
    [
        (1_000_000 - 50_000, "about 95 s left"),
        (1_000_000 - 5_000, "about 17 min left"),
        (1_000_000 - 500, "about 2.8 h left"),
        (1_000_000, "not gaining"),  # the topics grow as fast as the sink writes
        (1_200_000, "not gaining"),  # faster
    ],
)
def test_the_time_left_is_the_lag_over_the_rate_it_shrinks_at(
    lag_after: int, time_left: str
) -> None:
    catch_up = CatchUp(BEHIND, EVERY_S)
    catch_up.update(0.0, 0, 1_000_000)
    line = catch_up.update(EVERY_S, 50_000, lag_after)
    assert line == f"catching up: 50,000 written, 10,000/s, {lag_after:,} behind, {time_left}"
