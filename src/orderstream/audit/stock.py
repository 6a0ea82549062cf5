"""Check PostgreSQL's stock: conserved, as the changelog has it, as the order items hold."""

from __future__ import annotations

from collections.abc import Mapping

from orderstream.audit.report import EXAMPLES, Check, StockFigures
from orderstream.domain import StockLevel

# Order items whose stock is still held for the order: reserved, or paid and not yet
# committed (an order's status, or a line's).
HOLDING_STATUSES = ("RESERVED", "PAID")


def check_conservation(stock: Mapping[str, StockFigures]) -> Check:
    """Check that no figure is negative and available + reserved + sold = total_in."""
    check = Check("stock conserved in PostgreSQL", len(stock), "products")
    for product_id, figures in sorted(stock.items()):
        negative = min(figures.available, figures.reserved, figures.sold) < 0
        parts = figures.available + figures.reserved + figures.sold
        if negative or parts != figures.total_in:
            check.violate(f"product {product_id!r}: {figures.describe()}")
    return check


def check_against_changelog(
    stock: Mapping[str, StockFigures], snapshots: Mapping[str, StockLevel | str]
) -> tuple[Check, set[str]]:
    """Check PostgreSQL's stock against the stock agent's last snapshot of each product.

    Return the check, and the products the sink has not caught up with (compared only
    once it has).
    """
    check = Check("PostgreSQL stock = the stock agent's changelog", len(stock), "products")
    behind: set[str] = set()
    for product_id in sorted(stock.keys() | snapshots.keys()):
        figures, snapshot = stock.get(product_id), snapshots.get(product_id)
        if isinstance(snapshot, str):
            check.violate(f"product {product_id!r}: changelog has an {snapshot}")
        elif snapshot is None:
            check.violate(f"product {product_id!r}: in PostgreSQL, unknown to the stock agent")
        elif figures is None or figures.version < snapshot.version:
            behind.add(product_id)
        else:
            agent = StockFigures(
                snapshot.available,
                snapshot.reserved,
                snapshot.sold,
                snapshot.total_in,
                snapshot.version,
            )
            if figures.version > agent.version:
                check.violate(
                    f"product {product_id!r}: PostgreSQL at version {figures.version}, "
                    f"ahead of the stock agent's {agent.version}"
                )
            elif figures != agent:
                check.violate(
                    f"product {product_id!r}: PostgreSQL has {figures.describe()}; "
                    f"the stock agent {agent.describe()}"
                )
    if behind:
        check.notes.append(_sink_behind(behind, stock, snapshots))
    return check, behind


def _sink_behind(
    behind: set[str],
    stock: Mapping[str, StockFigures],
    snapshots: Mapping[str, StockLevel | str],
) -> str:
    examples = []
    for product_id in sorted(behind)[:EXAMPLES]:
        figures, snapshot = stock.get(product_id), snapshots[product_id]
        assert isinstance(snapshot, StockLevel)
        ours = f"version {figures.version}" if figures else "no row"
        examples.append(f"{product_id!r} ({ours}, stock agent at {snapshot.version})")
    return f"sink behind for {len(behind)} products, not compared: {', '.join(examples)}" + (
        ", ..." if len(behind) > EXAMPLES else ""
    )


def check_reserved_items(
    stock: Mapping[str, StockFigures],
    held: Mapping[str, int],
    behind: set[str],
    settled: bool,
) -> Check:
    """Check that a product's reserved stock is what its holding order items hold.

    ``settled``: the stock agent and the sink had consumed everything when PostgreSQL
    was read; otherwise a disagreement may be records in flight, and is only noted.
    """
    check = Check(
        f"reserved stock = quantities of {'/'.join(HOLDING_STATUSES)} order items",
        len(stock),
        "products",
    )
    reserved = {product_id: figures.reserved for product_id, figures in stock.items()}
    _compare(
        check, reserved, held, "reserved {}, order items hold {}", behind=behind, settled=settled
    )
    return check


def check_sold_items(
    stock: Mapping[str, StockFigures],
    committed: Mapping[str, int],
    behind: set[str],
    settled: bool,
) -> Check:
    """Check that a product's sold stock is the quantity of its COMMITTED order lines.

    ``settled`` as for `check_reserved_items`: a commit in flight is only noted.
    """
    check = Check("sold stock = quantities of COMMITTED order lines", len(stock), "products")
    sold = {product_id: figures.sold for product_id, figures in stock.items()}
    _compare(
        check, sold, committed, "sold {}, COMMITTED order lines {}", behind=behind, settled=settled
    )
    return check


def _compare(
    check: Check,
    stock: Mapping[str, int],
    items: Mapping[str, int],
    describe: str,
    *,
    behind: set[str],
    settled: bool,
) -> None:
    """Count each product whose stock figure differs from its order items' as a violation
    of ``check``, or, unless ``settled``, note it as possibly in flight."""
    in_flight = []
    for product_id in sorted(stock.keys() | items.keys()):
        if product_id in behind:
            continue  # said once, by the changelog check
        ours, theirs = stock.get(product_id, 0), items.get(product_id, 0)
        if ours == theirs:
            continue
        example = f"product {product_id!r}: " + describe.format(ours, theirs)
        if settled:
            check.violate(example)
        else:
            in_flight.append(example)
    if in_flight:
        check.notes.append(
            f"{len(in_flight)} products disagree while records were in flight (consumer lag"
            f" above 0), not counted: {'; '.join(in_flight[:EXAMPLES])}"
        )
