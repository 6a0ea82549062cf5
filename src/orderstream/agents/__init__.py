"""The stream processors, in two wings that never import each other.

- ``agents.stock``: the stock agent on plain aiokafka, single writer of its partitions'
  stock (agent, processor, commands, seam, store, restore, batcher, standby).
- ``agents.lifecycle``: the order lifecycle on Faust: the order agent and its effects and
  messages, payment, the provider and its resilience, Faust I/O, recovery and commits,
  the expiry deadlines and the lifecycle's lag.
"""

from orderstream.agents.stock.agent import StockAgent

__all__ = ["StockAgent"]
