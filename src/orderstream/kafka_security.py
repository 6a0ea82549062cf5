"""How every Kafka client of orderstream connects: the bootstrap servers and, when the
cluster asks for it, SASL (SCRAM or PLAIN) over plaintext or TLS.

Every producer, consumer and admin client is built with ``kafka_options(settings)``, the
Faust app with the same as Faust credentials (agents/lifecycle/faust_app.py). Locally (the stack,
the tests) it is plaintext; a deployment with ACLs gives orderstream a principal of its
own (docs/operations.md, "Kafka access") and shops another that may only write order-requests.
"""

from __future__ import annotations

from typing import Any

from aiokafka.helpers import create_ssl_context

from orderstream.settings import Settings

__all__ = ["kafka_options", "kafka_security"]


def kafka_security(settings: Settings) -> dict[str, Any]:
    """Return the aiokafka options that authenticate (and encrypt) a client; {} for
    PLAINTEXT."""
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return {}
    options: dict[str, Any] = {"security_protocol": protocol}
    if protocol in ("SSL", "SASL_SSL"):
        cafile = settings.kafka_ssl_cafile
        options["ssl_context"] = create_ssl_context(cafile=str(cafile) if cafile else None)
    if protocol.startswith("SASL"):
        password = settings.kafka_sasl_password
        options |= {
            "sasl_mechanism": settings.kafka_sasl_mechanism,
            "sasl_plain_username": settings.kafka_sasl_username,
            "sasl_plain_password": password.get_secret_value() if password else None,
        }
    return options


def kafka_options(settings: Settings) -> dict[str, Any]:
    """Return the options every aiokafka client starts from: where, and how to connect."""
    return {"bootstrap_servers": settings.kafka_bootstrap, **kafka_security(settings)}
