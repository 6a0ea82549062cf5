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
from orderstream.domain.stock import apply_stock_operation, replay_reservation, reserve_line

__all__ = [
    "Decision",
    "LineRequest",
    "OrderStatus",
    "RejectReason",
    "StockLevel",
    "StockOperation",
    "apply_stock_operation",
    "key_partition",
    "murmur2",
    "owner_partition",
    "replay_reservation",
    "reserve_line",
]
