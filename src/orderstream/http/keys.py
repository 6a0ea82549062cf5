"""Typed keys of what the application holds."""

from __future__ import annotations

from aiohttp import web
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool

from orderstream.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
REGISTRY = web.AppKey("registry", CollectorRegistry)
POOL = web.AppKey("pool", AsyncConnectionPool)
PRODUCER = web.AppKey("producer", AIOKafkaProducer)
