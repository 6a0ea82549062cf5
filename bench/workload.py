"""Deterministic workloads shared by every benchmarked system.

Every system gets the same requests in the same publish order, so their outcomes
can be checked against one expectation: per product, min(stock, requests).
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

USERS = 50_000
ZIPF_S = 1.1
STOCK_RANGE = (10, 500)
ID_DIGITS = 7  # zero-padded, so that id order is request order (the poller reads ranges)


@dataclass(frozen=True)
class Request:
    """One order line; always quantity 1, so a decision is one unit of stock."""

    order_id: str
    user_id: str
    product_id: str
    quantity: int = 1


@dataclass(frozen=True)
class Workload:
    """Initial stock and the requests, in publish order (every order_id distinct)."""

    name: str
    stock: dict[str, int]
    requests: list[Request]

    def expected_reserved(self) -> dict[str, int]:
        """Return, per product, how many requests any correct system reserves."""
        demand = Counter(request.product_id for request in self.requests)
        return {product: min(stock, demand[product]) for product, stock in self.stock.items()}

    def order_ids(self) -> list[str]:
        """Return the order ids, ascending (the same as request order)."""
        return [request.order_id for request in self.requests]


def combine(*workloads: Workload) -> Workload:
    """Return one workload of several disjoint ones (products and order ids apart)."""
    stock: dict[str, int] = {}
    requests: list[Request] = []
    for workload in workloads:
        stock |= workload.stock
        requests += workload.requests
    return Workload("+".join(w.name for w in workloads), stock, requests)


def _user(rng: random.Random) -> str:
    return f"user-{rng.randrange(USERS):05d}"


def hot(requests: int = 100_000, stock: int = 10_000, seed: int = 1, prefix: str = "") -> Workload:
    """Build the flash sale: every request wants one product, ``{prefix}hot-1``."""
    rng = random.Random(seed)
    product = f"{prefix}hot-1"
    lines = [
        Request(f"{prefix}hot-{i:0{ID_DIGITS}d}", _user(rng), product) for i in range(requests)
    ]
    return Workload("hot", {product: stock}, lines)


def spread(
    requests: int = 200_000, products: int = 1_000, seed: int = 2, prefix: str = ""
) -> Workload:
    """Build a catalogue sale: Zipf(s=1.1) demand over `products`, random stock each."""
    rng = random.Random(seed)
    ids = [f"{prefix}prod-{rank:04d}" for rank in range(1, products + 1)]
    stock = {product: rng.randint(*STOCK_RANGE) for product in ids}
    # Rank weights 1/rank**s: a few best sellers sell out, the long tail does not.
    weights = [1 / rank**ZIPF_S for rank in range(1, products + 1)]
    chosen = rng.choices(ids, weights=weights, k=requests)
    lines = [
        Request(f"{prefix}spread-{i:0{ID_DIGITS}d}", _user(rng), product)
        for i, product in enumerate(chosen)
    ]
    return Workload("spread", stock, lines)
