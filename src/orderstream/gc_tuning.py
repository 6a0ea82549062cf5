"""Python's cyclic garbage collector, tuned for the roles whose pauses matter.

With CPython's defaults (a young collection every 700 net allocations) a busy role
promotes its in-flight batches to the oldest generation, which then fills by a quarter
within a second or so and is walked whole: measured during a sale over 1,000 products
(`bench.run --workload spread`, timed by `gc.callbacks`), the worker and the sink each
paused 40-150 ms in such full collections, the sink about once a second, and an order
decided or stored during one waited for it.

So a role, once everything is imported and built, moves what it started with (modules,
classes, functions: tens of thousands of objects that live as long as the process) out
of the collector's sight with ``gc.freeze()``, and collects young objects every 50,000
net allocations: far fewer collections, fewer survivors promoted, and full collections
that walk only what the role made since. Memory freed by reference counting (nearly all
of it) is unaffected; only cycles wait longer.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 50_000
# Collections of each younger generation before the next one is collected (the defaults).
MIDDLE_THRESHOLD = 10
OLD_THRESHOLD = 10


def tune() -> None:
    """Freeze what exists now and collect less often; call once the process is set up."""
    gc.collect()  # what is garbage already is not frozen forever
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, MIDDLE_THRESHOLD, OLD_THRESHOLD)
