"""A role's collector: what it started with is frozen, young collections are rarer."""

from __future__ import annotations

import gc

from orderstream import gc_tuning


def test_tune_freezes_what_exists_and_raises_the_thresholds() -> None:
    before = gc.get_threshold()
    try:
        gc_tuning.tune()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (
            gc_tuning.YOUNG_THRESHOLD,
            gc_tuning.MIDDLE_THRESHOLD,
            gc_tuning.OLD_THRESHOLD,
        )
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
