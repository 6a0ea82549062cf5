"""The order lifecycle on Faust: each order from its decision to its final state.

- ``faust_app``: the app, its topics and the orders table; ``orders``: the order agent
  (a batch of inputs at a time), ``order_effects`` and ``order_messages``: what it sends.
- ``payment``: the payment agent; ``provider`` and ``resilience``: the provider behind it.
- ``faust_io``, ``faust_recovery``, ``faust_commits``: Faust plumbing; ``deadlines``: the
  expiry index; ``lag``: the lifecycle's consumer lag.
"""
