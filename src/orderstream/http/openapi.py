"""The status service's OpenAPI 3.1 document, built from the models its handlers use.

Request and response bodies come from the pydantic models the handlers validate with and
answer through (``topics.OrderRequest``, ``intake.OrderLines``, http/schemas.py),
parameters from the bounds the handlers check (``topics.Id``, the page size, the
cursor's alphabet): the document changes when they do. Every route is here with every
status it answers; a unit test holds the router and this document to the same routes.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from orderstream import __version__
from orderstream.http.encoding import JSON
from orderstream.http.intake import SINGLE_LINE_FIELDS, OrderLines
from orderstream.http.openapi_admin import (
    ADMIN_ERRORS,
    ADMIN_MODELS,
    CHALLENGE_HEADER,
    SECURITY_SCHEMES,
    SHOPPER_SECURITY,
    admin_paths,
)
from orderstream.http.openapi_parts import (
    REF_TEMPLATE,
    json_content,
    page_after,
    page_limit,
    path_id,
    query,
    request_body,
    schema,
)
from orderstream.http.schemas import (
    ErrorBody,
    Health,
    Order,
    OrderAccepted,
    OrderPublished,
    OrderQueued,
    ProductStock,
    Readiness,
    SoldOut,
    UserOrdersPage,
)
from orderstream.http.validation import MAX_BODY_BYTES
from orderstream.topics import Id, OrderRequest

# Every model of the document and the side it is seen from: the request body as the
# handler validates it, the answers as the handlers serialise them.
_MODELS: list[tuple[type[BaseModel], JsonSchemaMode]] = [
    (OrderRequest, "validation"),
    (OrderLines, "validation"),
    *(
        (model, "serialization")
        for model in (
            Order,
            OrderQueued,
            UserOrdersPage,
            ProductStock,
            OrderAccepted,
            OrderPublished,
            Health,
            Readiness,
            ErrorBody,
            SoldOut,
        )
    ),
    *ADMIN_MODELS,
]

# Error answers by status: a name under components/responses and what it means.
_ERRORS: dict[int, tuple[str, str]] = {
    400: ("BadRequest", "The request is malformed: the reason says what is wrong."),
    **ADMIN_ERRORS,  # 401, 403: the admin routes' token
    404: (
        "NotFound",
        "Nothing is known by this id (yet: an order accepted with 202 shows here once the"
        " pipeline has decided it).",
    ),
    405: (
        "MethodNotAllowed",
        "Any method a path does not list; the Allow header names those it does.",
    ),
    409: ("Conflict", "The order's status does not allow it: the reason names the status."),
    413: ("PayloadTooLarge", f"The body is larger than {MAX_BODY_BYTES} bytes."),
    422: (
        "UnprocessableEntity",
        "The body is JSON but not valid: `details` says which fields. POST /orders also"
        " answers 422 to an Idempotency-Key that was used with another order.",
    ),
    429: (
        "TooManyRequests",
        "Past a rate limit of this service process: POST /orders per user_id"
        " (ORDERSTREAM_RATE_LIMIT_USER_PER_S), or, when set, every request per client address"
        " (ORDERSTREAM_RATE_LIMIT_ADDRESS_PER_S). Retry-After says in how many seconds.",
    ),
    500: ("InternalError", "A bug: the log has the traceback, the answer never does."),
    503: ("ServiceUnavailable", "PostgreSQL or Kafka does not answer: retry later."),
}

_DESCRIPTION = f"""\
Ask what happened to an order, what is left of a product and what a user ordered, and
publish order requests over HTTP. Every answer is JSON except /metrics, every timestamp
is UTC with milliseconds and a Z, and every error is `{{"error": "<reason>"}}` with the
right status: also a request aiohttp cannot parse (400), a route that does not exist
(404), a method a path does not list (405, with an Allow header) and a body over
{MAX_BODY_BYTES} bytes (413). A parameter or header given twice is refused (400)."""


_ORDER_REQUEST_BODY = "OrderRequestBody"
_ORDER_LINES_BODY = "OrderLinesBody"


def _without_order_id(required: list[str]) -> list[str]:
    # The handler fills a missing order_id from the Idempotency-Key header, then validates
    # the whole; JSON Schema cannot make a body field depend on a header.
    return [name for name in required if name != "order_id"]


def _order_request_body(order_request: dict[str, Any]) -> dict[str, Any]:
    """Return ``OrderRequest`` as POST /orders takes it: order_id may come from a header."""
    return order_request | {
        "title": _ORDER_REQUEST_BODY,
        "description": (
            "One order line: an OrderRequest (the order-requests message) whose order_id"
            " may be left out when the Idempotency-Key header gives it; without the header"
            " it is required; its line_count, if given, is 1 (422 otherwise). A body"
            " with `items` is an OrderLinesBody instead."
        ),
        "required": _without_order_id(order_request["required"]),
        "not": {"required": ["items"]},
    }


def _order_lines_body(order_lines: dict[str, Any]) -> dict[str, Any]:
    """Return ``OrderLines`` as POST /orders takes it: order_id may come from a header."""
    return order_lines | {
        "title": _ORDER_LINES_BODY,
        "description": (
            "An order of 1 to 100 items, each product once, published as one order-requests"
            " message per item in one Kafka transaction. order_id may be left out when the"
            " Idempotency-Key header gives it. The products come from the items only:"
            f" {', '.join(SINGLE_LINE_FIELDS)} are refused beside them (422)."
        ),
        "required": _without_order_id(order_lines["required"]),
        "not": {"anyOf": [{"required": [name]} for name in SINGLE_LINE_FIELDS]},
    }


def _error(status: int) -> dict[str, str]:
    return {"$ref": f"#/components/responses/{_ERRORS[status][0]}"}


class _Document:
    """The models' schemas under components, and the references the paths make to them."""

    def __init__(self) -> None:
        refs, defs = models_json_schema(_MODELS, ref_template=REF_TEMPLATE)
        self.schemas: dict[str, Any] = defs["$defs"]
        self._refs = {model: ref for (model, _), ref in refs.items()}
        self.schemas[_ORDER_REQUEST_BODY] = _order_request_body(self.schemas["OrderRequest"])
        self.schemas[_ORDER_LINES_BODY] = _order_lines_body(self.schemas["OrderLines"])

    def ref(self, model: type[BaseModel]) -> dict[str, Any]:
        return dict(self._refs[model])

    def answer(self, description: str, model: type[BaseModel]) -> dict[str, Any]:
        return {"description": description, "content": json_content(self.ref(model))}

    def operation(
        self,
        operation_id: str,
        summary: str,
        answers: dict[int, dict[str, Any]],
        errors: tuple[int, ...],
        **more: Any,
    ) -> dict[str, Any]:
        responses = {str(status): answer for status, answer in answers.items()}
        # Every route can fail on a bug: the middleware answers 500 then.
        responses |= {str(status): _error(status) for status in (*errors, 500)}
        return {
            "operationId": operation_id,
            "summary": summary,
            **more,
            "responses": dict(sorted(responses.items())),
        }


def _paths(doc: _Document) -> dict[str, Any]:
    # Statuses a route answers beside 200 and 500.
    db_read = (400, 404, 429, 503)
    shopper_read = (400, 401, 404, 429, 503)
    return {
        "/orders": {
            "post": doc.operation(
                "postOrder",
                "Validate an order and publish its lines on order-requests.",
                {
                    202: doc.answer(
                        "Published, every line; ask status_url what became of the order.",
                        OrderPublished,
                    ),
                    409: doc.answer(
                        "Refused at the door, nothing published: the live stock view says"
                        " product_id has none left. Try again after a restock.",
                        SoldOut,
                    ),
                },
                (400, 401, 403, 413, 422, 429, 503),
                security=SHOPPER_SECURITY,
                description=(
                    "One line, or `items` (several lines, published in one Kafka transaction:"
                    " all or none). Retrying with the same order_id is safe: each order line"
                    " is decided once. Once the service's live view of the stock-changes"
                    " topic has caught up, an order with a product it knows has none left is"
                    " refused at once (409 SOLD_OUT); that figure is a hint, the stock agent"
                    " decides every order that is published. A retry with the Idempotency-Key"
                    " of an order accepted before gets its 202 again; a 409 to a retry"
                    " without it says only that this request published nothing (GET"
                    " /orders/{order_id} says what became of the first)."
                ),
                parameters=[
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "description": (
                            "The order's id (400 if no order id could be it). When the body"
                            " has no order_id, this is it; when it has one, they must be"
                            " equal (422 otherwise). The key is kept with a digest of the"
                            " validated order (its lines and metadata, not the body's bytes)"
                            " for ORDERSTREAM_DEDUP_WINDOW_S: the same key with the same"
                            " order is answered 202 again and published once, even when the"
                            " requests are concurrent; with another order, 422."
                        ),
                        "schema": schema(Id),
                    }
                ],
                requestBody=request_body(
                    "One order line, or items; unknown fields are ignored.",
                    {
                        "oneOf": [
                            {"$ref": REF_TEMPLATE.format(model=_ORDER_REQUEST_BODY)},
                            {"$ref": REF_TEMPLATE.format(model=_ORDER_LINES_BODY)},
                        ]
                    },
                ),
            )
        },
        "/orders/{order_id}": {
            "get": doc.operation(
                "getOrder",
                "An order, its items and its history; or, not decided yet, its place in line.",
                {
                    200: {
                        "description": (
                            "The order; or, when PostgreSQL does not show it yet and the"
                            " request names the place its 202 gave (partition, offset),"
                            " QUEUED with how many requests are ahead of it."
                        ),
                        "content": json_content({"oneOf": [doc.ref(Order), doc.ref(OrderQueued)]}),
                    }
                },
                shopper_read,
                security=SHOPPER_SECURITY,
                parameters=[
                    path_id("order_id", "The order's id."),
                    query(
                        "partition",
                        "The partition its 202 named (with offset).",
                        {"type": "integer", "minimum": 0},
                    ),
                    query(
                        "offset",
                        "The offset its 202 named (with partition).",
                        {"type": "integer", "minimum": 0, "maximum": 2**63 - 1},
                    ),
                    query(
                        "product_id", "Its product: QUEUED then says what is available.", schema(Id)
                    ),
                ],
            )
        },
        "/orders/{order_id}/cancel": {
            "post": doc.operation(
                "cancelOrder",
                "Ask to cancel an order not paid yet; the order agent decides.",
                {202: doc.answer("Asked; status_url shows what came of it.", OrderAccepted)},
                (400, 401, 404, 409, 429, 503),
                security=SHOPPER_SECURITY,
                description=(
                    "PostgreSQL may lag the order agent: a cancel racing the payment is"
                    " applied only if it reaches the order agent while the order is still"
                    " RESERVED. A cancel for an order not known yet (sent right after the"
                    " order, or before it) is accepted and kept by the order agent for the"
                    " order TTL: applied as soon as the order is reserved, forgotten if it"
                    " never comes. 409 once the order is settled."
                ),
                parameters=[path_id("order_id", "The order's id.")],
            )
        },
        "/users/{user_id}/orders": {
            "get": doc.operation(
                "getUserOrders",
                "A user's orders, newest first, a page at a time.",
                {200: doc.answer("A page; empty for a user who ordered nothing.", UserOrdersPage)},
                (400, 401, 404, 429, 503),
                security=SHOPPER_SECURITY,
                parameters=[
                    path_id("user_id", "The user's id."),
                    page_limit(),
                    page_after(
                        "The `next` cursor of the previous page (any other string: 400);"
                        " absent or empty for the first page."
                    ),
                ],
            )
        },
        "/products/{product_id}": {
            "get": doc.operation(
                "getProduct",
                "A product's stock and catalog: live, or as PostgreSQL last saw it.",
                {200: doc.answer("The product's stock; source says from where.", ProductStock)},
                db_read,
                description=(
                    "From the service's live view of the stock-changes topic (source `live`,"
                    " within a second of the stock agent) once it has caught up and knows the"
                    " product; from PostgreSQL otherwise (source `database`). age_ms says how"
                    " old the figure is."
                ),
                parameters=[path_id("product_id", "The product's id.")],
            )
        },
        "/healthz": {
            "get": doc.operation(
                "healthz", "Say the process is alive.", {200: doc.answer("Alive.", Health)}, ()
            )
        },
        "/readyz": {
            "get": doc.operation(
                "readyz",
                "Say whether PostgreSQL and Kafka answer and every role of the process runs.",
                {
                    200: doc.answer("Ready.", Readiness),
                    503: doc.answer("Not ready: the checks and roles say why.", Readiness),
                },
                (),
            )
        },
        "/metrics": {
            "get": doc.operation(
                "metrics",
                "Prometheus metrics, in the text exposition format.",
                {
                    200: {
                        "description": "The metrics.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
                (),
            )
        },
        "/openapi.json": {
            "get": doc.operation(
                "openapi",
                "This document.",
                {
                    200: {
                        "description": "The OpenAPI 3.1 document of this service.",
                        "content": json_content({"type": "object"}),
                    }
                },
                (),
            )
        },
    }


def _responses(doc: _Document) -> dict[str, Any]:
    responses = {}
    for status, (name, description) in sorted(_ERRORS.items()):
        response: dict[str, Any] = {
            "description": description,
            "content": json_content(doc.ref(ErrorBody)),
        }
        if status == 401:
            response["headers"] = CHALLENGE_HEADER
        if status == 429:
            response["headers"] = {
                "Retry-After": {
                    "description": "Whole seconds until the limit lets a request through.",
                    "schema": {"type": "integer", "minimum": 1},
                }
            }
        if status == 405:
            response["headers"] = {
                "Allow": {
                    "description": "The methods the path allows, comma-separated.",
                    "schema": {"type": "string"},
                }
            }
        responses[name] = response
    return responses


def document() -> dict[str, Any]:
    """Return the OpenAPI 3.1 document of the status service."""
    doc = _Document()
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "orderstream status service",
            "version": __version__,
            "description": _DESCRIPTION,
        },
        "paths": _paths(doc) | admin_paths(doc),
        "components": {
            "schemas": doc.schemas,
            "responses": _responses(doc),
            "securitySchemes": SECURITY_SCHEMES,
        },
    }


@functools.cache
def _document_text() -> str:
    return json.dumps(document())


async def serve(request: web.Request) -> web.Response:
    """Answer the OpenAPI document."""
    return web.Response(text=_document_text(), content_type=JSON)
