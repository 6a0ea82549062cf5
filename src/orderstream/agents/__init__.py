"""The stream processors: a Faust app whose agents own the stock of their partitions."""

from orderstream.agents.app import build_worker_app, reset_local_store

__all__ = ["build_worker_app", "reset_local_store"]
