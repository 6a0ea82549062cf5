"""The running status service against its own OpenAPI document, fuzzed route by route.

`orderstream run` (worker, sink, status service) serves the test's topics and schema.
Schemathesis loads /openapi.json from it and sends every operation generated requests,
valid ones and (where an operation takes input) invalid ones: no answer may be a 5xx,
and every answer must be documented (status, content type, body, headers); an invalid
request must be refused with a 4xx. Orders decided by the real pipeline first give the
200 answers real rows to serialise, and a user's pages are followed cursor by cursor.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.integration.pipeline import Pipeline, request_json

pytestmark = pytest.mark.integration
log = logging.getLogger(__name__)

# Per operation and mode: bounded so that the whole fuzz takes seconds. FUZZ_EXAMPLES=1000
# runs a deeper search by hand.
MAX_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "50"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
NEGATIVE_CHECKS = [*CHECKS, negative_data_rejection]

USER = "user-doc"
PRODUCT = "sku-doc"
SEEDED = ["o-doc-1", "o-doc-2", "o-doc-3"]  # two get the stock, the third finds none


def _fuzz(schema: Any, base_url: str, session: requests.Session) -> dict[str, str]:
    """Fuzz every operation in each mode it has input for; return failures by operation."""
    failures: dict[str, str] = {}
    runs: list[tuple[str, Any, list[Any]]] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        runs.append((f"{operation.label} (valid)", operation.as_strategy(), CHECKS))
        if operation.path_parameters or operation.query or operation.headers or operation.body:
            negative = operation.as_strategy(generation_mode=GenerationMode.NEGATIVE)
            runs.append((f"{operation.label} (invalid)", negative, NEGATIVE_CHECKS))
    # A user with orders: limit and after over real rows, not only over empty pages.
    listing = schema["/users/{user_id}/orders"]["GET"]
    runs.append(
        (
            f"{listing.label} (valid, user {USER})",
            listing.as_strategy(path_parameters={"user_id": USER}),
            CHECKS,
        )
    )
    for name, strategy, checks in runs:
        try:
            _property(strategy, checks, base_url, session)()
        except (Exception, BaseExceptionGroup) as exc:  # schemathesis: a BaseExceptionGroup
            failures[name] = f"{type(exc).__name__}: {exc}"
    return failures


def _property(strategy: Any, checks: list[Any], base_url: str, session: requests.Session) -> Any:
    """Return the Hypothesis test: every generated case's answer passes ``checks``."""

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,  # nothing written into the work tree
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def conforms(case: Any) -> None:
        case.call_and_validate(base_url=base_url, session=session, checks=checks, timeout=30)

    return conforms


def _served(schema: Any, base_url: str, session: requests.Session) -> dict[str, Any]:
    """Ask for the seeded rows, follow a user's pages, post an order; validate each answer."""

    def call(path: str, method: str = "GET", **case: Any) -> Any:
        operation = schema[path][method]
        response = operation.Case(**case).call_and_validate(
            base_url=base_url, session=session, checks=CHECKS, timeout=30
        )
        return response.status_code, response.json()

    def ok(path: str, method: str = "GET", **case: Any) -> Any:
        status, answer = call(path, method, **case)
        assert status in {200, 202}, (path, status, answer)
        return answer

    answers: dict[str, Any] = {
        "orders": [ok("/orders/{order_id}", path_parameters={"order_id": o}) for o in SEEDED],
        "product": ok("/products/{product_id}", path_parameters={"product_id": PRODUCT}),
        "readyz": ok("/readyz"),
        # Refused before Kafka is asked: the order is REJECTED.
        "cancel": call(
            "/orders/{order_id}/cancel", "POST", path_parameters={"order_id": SEEDED[2]}
        ),
    }
    pages, query = [], {"limit": 1}
    while True:
        page = ok("/users/{user_id}/orders", path_parameters={"user_id": USER}, query=query)
        pages.append(page)
        if page["next"] is None:
            break
        query = {"limit": 1, "after": page["next"]}
    answers["pages"] = pages
    # PRODUCT is sold out by now: the door says so, as documented.
    sold_out = {"order_id": "o-doc-late", "user_id": USER, "product_id": PRODUCT, "quantity": 1}
    answers["sold out"] = call("/orders", "POST", body=sold_out)
    # Products the live view does not know: published, whatever the stock agent says.
    body = {"user_id": USER, "product_id": "sku-doc-2", "quantity": 1}
    key = {"Idempotency-Key": "o-doc-http"}
    answers["accepted"] = ok("/orders", "POST", headers=key, body=body)
    items = [{"product_id": "sku-doc-2", "quantity": 1}, {"product_id": "sku-doc-3", "quantity": 2}]
    lines = {"order_id": "o-doc-lines", "user_id": USER, "items": items}
    answers["accepted lines"] = ok("/orders", "POST", body=lines)
    return answers


async def test_every_route_conforms_to_its_document_under_fuzzing(pipeline: Pipeline) -> None:
    pipeline.start()
    base_url = f"http://127.0.0.1:{pipeline.settings.http_port}"
    await pipeline.set_stock(PRODUCT, 2)
    await pipeline.wait_for_stock(PRODUCT, 2)
    # One at a time: the third finds the stock gone, whatever order Kafka keeps.
    for order_id in SEEDED:
        await pipeline.publish([(PRODUCT.encode(), request_json(order_id, USER, PRODUCT))])
        await pipeline.wait_for_orders(SEEDED.index(order_id) + 1)

    schema = await asyncio.to_thread(
        schemathesis.openapi.from_url, f"{base_url}/openapi.json", wait_for_schema=60
    )
    with requests.Session() as session:
        answers = await asyncio.to_thread(_served, schema, base_url, session)
        sent: list[int] = []
        session.hooks["response"].append(lambda response, **_: sent.append(response.status_code))
        started = time.monotonic()
        failures = await asyncio.to_thread(_fuzz, schema, base_url, session)
        fuzz_seconds = time.monotonic() - started

    report = "\n\n".join(f"=== {name}\n{failure}" for name, failure in failures.items())
    assert not failures, f"{report}\n\n{pipeline.logs()}"
    # The first two may have moved on from RESERVED (payment) by the time they are read.
    assert [o["status"] != "REJECTED" for o in answers["orders"]] == [True, True, False]
    assert answers["orders"][2]["reason"] == "OUT_OF_STOCK"
    assert [item["product_id"] for item in answers["orders"][0]["items"]] == [PRODUCT]
    stock = answers["product"]
    assert stock["available"] + stock["reserved"] + stock["sold"] == stock["total_in"] == 2
    assert {"stock-agent", "sink", "status-service"} <= set(answers["readyz"]["roles"])
    listed = [order["order_id"] for page in answers["pages"] for order in page["orders"]]
    assert listed == SEEDED[::-1]  # newest first, each once
    assert answers["sold out"] == (
        409,
        {"error": "product sold out", "reason": "SOLD_OUT", "product_id": PRODUCT},
    )
    assert answers["accepted"] == {
        "order_id": "o-doc-http",
        "status_url": "/orders/o-doc-http",
        "lines": 1,
    }
    assert answers["accepted lines"] == {
        "order_id": "o-doc-lines",
        "status_url": "/orders/o-doc-lines",
        "lines": 2,
    }
    assert answers["cancel"][0] == 409
    assert pipeline.alive(), pipeline.logs()
    statuses = {status: sent.count(status) for status in sorted(set(sent))}
    log.info("fuzz: %d requests in %.1f s, answers by status %s", len(sent), fuzz_seconds, statuses)
