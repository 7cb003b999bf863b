"""The API's route table as data (`Endpoint`) and the OpenAPI 3.1 document generated from it.

The app is built from the same table, so every route it serves is in the
document. The job body gets one schema per operation, from the fields of the
operation's `Params` dataclass; `fits` checks a value against such a field
schema, so the API refuses a wrong type with a 400 before anything is proposed.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

OPENAPI_VERSION = "3.1.0"
API_TITLE = "Cairn native API"
API_VERSION = "1"
_PATH_PARAMETER = re.compile(r"{([a-z_]+)}")
# JSON Schema type of each Python annotation a Params field uses (names, for string annotations too).
_TYPES = {"int": "integer", "str": "string", "bool": "boolean", "float": "number", "tuple": "array",
          "list": "array", "dict": "object", "None": "null", "NoneType": "null"}
MEDIA_JSON = "application/json"
MEDIA_NDJSON = "application/x-ndjson"
MEDIA_RECORDS = "application/octet-stream"
MEDIA_PROMETHEUS = "text/plain; version=0.0.4"


@dataclass(frozen=True)
class Query:
    """A query parameter a route takes: its name, JSON Schema type and what it means."""

    name: str
    type: str
    description: str


@dataclass(frozen=True)
class Endpoint:
    """One route: method, path (Starlette template), the least role, what it answers, and its handler."""

    method: str
    path: str
    role: str
    summary: str
    handler: Callable
    query: tuple[Query, ...] = ()
    media: str = MEDIA_JSON
    status: int = 200
    body: bool = False          # takes the job body


# --- Params fields to JSON Schema -------------------------------------------------

def _annotation_parts(annotation: Any) -> list[str]:
    """The type names an annotation allows: `int | None` gives ['int', 'None'] (string annotations too)."""
    if isinstance(annotation, str):
        return [part.strip() for part in annotation.split("|")]
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return [part for arg in typing.get_args(annotation) for part in _annotation_parts(arg)]
    if annotation is None or annotation is type(None):
        return ["None"]
    origin = typing.get_origin(annotation) or annotation
    return [getattr(origin, "__name__", str(origin))]


def annotation_schema(annotation: Any) -> dict[str, Any]:
    """The JSON Schema of a Params field's annotation ({} for a type it cannot say: anything goes)."""
    kinds = []
    for part in _annotation_parts(annotation):
        kind = _TYPES.get(part)
        if kind is None:
            return {}
        if kind not in kinds:
            kinds.append(kind)
    return {"type": kinds[0] if len(kinds) == 1 else kinds}


def _default(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_default(item) for item in value]
    if isinstance(value, dict):
        return {key: _default(item) for key, item in value.items()}
    return value


def params_schema(op: ModuleType) -> dict[str, Any]:
    """The JSON Schema of an operation's Params: its fields, the required ones, nothing else."""
    properties, required = {}, []
    for field in dataclasses.fields(op.Params):
        schema = annotation_schema(field.type)
        if field.default is not dataclasses.MISSING:
            schema = {**schema, "default": _default(field.default)}
        elif field.default_factory is dataclasses.MISSING:
            required.append(field.name)
        properties[field.name] = schema
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


def operation_schema(op: ModuleType) -> dict[str, Any]:
    """The schema of one entry of a job's `operations`, naming the role the operation needs."""
    return {
        "type": "object",
        "title": op.NAME,
        "description": f"{op.OPCODE}; needs role {op.ROLE}",
        "properties": {"op": {"const": op.NAME}, "params": params_schema(op)},
        "required": ["op", "params"],
        "additionalProperties": False,
    }


def job_body_schema(operations: Mapping[str, ModuleType]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "operations": {"type": "array", "minItems": 1,
                           "items": {"oneOf": [{"$ref": f"#/components/schemas/op.{name}"} for name in operations]}},
            "reason": {"type": "string"},
            "request_id": {"type": "string"},
        },
        "required": ["operations"],
        "additionalProperties": False,
    }


def fits(schema: Mapping[str, Any], value: Any) -> bool:
    """Whether a JSON value has a type the field schema allows (bool is not an integer; an integer is a number)."""
    kinds = schema.get("type")
    if kinds is None:
        return True
    return any(_fits_kind(kind, value) for kind in ([kinds] if isinstance(kinds, str) else kinds))


def _fits_kind(kind: str, value: Any) -> bool:
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "string":
        return isinstance(value, str)
    if kind == "array":
        return isinstance(value, (list, tuple))
    if kind == "object":
        return isinstance(value, dict)
    return kind == "null" and value is None


# --- the document -------------------------------------------------------------------

def _error_response(description: str) -> dict[str, Any]:
    return {"description": description, "content": {MEDIA_JSON: {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _parameters(endpoint: Endpoint) -> list[dict[str, Any]]:
    parameters = [{"name": name, "in": "path", "required": True,
                   "schema": {"type": "integer" if name == "id" else "string"}}
                  for name in _PATH_PARAMETER.findall(endpoint.path)]
    parameters += [{"name": query.name, "in": "query", "required": False, "description": query.description,
                    "schema": {"type": query.type}} for query in endpoint.query]
    return parameters


def _operation(endpoint: Endpoint) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": endpoint.summary,
        "description": f"Needs role {endpoint.role} or higher.",
        "x-cairn-role": endpoint.role,
        "parameters": _parameters(endpoint),
        "responses": {
            str(endpoint.status): {"description": "the answer", "content": {endpoint.media: {}}},
            "400": _error_response("malformed request or wrong input"),
            "401": _error_response("no token, or one the cluster does not know"),
            "403": _error_response("the caller's role is too low"),
            "503": _error_response("this node cannot answer now"),
        },
        "security": [{"bearer": []}],
    }
    if endpoint.role == "join-token":
        # Authenticated by the join token in the body, not by a bearer token.
        operation["description"] = "Authenticated by a join token in the body (401 without a valid one)."
        operation["security"] = []
    if endpoint.body:
        operation["requestBody"] = {"required": True, "content": {
            MEDIA_JSON: {"schema": {"$ref": "#/components/schemas/JobBody"}}}}
    return operation


def openapi(endpoints: list[Endpoint], operations: Mapping[str, ModuleType]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the routes, with one job-body schema per operation."""
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in endpoints:
        paths.setdefault(endpoint.path, {})[endpoint.method.lower()] = _operation(endpoint)
    schemas = {f"op.{name}": operation_schema(op) for name, op in operations.items()}
    schemas["JobBody"] = job_body_schema(operations)
    schemas["Error"] = {"type": "object", "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
                        "required": ["error", "message"]}
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": API_TITLE, "version": API_VERSION},
        "paths": paths,
        "components": {"schemas": schemas,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
    }
