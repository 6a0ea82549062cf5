"""The Grafana dashboard and Prometheus config: every query names a metric the code registers."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry

from orderstream.metrics import LifecycleMetrics, SinkMetrics, StatusMetrics, WorkerMetrics
from orderstream.settings import Settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "orderstream.json"

# The sample names Prometheus stores for each metric type.
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
}
# What the operators asked to see: decisions by outcome, latency, lag of each group, batch
# size, dead letters of both roles, expired holds, stock commands, the stock of the hottest
# products, payment outcomes and the provider's circuit breaker.
REQUIRED = {
    "orderstream_decisions_total",
    "orderstream_decision_latency_seconds_bucket",
    "orderstream_sink_lag_messages",
    "orderstream_sink_batch_records_bucket",
    "orderstream_dead_letters_total",
    "orderstream_sink_dead_letters_total",
    "orderstream_expired_holds_total",
    "orderstream_stock_commands_total",
    "orderstream_consumer_lag_messages",
    "orderstream_stock_available",
    "orderstream_stock_reserved",
    "orderstream_stock_sold",
    "orderstream_payments_total",
    "orderstream_payment_provider_calls_total",
    "orderstream_payment_breaker_open",
    "orderstream_sold_out_refusals_total",
    "orderstream_stock_view_caught_up",
}


def registered_names() -> set[str]:
    """Return every sample name the worker, sink, lifecycle and status service can expose."""
    registry = CollectorRegistry()
    WorkerMetrics.register(registry)
    SinkMetrics.register(registry)
    LifecycleMetrics.register(registry)
    StatusMetrics.register(registry)
    # Labelled metrics expose no sample before their first use: names come from the type.
    return {
        family.name + suffix for family in registry.collect() for suffix in _SUFFIXES[family.type]
    }


def metric_names(expr: str) -> set[str]:
    """Return the metric names a PromQL expression selects."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set()
    for match in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr):
        followed_by = expr[match.end() :].lstrip()[:1]
        if followed_by != "(" and match.group() not in {"and", "or", "unless", "offset"}:
            names.add(match.group())
    return names


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            found += panel.get("panels", [])
        else:
            found.append(panel)
    return found


def test_the_dashboard_loads_and_every_panel_has_a_query() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "orderstream"
    assert panels(dashboard)
    for panel in panels(dashboard):
        exprs = [target.get("expr", "").strip() for target in panel.get("targets", [])]
        assert exprs, f"panel {panel['title']!r} has no query"
        assert all(exprs), f"panel {panel['title']!r} has an empty query"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_every_metric_a_query_uses_is_registered_and_the_asked_ones_are_shown() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    registered = registered_names()
    used: set[str] = set()
    for panel in panels(dashboard):
        for target in panel["targets"]:
            names = metric_names(target["expr"])
            assert names, f"no metric found in {target['expr']!r}"
            unknown = names - registered
            assert not unknown, f"panel {panel['title']!r} queries unregistered {unknown}"
            used |= names
    assert used >= REQUIRED, f"not on the dashboard: {REQUIRED - used}"


def test_the_query_parser_finds_names_and_skips_functions_and_labels() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le)"
        ' (rate(a_seconds_bucket{outcome="x"}[$__rate_interval])))'
        " / sum(rate(b_total[5m]))"
    )
    assert metric_names(expr) == {"a_seconds_bucket", "b_total"}


def test_panels_use_the_provisioned_data_source() -> None:
    provisioned = (
        DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
    ).read_text()
    uid = re.search(r"^\s*uid:\s*(\S+)", provisioned, re.MULTILINE)
    assert uid is not None
    for panel in panels(json.loads(DASHBOARD.read_text())):
        assert panel["datasource"]["uid"] == uid.group(1), panel["title"]


def test_prometheus_scrapes_the_default_metrics_ports() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    ports = {
        sd["names"][0]: sd["port"]
        for job in config["scrape_configs"]
        for sd in job.get("dns_sd_configs", [])
        if sd["names"][0] != "status"  # its door processes: test_alert_rules
    }
    fields = Settings.model_fields
    assert ports == {
        "worker": fields["worker_metrics_port"].default,
        "sink": fields["sink_metrics_port"].default,
        "orders": fields["orders_metrics_port"].default,
    }
