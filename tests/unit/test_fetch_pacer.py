"""The fetch pacer: batched fetches while records flow, the consumer's own when idle."""

from __future__ import annotations

from types import SimpleNamespace

from orderstream.kafka_clients import PACED_FETCH_BYTES, FetchPacer


def _consumer(wait_ms: int = 500, min_bytes: int = 1) -> SimpleNamespace:
    fetcher = SimpleNamespace(_fetch_max_wait_ms=wait_ms, _fetch_min_bytes=min_bytes)
    return SimpleNamespace(_fetcher=fetcher)


def _settings(consumer: SimpleNamespace) -> tuple[int, int]:
    return consumer._fetcher._fetch_max_wait_ms, consumer._fetcher._fetch_min_bytes


def test_records_pace_fetches_and_an_empty_poll_restores_the_consumers_own() -> None:
    consumer = _consumer(wait_ms=400, min_bytes=1)
    pacer = FetchPacer(consumer, wait_ms=5)  # type: ignore[arg-type]
    assert _settings(consumer) == (400, 1)  # nothing changes before records flow
    pacer.polled(True)
    assert _settings(consumer) == (5, PACED_FETCH_BYTES)
    pacer.polled(True)
    assert _settings(consumer) == (5, PACED_FETCH_BYTES)
    pacer.polled(False)
    assert _settings(consumer) == (400, 1)
    pacer.polled(True)
    assert _settings(consumer) == (5, PACED_FETCH_BYTES)


def test_a_zero_wait_never_paces() -> None:
    consumer = _consumer()
    pacer = FetchPacer(consumer, wait_ms=0)  # type: ignore[arg-type]
    for got in (True, True, False, True):
        pacer.polled(got)
        assert _settings(consumer) == (500, 1)


def test_a_consumer_without_a_fetcher_is_left_alone() -> None:
    pacer = FetchPacer(SimpleNamespace(), wait_ms=5)  # type: ignore[arg-type]
    pacer.polled(True)  # no error: an aiokafka without the attribute fetches as configured
    pacer.polled(False)
