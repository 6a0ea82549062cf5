"""The alert rules load in Prometheus and each names a metric orderstream exports."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from orderstream.audit.report import AuditReport, Check, write_textfile
from orderstream.metrics import LifecycleMetrics, SinkMetrics, StatusMetrics, WorkerMetrics

RULES = Path(__file__).resolve().parents[2] / "deploy" / "alerts.yml"


def test_the_rules_load_in_prometheus() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("ORDERSTREAM_REQUIRE_STACK") == "1":  # make test, CI
            pytest.fail("promtool not found: install Debian's prometheus package")
        pytest.skip("promtool not found (Debian's prometheus package has it)")
    checked = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def _exported(tmp_path: Path) -> set[str]:
    registry = CollectorRegistry()
    for metrics in (WorkerMetrics, SinkMetrics, LifecycleMetrics, StatusMetrics):
        metrics.register(registry)
    # A labelled metric has no sample until a label is used: its names by its type (and
    # its family name, as a description may name it).
    suffixes = {
        "counter": ["_total"],
        "histogram": ["_bucket", "_sum", "_count"],
    }
    names = {
        family.name + suffix
        for family in registry.collect()
        for suffix in ["", *suffixes.get(family.type, [])]
    }
    report = AuditReport(datetime.now(UTC), datetime.now(UTC), 0, {}, [Check("x", 1, "rows")])
    textfile = tmp_path / "audit.prom"
    write_textfile(report, str(textfile))
    for family in text_string_to_metric_families(textfile.read_text()):
        names |= {family.name, *(sample.name for sample in family.samples)}
    return names


def test_every_alert_names_an_exported_metric(tmp_path: Path) -> None:
    exported = _exported(tmp_path)
    alerts = re.split(r"\n\s+- alert: ", RULES.read_text())[1:]
    assert len(alerts) >= 8
    for alert in alerts:
        name = alert.split("\n", 1)[0]
        used = set(re.findall(r"\b(orderstream_[a-z_]+)", alert))
        if name == "OrderstreamProcessDown":
            assert "up{" in alert  # Prometheus' own metric of each scrape target
            continue
        assert used, name
        assert used <= exported, (name, used - exported)


def test_prometheus_scrapes_every_door_process_of_the_compose_status_service(
    tmp_path: Path,
) -> None:
    deploy = RULES.parent
    compose = yaml.safe_load((deploy.parent / "docker-compose.yml").read_text())
    env = compose["services"]["status"]["environment"]
    processes, first_port = (
        int(env["ORDERSTREAM_HTTP_PROCESSES"]),
        int(env["ORDERSTREAM_HTTP_METRICS_PORT"]),
    )
    config = yaml.safe_load((deploy / "prometheus.yml").read_text())
    [job] = [job for job in config["scrape_configs"] if job["job_name"] == "orderstream-status"]
    scraped = {(sd["names"][0], sd["port"]) for sd in job["dns_sd_configs"]}
    assert scraped == {("status", first_port + k) for k in range(processes)}
    # And the config loads (its rule file where compose mounts it, here beside it).
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("ORDERSTREAM_REQUIRE_STACK") == "1":
            pytest.fail("promtool not found: install Debian's prometheus package")
        pytest.skip("promtool not found (Debian's prometheus package has it)")
    config["rule_files"] = [str(RULES)]
    local = tmp_path / "prometheus.yml"
    local.write_text(yaml.safe_dump(config))
    checked = subprocess.run(
        [promtool, "check", "config", str(local)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
