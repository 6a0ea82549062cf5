"""Every table of the worker, its key, and the type of its values.

Table names are spelled here only. Values are pydantic models stored as JSON bytes; the
changelog topic (``{app_id}-{table}-changelog``) is the truth, the local RocksDB store a
cache that recovery rebuilds.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from orderstream.domain import Decision, OrderStatus, RejectReason, Reserved, StockEvent, StockLevel
from orderstream.settings import Settings
from orderstream.topics import OrderEvent, OrderRequest, StockChange, TopicSpec

# The stock agent keeps stock and holds in one changelog, so that one partition's records
# stay in the order they were made: key STOCK_KEY + product id -> StockLevel JSON,
# HOLD_KEY + hold_key(...) -> Hold JSON. A restore that reads it in order never sees a
# reservation before the restock that allowed it.
STOCK_CHANGELOG = "stock-changelog"
STOCK_KEY = b"s"
HOLD_KEY = b"h"

__all__ = [
    "Hold",
    "StockLevel",
    "changelog_specs",
    "hold_key",
    "stock_changelog",
]


class Hold(BaseModel):
    """The recorded decision for one (order, product): a duplicate request re-emits it."""

    model_config = ConfigDict(frozen=True)

    order_id: str
    user_id: str
    product_id: str
    quantity: int = Field(ge=1)
    status: OrderStatus
    reason: RejectReason | None = None
    detail: str | None = None
    requested_at_ms: int
    decided_at_ms: int
    # The product's stock version after this reservation (None: the stock did not
    # change). A restore re-applies a hold newer than the last stock snapshot it read.
    stock_version: int | None = None

    @classmethod
    def of(
        cls,
        request: OrderRequest,
        decision: Decision,
        requested_at_ms: int,
        decided_at_ms: int,
        stock_version: int | None = None,
    ) -> Hold:
        """Record ``decision`` on ``request``."""
        return cls(
            order_id=request.order_id,
            user_id=request.user_id,
            product_id=request.product_id,
            quantity=request.quantity,
            status=decision.status,
            reason=decision.reason,
            detail=decision.detail,
            requested_at_ms=requested_at_ms,
            decided_at_ms=decided_at_ms,
            stock_version=stock_version,
        )

    @property
    def is_final(self) -> bool:
        """Whether nothing can change this hold any more (it may then expire)."""
        return self.status.is_terminal

    def stock_events(self) -> list[StockEvent]:
        """Return the stock events this hold records, for a restore to re-apply."""
        if self.stock_version is None:
            return []  # a rejection changed no stock
        return [Reserved(self.quantity, self.stock_version)]

    def decision_event(self, stock: StockChange | None = None) -> OrderEvent:
        """Return the order event that announces this decision."""
        # A single-line order is decided in one hop: its first and only stock decision
        # is the order's transition number 1.
        return OrderEvent(
            order_id=self.order_id,
            seq=1,
            status=self.status,
            reason=self.reason,
            detail=self.detail,
            user_id=self.user_id,
            product_id=self.product_id,
            quantity=self.quantity,
            requested_at_ms=self.requested_at_ms,
            decided_at_ms=self.decided_at_ms,
            stock=stock,
        )


def hold_key(order_id: str, product_id: str) -> bytes:
    """Return the table key of one (order, product) hold."""
    # Length-prefixed, so ("ab", "c") and ("a", "bc") never share a key. The length is of
    # the encoded order id, so that hold_product can find the product without decoding.
    order = order_id.encode()
    return b"%d:%b%b" % (len(order), order, product_id.encode())


def hold_product(key: bytes) -> bytes:
    """Return the encoded product id of a hold key (a restore sorts holds by product)."""
    length, _, rest = key.partition(b":")
    return rest[int(length) :]


def stock_changelog(settings: Settings) -> str:
    """Return the name of the stock agent's changelog topic."""
    return f"{settings.app_id}-{STOCK_CHANGELOG}"


def changelog_specs(settings: Settings) -> list[TopicSpec]:
    """Return every changelog topic, created up front with the sources' partition count."""
    return [
        TopicSpec(stock_changelog(settings), settings.partitions, {"cleanup.policy": "compact"})
    ]
