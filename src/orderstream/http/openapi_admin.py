"""The admin routes' part of the OpenAPI document (http/openapi.py builds the whole).

Bodies and answers come from the models of http/admin.py, parameters from the bounds
its handlers check; every operation names the bearer token it needs.
"""

from __future__ import annotations

from typing import Any, Protocol

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode

from orderstream.domain import OrderStatus
from orderstream.http.admin import (
    AdminOrdersPage,
    ProductChange,
    StatusOverride,
    StockCommandPublished,
)
from orderstream.http.auth import CHALLENGE
from orderstream.http.openapi_parts import (
    page_after,
    page_limit,
    path_id,
    query,
    request_body,
    schema,
)
from orderstream.http.schemas import OrderAccepted
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
        " names the scheme. On the shopper routes, with shopper tokens on: no token, or"
        " one expired, badly signed, or for another issuer or audience.",
    ),
    403: (
        "Forbidden",
        "The token is wrong, or the admin routes are disabled (no ORDERSTREAM_ADMIN_TOKEN);"
        " POST /orders with shopper tokens on: a user_id that is not the token's user.",
    ),
}
CHALLENGE_HEADER = {
    "WWW-Authenticate": {
        "description": f"The scheme to authenticate with: `{CHALLENGE}`.",
        "schema": {"type": "string"},
    }
}
SHOPPER_SCHEME = "shopperToken"
SECURITY_SCHEMES = {
    SECURITY_SCHEME: {
        "type": "http",
        "scheme": "bearer",
        "description": "The admin token, ORDERSTREAM_ADMIN_TOKEN of the service.",
    },
    SHOPPER_SCHEME: {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": (
            "A shopper's JWT (HS256, RS256 or ES256, as the service's key says), with"
            " exp, iss, aud and sub (the user). Required only when the service has"
            " ORDERSTREAM_JWT_HS256_SECRET or ORDERSTREAM_JWT_PUBLIC_KEY_FILE set."
        ),
    },
}
# A shopper route: anonymous unless the service requires shopper tokens.
SHOPPER_SECURITY: list[dict[str, list[str]]] = [{}, {SHOPPER_SCHEME: []}]


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


def _admin_operation(
    doc: Operations,
    operation_id: str,
    summary: str,
    answers: dict[int, dict[str, Any]],
    errors: tuple[int, ...],
    *,
    description: str,
    parameters: list[dict[str, Any]],
    body: tuple[type[BaseModel], str] | None = None,
) -> dict[str, Any]:
    """Return an operation behind the bearer token: it may answer ADMIN_ERRORS too.

    ``body``: the model of the request body and what to say of it.
    """
    more: dict[str, Any] = {"description": description, "parameters": parameters}
    if body is not None:
        model, body_description = body
        more["requestBody"] = request_body(body_description, doc.ref(model))
    return doc.operation(
        operation_id,
        summary,
        answers,
        (*errors, *ADMIN_ERRORS),
        **more,
        security=[{SECURITY_SCHEME: []}],
    )


def admin_paths(doc: Operations) -> dict[str, Any]:
    """Return the admin routes' paths, each operation behind the bearer token."""
    id_schema = schema(Id)
    timestamp = {"type": "string", "format": "date-time"}
    return {
        "/admin/products/{product_id}": {
            "put": _admin_operation(
                doc,
                "putProduct",
                "Set or add to a product's stock, change its price or its per-user limit.",
                {
                    202: doc.answer(
                        "Published on stock-commands; the stock agent applies it, and"
                        " GET /products/{product_id} shows it once applied.",
                        StockCommandPublished,
                    )
                },
                (400, 413, 422, 429, 503),
                description=(
                    "One stock command: `set` or `add` (operation set or add, with any catalog"
                    " field), or only catalog fields (operation update). A price given without"
                    " a currency is in the service's ORDERSTREAM_CURRENCY. Nothing to change,"
                    " both set and add, or an unknown field: 422."
                ),
                parameters=[path_id("product_id", "The product's id.")],
                body=(ProductChange, "What to change; at least one field."),
            )
        },
        "/admin/orders": {
            "get": _admin_operation(
                doc,
                "listOrders",
                "Every order, newest first, filtered, a page at a time.",
                {200: doc.answer("A page; empty when nothing matches.", AdminOrdersPage)},
                (400, 429, 503),
                description=(
                    "Keyset pagination by (created_at, order_id): following `next` while"
                    " orders arrive never shows an order twice nor skips one that existed"
                    " when the walk began. A query parameter not listed here is refused"
                    " (400), so that a misspelt filter never lists every order."
                ),
                parameters=[
                    query(
                        "status",
                        "Orders in this status.",
                        {"type": "string", "enum": [status.value for status in OrderStatus]},
                    ),
                    query("product", "Orders with an item of this product.", id_schema),
                    query("user", "Orders of this user.", id_schema),
                    query(
                        "since",
                        "Orders created at or after this instant (ISO 8601 with a time zone).",
                        timestamp,
                    ),
                    query(
                        "until",
                        "Orders created before this instant (ISO 8601 with a time zone).",
                        timestamp,
                    ),
                    page_limit(),
                    page_after(
                        "The `next` cursor of the previous page, with the same filters (any"
                        " other string: 400); absent or empty for the first page."
                    ),
                ],
            )
        },
        "/admin/orders/{order_id}/status": {
            "post": _admin_operation(
                doc,
                "overrideOrderStatus",
                "End a RESERVED order CONFIRMED or CANCELLED by hand; the order agent decides.",
                {202: doc.answer("Asked; status_url shows what came of it.", OrderAccepted)},
                (400, 404, 409, 413, 422, 429, 503),
                description=(
                    "409 unless PostgreSQL shows the order RESERVED: a terminal order's stock"
                    " is settled. The order agent applies the override only if the order is"
                    " still RESERVED when it arrives; the transition carries reason"
                    " ADMIN_OVERRIDE, the reason text as its detail and `by` as its actor."
                ),
                parameters=[path_id("order_id", "The order's id.")],
                body=(StatusOverride, "The status, why, and who."),
            )
        },
    }
