"""The worker's local table store: RocksDB (through rocksdict) used as a cache.

The changelog topics are the truth and a starting worker drops this cache and rebuilds
it from them (see ``reset_local_store``), so RocksDB's own write-ahead log buys nothing:
it is turned off, which removes a write system call from every table update.
"""

from __future__ import annotations

from typing import Any

import rocksdict
from faust.stores import STORES
from faust.stores.rocksdb import Store as RocksDBStore

SCHEME = "rocksdb-cache"


class CacheStore(RocksDBStore):
    """Faust's RocksDB store, without RocksDB's write-ahead log."""

    def _open_for_partition(self, partition: int) -> Any:
        db = super()._open_for_partition(partition)
        write_options = rocksdict.WriteOptions()
        # A property at run time; rocksdict's stubs call it a method.
        write_options.disable_wal = True  # type: ignore[method-assign,assignment]
        db.set_write_options(write_options)
        return db


def register() -> str:
    """Make ``rocksdb-cache://`` a Faust store URL; return the URL."""
    STORES.aliases[SCHEME] = f"{__name__}:CacheStore"
    return f"{SCHEME}://"
