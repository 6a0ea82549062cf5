"""What both halves of the OpenAPI document (http/openapi.py, http/openapi_admin.py) build
their operations from: schemas, parameters, request bodies."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, TypeAdapter

from orderstream.http.encoding import JSON
from orderstream.http.schemas import PAGE_DEFAULT, PAGE_MAX
from orderstream.http.validation import CURSOR_PATTERN
from orderstream.topics import Id

REF_TEMPLATE = "#/components/schemas/{model}"


def schema(annotation: Any) -> dict[str, Any]:
    """Return the JSON Schema of ``annotation``, referring to models under components."""
    result: dict[str, Any] = TypeAdapter(annotation).json_schema(ref_template=REF_TEMPLATE)
    return result


def json_content(body_schema: dict[str, Any]) -> dict[str, Any]:
    """Return the content of a JSON body of ``body_schema``."""
    return {JSON: {"schema": body_schema}}


def request_body(description: str, body_schema: dict[str, Any]) -> dict[str, Any]:
    """Return a required JSON request body of ``body_schema``."""
    return {"required": True, "description": description, "content": json_content(body_schema)}


def path_id(name: str, description: str) -> dict[str, Any]:
    """Return the path parameter ``name``, an id (http/validation.path_id checks it)."""
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": f"{description} 1-200 characters, no control characters.",
        "schema": schema(Id),
    }


def query(name: str, description: str, param_schema: dict[str, Any]) -> dict[str, Any]:
    """Return the optional query parameter ``name``."""
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": param_schema,
    }


def page_limit() -> dict[str, Any]:
    """Return the ``limit`` query parameter of a paginated route."""
    bounded = schema(Annotated[int, Field(ge=1, le=PAGE_MAX)])
    return query("limit", "Orders per page.", bounded | {"default": PAGE_DEFAULT})


def page_after(description: str) -> dict[str, Any]:
    """Return the ``after`` query parameter of a paginated route: the previous page's cursor."""
    return query("after", description, {"type": "string", "pattern": CURSOR_PATTERN})
