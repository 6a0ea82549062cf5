"""Persistence of what the pipeline decided: Kafka topics in, PostgreSQL rows out."""

from orderstream.sink.base import Sink, SinkBatch
from orderstream.sink.migrate import drop_schema, migrate
from orderstream.sink.postgres import PostgresSink
from orderstream.sink.runner import SinkRunner

__all__ = ["PostgresSink", "Sink", "SinkBatch", "SinkRunner", "drop_schema", "migrate"]
