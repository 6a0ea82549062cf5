"""The stock agent: single writer of each partition's stock, a fetched batch at a time.

- ``agent``: the loop (fetch, decide, changelog, announce, commit) and takeovers.
- ``processor``: one record and its partition's state in, effects out (``seam``: the types).
- ``commands``: stock commands (set, add, update, commit, release).
- ``store``: a partition's stock, holds and per-user counts; ``restore`` rebuilds it from
  the changelog; ``standby`` tails the partitions this worker does not own.
- ``batcher``: decided records grouped into whole Kafka batches per partition.
"""
