"""Every Kafka client's connection options come from the settings: plaintext, or SASL."""

from __future__ import annotations

import pytest

from orderstream.agents.lifecycle.faust_app import faust_credentials
from orderstream.kafka_security import kafka_options
from orderstream.settings import Settings


def test_plaintext_adds_nothing_and_sasl_adds_the_principal() -> None:
    assert kafka_options(Settings(kafka_bootstrap="k:9092")) == {"bootstrap_servers": "k:9092"}
    assert faust_credentials(Settings()) == {}
    sasl = Settings.model_validate(
        {
            "kafka_bootstrap": "k:9092",
            "kafka_security_protocol": "SASL_PLAINTEXT",
            "kafka_sasl_username": "orderstream",
            "kafka_sasl_password": "s3cret",
        }
    )
    assert kafka_options(sasl) == {
        "bootstrap_servers": "k:9092",
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "orderstream",
        "sasl_plain_password": "s3cret",
    }
    credentials = faust_credentials(sasl)["broker_credentials"]
    assert (credentials.username, credentials.password) == ("orderstream", "s3cret")
    assert "s3cret" not in "\n".join(sasl.as_env_lines())  # `orderstream settings` masks it


def test_sasl_without_its_credentials_is_refused() -> None:
    with pytest.raises(ValueError, match="ORDERSTREAM_KAFKA_SASL_USERNAME"):
        Settings.model_validate({"kafka_security_protocol": "SASL_SSL"})
