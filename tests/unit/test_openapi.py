"""The OpenAPI document: valid, complete, and true to what the handlers serialise."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import jsonschema_rs
import pytest
import schemathesis
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel, ValidationError

from orderstream.domain import OrderStatus, RejectReason, StockOperation
from orderstream.http import create_app
from orderstream.http.admin import AdminOrdersPage, StockCommandPublished
from orderstream.http.encoding import error_body
from orderstream.http.openapi import document
from orderstream.http.schemas import (
    PAGE_DEFAULT,
    PAGE_MAX,
    ErrorBody,
    Health,
    Order,
    OrderAccepted,
    OrderPublished,
    ProductStock,
    Readiness,
    SoldOut,
    UserOrdersPage,
)
from orderstream.http.stock_view import StockFigure, StockFigures
from orderstream.http.validation import encode_cursor
from orderstream.settings import Settings
from orderstream.topics import ID_MAX_LENGTH, ID_PATTERN, MAX_LINE_COUNT, OrderRequest, StockChange

METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def _app() -> Any:
    # A pool that is never opened: these tests ask nothing of PostgreSQL or Kafka.
    pool = AsyncConnectionPool("", open=False)
    # Figures of its own, that nothing feeds: no live view follows Kafka.
    return create_app(Settings(), CollectorRegistry(), pool=pool, stock_figures=StockFigures())


def _validator(name: str) -> Any:
    schema = {"$ref": f"#/components/schemas/{name}", "components": document()["components"]}
    return jsonschema_rs.Draft202012Validator(schema, validate_formats=True)


def test_the_document_is_valid_openapi_3_1() -> None:
    schema = schemathesis.openapi.from_dict(document())
    schema.validate()  # against the OpenAPI 3.1 meta-schema
    operations = [result.ok().label for result in schema.get_all_operations()]  # Err: no .ok()
    assert len(operations) == len(set(operations)) == 12


def test_every_route_is_documented_and_nothing_else() -> None:
    routes = {
        (route.method, route.resource.canonical)
        for route in _app().router.routes()
        if route.method != "HEAD" and route.resource is not None  # HEAD: aiohttp's, for GET
    }
    documented = {
        (method.upper(), path)
        for path, item in document()["paths"].items()
        for method in item
        if method in METHODS
    }
    assert routes == documented


def test_every_operation_documents_its_statuses() -> None:
    paths = document()["paths"]
    statuses = {
        f"{method.upper()} {path}": sorted(answers["responses"])
        for path, item in paths.items()
        for method, answers in item.items()
    }
    assert statuses == {
        "POST /orders": ["202", "400", "401", "403", "409", "413", "422", "429", "500", "503"],
        "GET /orders/{order_id}": ["200", "400", "401", "404", "429", "500", "503"],
        "POST /orders/{order_id}/cancel": ["202", "400", "401", "404", "409", "429", "500", "503"],
        "GET /users/{user_id}/orders": ["200", "400", "401", "404", "429", "500", "503"],
        "GET /products/{product_id}": ["200", "400", "404", "429", "500", "503"],
        "GET /healthz": ["200", "500"],
        "GET /readyz": ["200", "500", "503"],
        "GET /metrics": ["200", "500"],
        "GET /openapi.json": ["200", "500"],
        "PUT /admin/products/{product_id}": [
            *("202", "400", "401", "403", "413", "422", "429", "500", "503")
        ],
        "GET /admin/orders": ["200", "400", "401", "403", "429", "500", "503"],
        "POST /admin/orders/{order_id}/status": [
            *("202", "400", "401", "403", "404", "409", "413", "422", "429", "500", "503")
        ],
    }
    errors = document()["components"]["responses"]
    assert errors["TooManyRequests"]["headers"]["Retry-After"]["schema"]["minimum"] == 1
    assert errors["MethodNotAllowed"]["headers"]["Allow"]["schema"] == {"type": "string"}
    metrics = paths["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(metrics) == ["text/plain"]


def test_parameters_carry_the_handlers_bounds() -> None:
    paths = document()["paths"]
    ids = [
        parameter
        for item in paths.values()
        for operation in item.values()
        for parameter in operation.get("parameters", [])
        if parameter["name"]
        in {"order_id", "user_id", "product_id", "Idempotency-Key", "product", "user"}
    ]
    assert len(ids) == 10  # with the product_id of a queued order's status_url
    for parameter in ids:
        assert parameter["schema"] == {
            "type": "string",
            "minLength": 1,
            "maxLength": ID_MAX_LENGTH,
            "pattern": ID_PATTERN,
        }
    query = {p["name"]: p for p in paths["/users/{user_id}/orders"]["get"]["parameters"]}
    assert query["limit"]["schema"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": PAGE_MAX,
        "default": PAGE_DEFAULT,
    }
    cursor = encode_cursor(datetime(2026, 11, 26, tzinfo=UTC), "o/\u00e9")
    assert jsonschema_rs.Draft202012Validator(query["after"]["schema"]).is_valid(cursor)
    body = paths["/orders"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {
        "oneOf": [
            {"$ref": "#/components/schemas/OrderRequestBody"},
            {"$ref": "#/components/schemas/OrderLinesBody"},
        ]
    }
    schemas = document()["components"]["schemas"]
    order_request = OrderRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    nested = order_request.pop("$defs")
    assert schemas["OrderRequest"] == order_request
    # The models it nests (the addresses) sit beside it under components, as they are.
    assert {name: schemas[name] for name in nested} == nested
    # The same fields, but order_id may come from the Idempotency-Key header instead.
    assert schemas["OrderRequestBody"]["properties"] == order_request["properties"]
    assert schemas["OrderRequestBody"]["required"] == ["user_id", "product_id", "quantity"]
    assert schemas["OrderLinesBody"]["required"] == ["user_id", "items"]
    items = schemas["OrderLinesBody"]["properties"]["items"]
    assert (items["minItems"], items["maxItems"]) == (1, MAX_LINE_COUNT)
    assert schemas["OrderLine"]["required"] == ["product_id", "quantity"]


BODIES = {
    "one line": ({"user_id": "u", "product_id": "p", "quantity": 1}, "OrderRequestBody"),
    "items": ({"user_id": "u", "items": [{"product_id": "p", "quantity": 2}]}, "OrderLinesBody"),
    "items and a product": (
        {"user_id": "u", "product_id": "p", "quantity": 1, "items": [{"product_id": "p"}]},
        None,
    ),
    "no item": ({"user_id": "u", "items": []}, None),
    "101 items": (
        {"user_id": "u", "items": [{"product_id": f"p{n}", "quantity": 1} for n in range(101)]},
        None,
    ),
}


@pytest.mark.parametrize(("body", "schema"), BODIES.values(), ids=BODIES)
def test_a_body_is_one_line_or_items_never_both(body: dict[str, Any], schema: str | None) -> None:
    one_of = document()["paths"]["/orders"]["post"]["requestBody"]["content"]
    validator = jsonschema_rs.Draft202012Validator(
        one_of["application/json"]["schema"] | {"components": document()["components"]}
    )
    assert validator.is_valid(body) == (schema is not None)
    if schema is not None:
        assert _validator(schema).is_valid(body)


NAIVE = datetime(2026, 11, 26, 11, 32, 22, 572_123)
PARIS = datetime(2026, 11, 26, 12, 32, 22, 572_999, tzinfo=timezone(timedelta(hours=1)))
ORDER_ROW = {
    "order_id": "o-1",
    "user_id": "u",
    "status": "REJECTED",
    "reason": "OUT_OF_STOCK",
    "detail": None,
    "total": None,
    "currency": None,
    "shipping_address": None,
    "billing_address": None,
    "notes": None,
    "created_at": NAIVE,
    "updated_at": PARIS,
}
# An order as get_order reads it when it has prices, metadata and an override: numeric
# columns come back as Decimals padded to their scale, jsonb parsed.
PRICED_ORDER_ROW = ORDER_ROW | {
    "status": "CONFIRMED",
    "reason": "ADMIN_OVERRIDE",
    "total": Decimal("39.9800"),
    "currency": "EUR",
    "shipping_address": {"name": "Ada", "line1": "1 Rue X", "city": "Paris", "country": "FR"},
    "notes": "ring twice\nthen wait",
}

# What each handler builds from PostgreSQL's rows (or its own values), as it builds it.
SERVED: dict[str, BaseModel] = {
    "order": Order.model_validate(
        {
            **ORDER_ROW,
            "items": [
                {
                    "product_id": "p",
                    "quantity": 2,
                    "status": "REJECTED",
                    "unit_price": None,
                    "currency": None,
                }
            ],
            "history": [
                {
                    "seq": 1,
                    "status": "REJECTED",
                    "reason": "OUT_OF_STOCK",
                    "detail": None,
                    "actor": None,
                    "occurred_at": PARIS,
                }
            ],
        }
    ),
    "priced order": Order.model_validate(
        {
            **PRICED_ORDER_ROW,
            "items": [
                {
                    "product_id": "p",
                    "quantity": 2,
                    "status": "CONFIRMED",
                    "unit_price": Decimal("19.9900"),
                    "currency": "EUR",
                }
            ],
            "history": [
                {
                    "seq": 2,
                    "status": "CONFIRMED",
                    "reason": "ADMIN_OVERRIDE",
                    "detail": "paid by transfer",
                    "actor": "ops-ann",
                    "occurred_at": PARIS,
                }
            ],
        }
    ),
    "page": UserOrdersPage.model_validate(
        {"user_id": "u", "orders": [ORDER_ROW], "next": encode_cursor(PARIS, "o-1")}
    ),
    "last page": UserOrdersPage(user_id="u", orders=[], next=None),
    "product from the database": ProductStock.model_validate(
        {
            "product_id": "p",
            "available": 1,
            "reserved": 2,
            "sold": 3,
            "total_in": 6,
            "version": 9,
            "price": Decimal("12.5000"),  # numeric(14, 4) pads
            "currency": "EUR",
            "max_per_user": None,
            "updated_at": NAIVE,
            "age_ms": 12,
            "source": "database",
        }
    ),
    "product live": StockFigure(
        StockChange(
            product_id="p",
            available=0,
            reserved=1,
            sold=5,
            total_in=6,
            version=12,
            changed_at_ms=1_795_000_000_000,
            max_per_user=2,
        ),
        received_at_ms=1_795_000_000_040,
    ).product_stock(now_ms=1_795_000_000_100),
    "sold out": SoldOut(error="product sold out", reason="SOLD_OUT", product_id="p"),
    "accepted": OrderAccepted(order_id="o-1", status_url="/orders/o-1"),
    "published": OrderPublished(order_id="o-1", status_url="/orders/o-1", lines=3),
    "admin page": AdminOrdersPage.model_validate(
        {"orders": [ORDER_ROW], "next": encode_cursor(PARIS, "o-1")}
    ),
    "stock command": StockCommandPublished(
        product_id="p", operation=StockOperation.UPDATE, partition=3, offset=0
    ),
    "health": Health(status="ok"),
    "ready alone": Readiness.model_validate(
        {"ready": True, "checks": {"postgres": "ok", "kafka": "ok"}, "process": 4242}
    ),
    "not ready beside roles": Readiness.model_validate(
        {
            "ready": False,
            "checks": {"postgres": "ok", "kafka": "failed: ConnectionError()"},
            "roles": {"sink": "running"},
            "process": 4242,
        }
    ),
    "error": error_body("order not found", order_id="o-1"),
    "error with details": error_body(
        "invalid order request",
        details=[{"type": "missing", "loc": ("quantity",), "msg": "Field required"}],
    ),
}


@pytest.mark.parametrize("body", SERVED.values(), ids=SERVED)
def test_what_handlers_serialise_conforms_to_the_document(body: BaseModel) -> None:
    served = json.loads(body.model_dump_json())
    _validator(type(body).__name__).validate(served)


def test_bodies_leave_out_what_they_do_not_have_and_stamp_time_in_utc_ms() -> None:
    assert json.loads(SERVED["error"].model_dump_json()) == {
        "error": "order not found",
        "order_id": "o-1",
    }
    assert "roles" not in json.loads(SERVED["ready alone"].model_dump_json())
    order = json.loads(SERVED["order"].model_dump_json())
    assert (order["created_at"], order["updated_at"]) == (
        "2026-11-26T11:32:22.572Z",
        "2026-11-26T11:32:22.572Z",
    )
    assert order["reason"] == RejectReason.OUT_OF_STOCK
    assert order["status"] == OrderStatus.REJECTED
    unknown = ("total", "currency", "shipping_address", "billing_address", "notes")
    assert {name: order[name] for name in unknown} == dict.fromkeys(unknown)


def test_money_is_an_exact_string_and_metadata_is_served_as_stored() -> None:
    order = json.loads(SERVED["priced order"].model_dump_json())
    assert (order["total"], order["currency"]) == ("39.98", "EUR")
    assert order["items"][0] == {
        "product_id": "p",
        "quantity": 2,
        "status": "CONFIRMED",
        "unit_price": "19.99",
        "currency": "EUR",
    }
    # As the shop sent it: the address's optional fields it left out stay out.
    assert order["shipping_address"] == PRICED_ORDER_ROW["shipping_address"]
    assert (order["billing_address"], order["notes"]) == (None, "ring twice\nthen wait")
    assert (order["history"][0]["actor"], order["history"][0]["detail"]) == (
        "ops-ann",
        "paid by transfer",
    )


def test_a_row_the_document_does_not_describe_is_refused() -> None:
    # Serialised through its model, a drifted row fails loudly (500, logged) instead of
    # reaching a client in a shape the document does not describe.
    with pytest.raises(ValidationError):
        Order.model_validate({**ORDER_ROW, "status": "LOST", "items": [], "history": []})


async def test_the_service_serves_the_document() -> None:
    async with TestClient(TestServer(_app())) as client:
        response = await client.get("/openapi.json")
        assert response.status == 200
        assert response.content_type == "application/json"
        assert await response.json() == document()
        health = await client.get("/healthz")
        _validator("Health").validate(await health.json())
        missing = await client.get("/nowhere")
        assert missing.status == 404
        _validator(ErrorBody.__name__).validate(await missing.json())


def test_the_admin_routes_need_the_bearer_token() -> None:
    doc = document()
    assert doc["components"]["securitySchemes"]["adminToken"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "The admin token, ORDERSTREAM_ADMIN_TOKEN of the service.",
    }
    guarded = {
        f"{method.upper()} {path}"
        for path, item in doc["paths"].items()
        for method, operation in item.items()
        if operation.get("security") == [{"adminToken": []}]
    }
    assert guarded == {
        f"{method.upper()} {path}"
        for path, item in doc["paths"].items()
        if path.startswith("/admin/")
        for method in item
    }
    assert len(guarded) == 3
    challenge = doc["components"]["responses"]["Unauthorized"]["headers"]["WWW-Authenticate"]
    assert challenge["schema"] == {"type": "string"}
