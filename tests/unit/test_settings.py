"""Settings: defaults, environment, masking."""

from __future__ import annotations

import pytest

from orderstream.settings import Settings


def test_defaults_point_at_the_local_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("KAFKA_BOOTSTRAP", "HTTP_PORT", "DATABASE_URL", "TOPIC_PREFIX"):
        monkeypatch.delenv(f"ORDERSTREAM_{name}", raising=False)
    settings = Settings()
    assert settings.kafka_bootstrap == "localhost:9092"
    assert settings.http_port == 8080
    assert settings.topic("order-requests") == "order-requests"


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORDERSTREAM_KAFKA_BOOTSTRAP", "kafka:9092")
    monkeypatch.setenv("ORDERSTREAM_TOPIC_PREFIX", "t1-")
    settings = Settings()
    assert settings.kafka_bootstrap == "kafka:9092"
    assert settings.topic("order-requests") == "t1-order-requests"


def test_settings_lines_mask_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORDERSTREAM_DATABASE_URL", "postgresql://app:s3cret@db:5432/shop")
    lines = Settings().as_env_lines()
    assert "ORDERSTREAM_DATABASE_URL=postgresql://app:***@db:5432/shop" in lines
    assert not any("s3cret" in line for line in lines)
    assert all(line.startswith("ORDERSTREAM_") and "=" in line for line in lines)


def test_bad_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORDERSTREAM_PARTITIONS", "0")
    with pytest.raises(ValueError, match="partitions"):
        Settings()
