"""The stream processors: the stock agent, single writer of its partitions' stock."""

from orderstream.agents.stock import StockAgent

__all__ = ["StockAgent"]
