"""Pure rules of the pipeline: no Kafka, no database, nothing of ours imported."""

from orderstream.domain.models import (
    Decision,
    LineRequest,
    OrderStatus,
    RejectReason,
    StockLevel,
    StockOperation,
)
from orderstream.domain.partitioning import key_partition, murmur2, owner_partition
from orderstream.domain.stock import (
    Committed,
    Released,
    Reserved,
    StockAdded,
    StockEvent,
    StockSet,
    apply_stock_operation,
    evolve,
    fold_newer,
    reserve_line,
    stock_command,
)

__all__ = [
    "Committed",
    "Decision",
    "LineRequest",
    "OrderStatus",
    "RejectReason",
    "Released",
    "Reserved",
    "StockAdded",
    "StockEvent",
    "StockLevel",
    "StockOperation",
    "StockSet",
    "apply_stock_operation",
    "evolve",
    "fold_newer",
    "key_partition",
    "murmur2",
    "owner_partition",
    "reserve_line",
    "stock_command",
]
