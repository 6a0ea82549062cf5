"""Typed keys of what the application holds."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool

from orderstream.http.roles import RoleRegistry
from orderstream.kafka_link import KafkaLink
from orderstream.metrics import StatusMetrics
from orderstream.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
REGISTRY = web.AppKey("registry", CollectorRegistry)
METRICS = web.AppKey("metrics", StatusMetrics)
POOL = web.AppKey("pool", AsyncConnectionPool)
KAFKA = web.AppKey("kafka", KafkaLink)
# Present when the service runs beside other roles (`orderstream run`): /readyz shows them.
ROLES = web.AppKey("roles", RoleRegistry)
