"""The one Settings class: every knob, read from ``ORDERSTREAM_*`` environment variables."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# The local stack that `make stack-up` starts listens on these.
DEFAULT_DATABASE_URL = "postgresql://orderstream:orderstream@127.0.0.1:55432/orderstream"

Name = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]*$")]


class Settings(BaseSettings):
    """Configuration of every orderstream process."""

    model_config = SettingsConfigDict(env_prefix="ORDERSTREAM_", frozen=True, extra="ignore")

    kafka_bootstrap: str = "localhost:9092"
    # How the clients authenticate (kafka_security.py): PLAINTEXT locally; with ACLs,
    # SASL (SCRAM-SHA-512 by default) as orderstream's own principal, over TLS
    # (SASL_SSL, the CA in kafka_ssl_cafile) or not.
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"] = "SCRAM-SHA-512"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None
    database_url: SecretStr = SecretStr(DEFAULT_DATABASE_URL)
    # PostgreSQL schema that holds the tables; tests give each run its own.
    database_schema: Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_]*$")] = "public"
    http_host: str = "0.0.0.0"  # noqa: S104 - the status service is meant to be reached
    http_port: int = Field(default=8080, ge=0, le=65535)
    # Processes serving the status service on http_port (SO_REUSEPORT: the kernel spreads
    # connections over them), each with its own Kafka producer, stock view, rate limits
    # and metrics. None: one per core this process may run on. `orderstream serve
    # --processes N` overrides it.
    http_processes: int | None = Field(default=None, ge=1, le=256)
    # With more than one, process k (0, 1, ...) also serves its own /metrics on this port
    # + k, for Prometheus to scrape each one; 0: not served (the shared port's /metrics
    # answers for whichever process took the connection).
    http_metrics_port: int = Field(default=0, ge=0, le=65535)
    # POST /orders publishes in flight (sent, not acknowledged yet) per process; past it
    # the door answers 503 with Retry-After at once instead of queueing behind Kafka.
    http_max_in_flight: int = Field(default=1000, ge=1)
    # Whether POST /orders answers 409 SOLD_OUT from the live stock view (a hint; the
    # stock agent decides every order that passes). Off: every valid order is published.
    http_sold_out_hint: bool = True

    # Prepended to every topic name, so that several pipelines (or tests) share a broker.
    topic_prefix: Annotated[str, Field(pattern=r"^[a-z0-9_.-]*$")] = ""
    # Faust application id: names the worker's consumer group and its changelog topics.
    app_id: Name = "orderstream"
    sink_group: Name = "orderstream-sink"
    # A stable name for this worker process (Kafka static membership). A worker restarted
    # under the same name within the session timeout gets its partitions back at once,
    # instead of after the dead member's session times out; but a worker stopped for
    # good hands its partitions over only then. Set it where a supervisor restarts
    # workers in place (systemd, a StatefulSet); unique per worker.
    worker_id: Name | None = None
    # Partitions of every topic; co-partitioned topics must agree, so there is one number.
    partitions: int = Field(default=8, ge=1, le=1024)
    replication_factor: int = Field(default=1, ge=1)
    data_dir: Path = Path(".orderstream-data")

    # The largest quantity one line may ask for; above it the line is LIMIT_EXCEEDED.
    max_line_quantity: int = Field(default=10, ge=1)
    # The most one user may hold or buy of one product (reserved + sold, counted by the
    # stock agent); a line past it is LIMIT_EXCEEDED. None: no limit, unless the product
    # has its own (`orderstream stock set P N --limit 2`).
    max_per_user: int | None = Field(default=None, ge=1)
    # The currency of a price given without one (CLI, admin route, seed): ISO 4217.
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")] = "EUR"
    # The bearer token of the admin routes (/admin/...); unset: they answer 403.
    admin_token: SecretStr | None = None
    # Rate limits at the door, per service process (N processes let N times through; a
    # global limit belongs in the proxy in front). POST /orders per user_id: 5 a second,
    # a burst of 10, more than a person clicks and less than a bot loops. Every request
    # per client address: off by default (a shop back end calling for all its shoppers
    # is one address). A rate of 0 turns a limit off.
    rate_limit_user_per_s: float = Field(default=5.0, ge=0)
    rate_limit_user_burst: int = Field(default=10, ge=1)
    rate_limit_address_per_s: float = Field(default=0.0, ge=0)
    rate_limit_address_burst: int = Field(default=50, ge=1)
    # Shopper identity (http/shoppers.py), off unless a key is set: an HS256 secret (at
    # least 32 bytes) or a PEM public key file (RSA: RS256, P-256: ES256). Tokens must
    # name this issuer and audience, and carry exp and sub (the user); leeway for clocks.
    jwt_hs256_secret: SecretStr | None = None
    jwt_public_key_file: Path | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_leeway_s: float = Field(default=30.0, ge=0, le=300)
    # Proxies in front of the service that each append to X-Forwarded-For: the client's
    # address is the entry the nearest one added. 0: the connection's peer address.
    trusted_proxies: int = Field(default=0, ge=0, le=10)

    # The stock agent decides at most this many records per fetched batch (bounds the
    # latency a batch adds to its first record).
    batch_max_records: int = Field(default=500, ge=1)

    # How long the stock agent remembers a final decision (a rejection) to recognise a
    # duplicate: producer retries and redeliveries come within minutes, a consumer reset
    # or a stopped pipeline may replay hours. After it, the hold is dropped (tombstoned)
    # and a request whose Kafka timestamp is older is dead-lettered STALE, never decided.
    # A day covers an outage of a day, and bounds state and restore time by a day of
    # sales. Reservations are kept until they are final, whatever the window.
    dedup_window_s: float = Field(default=86_400.0, ge=1)

    # Worker tuning, for the stock agent and the lifecycle alike: how often each commits
    # (a crash redelivers what came after the last commit), and how long a group waits for
    # a silent member before its partitions move (kafka_clients.py: the heartbeat).
    commit_interval_s: float = Field(default=0.5, gt=0)
    # Below 6 s only where the broker allows it (group.min.session.timeout.ms: Kafka's
    # default is 6000; the local stack and docker-compose.yml set 2000).
    session_timeout_s: float = Field(default=10.0, ge=2)
    # 1: every worker tails the stock changelog partitions it does not own into standby
    # stores, so a takeover reads only what the standby had not (agents/stock/standby.py).
    standby_replicas: int = Field(default=0, ge=0, le=1)

    # Sink batching: up to this many records, or whatever arrived within the wait. With
    # COPY the cost per batch dominates, so batches are large: at 2,000 records the sink
    # falls seconds behind a stock agent deciding ~12-14k orders/s.
    sink_batch_max: int = Field(default=5000, ge=1)
    sink_batch_wait_ms: int = Field(default=50, ge=1)
    # While records flow, the stock agent's and the sink's fetches ask the broker to wait
    # up to this long for a batch's worth (kafka_clients.FetchPacer); 0: fetch as soon as
    # anything is there.
    fetch_batch_wait_ms: int = Field(default=5, ge=0, le=100)

    log_level: str = "INFO"

    # Where a worker and a sink run apart (`orderstream worker`, `orderstream sink`) serve
    # their /metrics, on http_host; 0: not served. One setting per role, so that a worker
    # and a sink on one host never ask for the same port with the defaults (9100 is left
    # to Prometheus' node exporter); a second worker on the same host needs a port of its
    # own. `orderstream run` serves every role's metrics at the status service's /metrics.
    worker_metrics_port: int = Field(default=9101, ge=0, le=65535)
    sink_metrics_port: int = Field(default=9102, ge=0, le=65535)
    # "text" lines, or "json": one JSON object per line (orderstream/logs.py).
    log_format: Literal["text", "json"] = "text"

    # The order lifecycle (`orderstream orders`: the order and payment agents).
    # How long the provider has to pay an order, counted from the first charge attempt:
    # past it the order is EXPIRED and its stock released. An order waiting for a
    # payment slot is not expiring (our queue is not the shopper's fault). Also how
    # long a cancel may wait for its order.
    order_ttl_s: float = Field(default=600.0, gt=0)
    # How long an order of several lines waits for the rest after its first line: they
    # are published in one transaction, so they come within the stock partitions' lag
    # of each other; past this the order is REJECTED (INVALID) and its lines released.
    # Lines that never come (a producer that sent one of two) hold stock this long only.
    lines_wait_s: float = Field(default=30.0, gt=0)
    # A final order stays in the lifecycle's table this long (a late payment answer or
    # a redelivered input finds it and changes nothing), then leaves it: a tombstone in
    # its changelog, so that a restart restores the live orders, not every order ever
    # sold. At least the dedup window: a duplicate request within it is re-sent the
    # recorded decision by the stock agent, which must find its order here.
    order_retention_s: float = Field(default=86_400.0, ge=1)
    # A reservation whose payment was asked for and never answered (a request lost to a
    # bug) is expired this long after its TTL: a safety net, never reached when the
    # payment agent runs.
    payment_answer_grace_s: float = Field(default=3600.0, gt=0)
    # The order agent applies what one fetch brings, up to this many inputs, with one
    # changelog flush for all of them; it waits at most the batch wait for more to come.
    lifecycle_batch_max: int = Field(default=1000, ge=1)
    lifecycle_batch_wait_ms: int = Field(default=5, ge=1)
    # How often the expiry timer looks for orders past their TTL or retention (an index
    # by deadline, rebuilt from the table after a rebalance): an order expires at most
    # this long after its TTL.
    expiry_interval_s: float = Field(default=2.0, gt=0)
    # The mock payment provider: the share of charges that succeed, and how long each
    # answer takes (uniform between the two).
    payment_success_rate: float = Field(default=0.9, ge=0, le=1)
    payment_delay_min_s: float = Field(default=0.1, ge=0)
    payment_delay_max_s: float = Field(default=0.5, ge=0)
    # The share of the mock's calls that fail as an outage would (retried); 0 in a sale.
    payment_error_rate: float = Field(default=0.0, ge=0, le=1)
    # Charges in flight at once. A sale settles at about concurrency / provider latency:
    # 512 keeps a 100-500 ms provider at ~1,700 charges/s, above what the stock agent
    # decides on one partition; each one in flight is a coroutine, not a thread.
    payment_concurrency: int = Field(default=512, ge=1, le=10_000)
    # The provider's own cap on calls per second (a token bucket, bursts of one
    # second's worth); 0: no cap. Real providers enforce one: when it is the wall, a
    # sale of N units takes about N / payment_rate_limit_per_s seconds to settle.
    payment_rate_limit_per_s: float = Field(default=0.0, ge=0)
    # A call to the provider that takes longer than this is a failure, and retried.
    payment_timeout_s: float = Field(default=2.0, gt=0)
    # Attempts per charge or refund, waiting payment_backoff_s, doubling, between them;
    # after the last the order is CANCELLED with PAYMENT_UNAVAILABLE.
    payment_attempts: int = Field(default=5, ge=1)
    payment_backoff_s: float = Field(default=0.2, ge=0)
    # After this many failed calls in a row, the provider is not called for
    # payment_breaker_open_s (attempts fail at once), then tried again with one call.
    payment_breaker_failures: int = Field(default=5, ge=1)
    payment_breaker_open_s: float = Field(default=10.0, gt=0)
    # Where `orderstream orders` serves its /metrics (0: not served).
    orders_metrics_port: int = Field(default=9103, ge=0, le=65535)
    # Whether `orderstream run` runs the order lifecycle (payment, expiry, cancel) beside
    # its other roles; `orderstream orders` runs it in a process of its own. Off for a
    # deployment that runs the lifecycle apart, or the stock path alone (its tests).
    run_lifecycle: bool = True
    # `orderstream audit`: an order not final yet whose lines are already committed or
    # released is in flight (between the stock's settlement and its final event) for
    # this long at most; older, it is stuck, and a violation. Three default TTLs.
    audit_in_flight_max_s: float = Field(default=1800.0, gt=0)

    @model_validator(mode="after")
    def _sasl_has_its_credentials(self) -> Self:
        sasl = self.kafka_security_protocol.startswith("SASL")
        if sasl and not (self.kafka_sasl_username and self.kafka_sasl_password):
            raise ValueError(
                f"ORDERSTREAM_KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} needs"
                " ORDERSTREAM_KAFKA_SASL_USERNAME and ORDERSTREAM_KAFKA_SASL_PASSWORD"
            )
        return self

    @model_validator(mode="after")
    def _one_jwt_key_with_its_claims(self) -> Self:
        if self.jwt_hs256_secret is not None and self.jwt_public_key_file is not None:
            raise ValueError(
                "set ORDERSTREAM_JWT_HS256_SECRET or ORDERSTREAM_JWT_PUBLIC_KEY_FILE, not both"
            )
        keyed = self.jwt_hs256_secret is not None or self.jwt_public_key_file is not None
        if keyed and not (self.jwt_issuer and self.jwt_audience):
            raise ValueError(
                "shopper tokens need ORDERSTREAM_JWT_ISSUER and ORDERSTREAM_JWT_AUDIENCE:"
                " a token minted for another service must not pass here"
            )
        return self

    @model_validator(mode="after")
    def _retention_covers_the_dedup_window(self) -> Self:
        if self.order_retention_s < self.dedup_window_s:
            raise ValueError(
                f"ORDERSTREAM_ORDER_RETENTION_S ({self.order_retention_s:g}) must be at least"
                f" ORDERSTREAM_DEDUP_WINDOW_S ({self.dedup_window_s:g}): a duplicate request"
                " within the window is re-sent its decision, which must find its order"
            )
        return self

    def intake_processes(self) -> int:
        """Return how many processes serve http_port: the setting, or one per usable core."""
        if self.http_processes is not None:
            return self.http_processes
        if hasattr(os, "sched_getaffinity"):  # the cores this process may use (Linux)
            return max(1, len(os.sched_getaffinity(0)))
        return os.cpu_count() or 1

    def topic(self, name: str) -> str:
        """Return the full name of a topic, with this deployment's prefix."""
        return f"{self.topic_prefix}{name}"

    def as_env_lines(self) -> list[str]:
        """Return the effective settings as ``ORDERSTREAM_NAME=value`` lines, secrets masked."""
        return [f"{name}={value}" for name, value in self.to_env(mask_secrets=True).items()]

    def to_env(self, mask_secrets: bool = False) -> dict[str, str]:
        """Return the settings as the environment variables that would reproduce them."""
        env = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if value is None:
                continue  # unset: no variable reproduces None but its absence
            if isinstance(value, SecretStr):
                secret = value.get_secret_value()
                value = _mask_url(secret) if mask_secrets else secret
            env[f"ORDERSTREAM_{name.upper()}"] = str(value)
        return env


def _mask_url(url: str) -> str:
    """Hide the password of a ``scheme://user:password@host`` URL; a secret that is no URL
    (a token) is hidden whole."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "***"
    credentials, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in credentials:
        return url if not at else f"{scheme}{sep}***@{host}"
    user = credentials.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{host}"
