"""The admin routes' part of the OpenAPI document (http/openapi.py builds the whole).

Bodies and answers come from the models of http/admin.py, parameters from the bounds
its handlers check; every operation names the bearer token it needs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Protocol

from pydantic import BaseModel, Field, TypeAdapter
from pydantic.json_schema import JsonSchemaMode

from orderstream.domain import OrderStatus
from orderstream.http.admin import (
    AdminOrdersPage,
    ProductChange,
    StatusOverride,
    StockCommandPublished,
)
from orderstream.http.auth import CHALLENGE
from orderstream.http.encoding import JSON
from orderstream.http.schemas import PAGE_DEFAULT, PAGE_MAX, OrderAccepted
from orderstream.http.validation import CURSOR_PATTERN
from orderstream.topics import Id

SECURITY_SCHEME = "adminToken"

ADMIN_MODELS: list[tuple[type[BaseModel], JsonSchemaMode]] = [
    (ProductChange, "validation"),
    (StatusOverride, "validation"),
    (StockCommandPublished, "serialization"),
    (AdminOrdersPage, "serialization"),
]

# The answers every admin route may give before its handler runs.
ADMIN_ERRORS: dict[int, tuple[str, str]] = {
    401: (
        "Unauthorized",
        "No `Authorization: Bearer <token>` header, or a malformed one; WWW-Authenticate"
        " names the scheme.",
    ),
    403: (
        "Forbidden",
        "The token is wrong, or the admin routes are disabled (no ORDERSTREAM_ADMIN_TOKEN).",
    ),
}
CHALLENGE_HEADER = {
    "WWW-Authenticate": {
        "description": f"The scheme to authenticate with: `{CHALLENGE}`.",
        "schema": {"type": "string"},
    }
}
SECURITY_SCHEMES = {
    SECURITY_SCHEME: {
        "type": "http",
        "scheme": "bearer",
        "description": "The admin token, ORDERSTREAM_ADMIN_TOKEN of the service.",
    }
}


class Operations(Protocol):
    """What http/openapi.py's document offers to build an operation."""

    def answer(self, description: str, model: type[BaseModel]) -> dict[str, Any]: ...

    def ref(self, model: type[BaseModel]) -> dict[str, Any]: ...

    def operation(
        self,
        operation_id: str,
        summary: str,
        answers: dict[int, dict[str, Any]],
        errors: tuple[int, ...],
        **more: Any,
    ) -> dict[str, Any]: ...


PathId = Callable[[str, str], dict[str, Any]]


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


def _body(doc: Operations, model: type[BaseModel], description: str) -> dict[str, Any]:
    return {
        "required": True,
        "description": description,
        "content": {JSON: {"schema": doc.ref(model)}},
    }


def admin_paths(doc: Operations, path_id: PathId) -> dict[str, Any]:
    """Return the admin routes' paths, each operation behind the bearer token."""
    guarded: dict[str, Any] = {"security": [{SECURITY_SCHEME: []}]}
    id_schema = TypeAdapter(Id).json_schema()
    timestamp = {"type": "string", "format": "date-time"}
    return {
        "/admin/products/{product_id}": {
            "put": doc.operation(
                "putProduct",
                "Set or add to a product's stock, change its price or its per-user limit.",
                {
                    202: doc.answer(
                        "Published on stock-commands; the stock agent applies it, and"
                        " GET /products/{product_id} shows it once applied.",
                        StockCommandPublished,
                    )
                },
                (400, 401, 403, 413, 422, 503),
                description=(
                    "One stock command: `set` or `add` (operation set or add, with any catalog"
                    " field), or only catalog fields (operation update). A price given without"
                    " a currency is in the service's ORDERSTREAM_CURRENCY. Nothing to change,"
                    " both set and add, or an unknown field: 422."
                ),
                parameters=[path_id("product_id", "The product's id.")],
                requestBody=_body(doc, ProductChange, "What to change; at least one field."),
                **guarded,
            )
        },
        "/admin/orders": {
            "get": doc.operation(
                "listOrders",
                "Every order, newest first, filtered, a page at a time.",
                {200: doc.answer("A page; empty when nothing matches.", AdminOrdersPage)},
                (400, 401, 403, 503),
                description=(
                    "Keyset pagination by (created_at, order_id): following `next` while"
                    " orders arrive never shows an order twice nor skips one that existed"
                    " when the walk began. A query parameter not listed here is refused"
                    " (400), so that a misspelt filter never lists every order."
                ),
                parameters=[
                    _query(
                        "status",
                        "Orders in this status.",
                        {"type": "string", "enum": [status.value for status in OrderStatus]},
                    ),
                    _query("product", "Orders with an item of this product.", id_schema),
                    _query("user", "Orders of this user.", id_schema),
                    _query(
                        "since",
                        "Orders created at or after this instant (ISO 8601 with a time zone).",
                        timestamp,
                    ),
                    _query(
                        "until",
                        "Orders created before this instant (ISO 8601 with a time zone).",
                        timestamp,
                    ),
                    _query(
                        "limit",
                        "Orders per page.",
                        TypeAdapter(Annotated[int, Field(ge=1, le=PAGE_MAX)]).json_schema()
                        | {"default": PAGE_DEFAULT},
                    ),
                    _query(
                        "after",
                        "The `next` cursor of the previous page, with the same filters (any"
                        " other string: 400); absent or empty for the first page.",
                        {"type": "string", "pattern": CURSOR_PATTERN},
                    ),
                ],
                **guarded,
            )
        },
        "/admin/orders/{order_id}/status": {
            "post": doc.operation(
                "overrideOrderStatus",
                "End a RESERVED order CONFIRMED or CANCELLED by hand; the order agent decides.",
                {202: doc.answer("Asked; status_url shows what came of it.", OrderAccepted)},
                (400, 401, 403, 404, 409, 413, 422, 503),
                description=(
                    "409 unless PostgreSQL shows the order RESERVED: a terminal order's stock"
                    " is settled. The order agent applies the override only if the order is"
                    " still RESERVED when it arrives; the transition carries reason"
                    " ADMIN_OVERRIDE, the reason text as its detail and `by` as its actor."
                ),
                parameters=[path_id("order_id", "The order's id.")],
                requestBody=_body(doc, StatusOverride, "The status, why, and who."),
                **guarded,
            )
        },
    }
