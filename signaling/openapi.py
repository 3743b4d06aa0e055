"""The OpenAPI 3.1 document, built from the application's route table and
each handler's description (signaling/doors.py): no schema is written by
hand, every one comes from a pydantic model through pydantic's JSON Schema."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web
from pydantic import TypeAdapter

from . import models as m
from .doors import DOORS, JSON_TYPE, Answer, Door
from .problems import PROBLEM_TYPE

REF = "#/components/schemas/{model}"
TITLES = {
    304: "Not Modified",
    307: "Temporary Redirect",
    400: "Bad Request",
    401: "No or bad bearer token",
    403: "Outside the caller's jurisdiction or role",
    404: "Not Found",
    405: "Method Not Allowed; Allow lists the methods",
    409: "Conflict with the current state",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    416: "Range Not Satisfiable",
    429: "Over a quota (docs/operate.md#quotas-and-rate-limits); Retry-After says when to ask again",
    502: "Another hub process hosts the stream or holds the recording, and this one could not reach it there",
    503: "Shared live state (Redis) is unreachable (Retry-After), or this hub process does not run the feature",
}
INFO = {
    "title": "Linked governance video hub",
    "version": "0.1.0",
    "description": "Every call except /healthz, /readyz, /api/openapi.json and the pages needs a bearer token: "
    "'Authorization: Bearer <token>', or ?token= where headers cannot be set. Errors are problem "
    "details (RFC 9457). JSON bodies are application/json objects that name only known fields.",
}
SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
    "token": {"type": "apiKey", "in": "query", "name": "token"},
}


class _Schemas:
    """JSON Schemas of the document's types, their definitions gathered into components."""

    def __init__(self) -> None:
        self.components: dict[str, Any] = {}

    def of(self, kind: Any, mode: str = "serialization") -> dict[str, Any]:
        schema = TypeAdapter(kind).json_schema(ref_template=REF, mode=mode)  # type: ignore[arg-type]
        for name, definition in schema.pop("$defs", {}).items():
            if self.components.setdefault(name, definition) != definition:
                raise ValueError(f"two different schemas are both called {name}")
        if "title" in schema and "properties" in schema:  # a model: refer to it by name
            self.components.setdefault(schema["title"], schema)
            return {"$ref": REF.format(model=schema["title"])}
        return schema


def _parameter_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A query field's schema without its `null` branch: a parameter is
    absent rather than null."""
    branches = [b for b in schema.get("anyOf", ()) if b != {"type": "null"}]
    if len(branches) == 1:
        schema = {k: v for k, v in schema.items() if k not in ("anyOf", "default")} | branches[0]
    return {k: v for k, v in schema.items() if k != "title"}


def _query_parameters(model: type[m.Query], schemas: _Schemas) -> list[dict[str, Any]]:
    schema = model.model_json_schema(ref_template=REF)
    required = set(schema.get("required", ()))
    return [
        {"name": name, "in": "query", "required": name in required, "schema": _parameter_schema(prop)}
        for name, prop in schema["properties"].items()
    ]


def _answer(answer: Answer, schemas: _Schemas) -> dict[str, Any]:
    out: dict[str, Any] = {"description": answer.description}
    content: dict[str, Any] = {}
    if answer.model is not None:
        content[JSON_TYPE] = {"schema": schemas.of(answer.model)}
    if answer.media is not None:
        content[answer.media] = {"schema": {"type": "string"}}
    if content:
        out["content"] = content
    if answer.headers:
        out["headers"] = {name: {"schema": {"type": "string"}} for name in answer.headers}
    return out


def _problem_statuses(door: Door, has_path_parameters: bool) -> list[int]:
    statuses = set(door.problems)
    if not door.public:
        # 404: a path, body or query may name a site, room or stream that is not there;
        # 503: with Redis, any of them may find shared live state unreachable.
        statuses |= {401, 403, 404, 503}
    if door.body is not None or door.query is not None or door.sdp or has_path_parameters:
        statuses.add(400)
    if door.body is not None or door.sdp:
        statuses |= {413, 415}
    return sorted(statuses)


def _operation(door: Door, path: str, schemas: _Schemas) -> dict[str, Any]:
    names = re.findall(r"{(\w+)}", path)
    operation: dict[str, Any] = {"summary": door.summary}
    if door.description:
        operation["description"] = door.description
    if door.public:
        operation["security"] = []
    parameters = [{"name": n, "in": "path", "required": True, "schema": {"type": "string"}} for n in names]
    if door.query is not None:
        parameters += _query_parameters(door.query, schemas)
    if parameters:
        operation["parameters"] = parameters
    if door.body is not None:
        body = {"schema": schemas.of(door.body, mode="validation")}
        operation["requestBody"] = {"required": not door.body_optional, "content": {JSON_TYPE: body}}
    elif door.sdp:
        operation["requestBody"] = {"required": True, "content": {"application/sdp": {"schema": {"type": "string"}}}}
    responses = {str(a.status): _answer(a, schemas) for a in door.answers}
    problem = schemas.of(m.Problem)
    for status in _problem_statuses(door, bool(names)):
        schema = schemas.of(door.conflict) if status == 409 and door.conflict is not None else problem
        responses[str(status)] = {"description": TITLES[status], "content": {PROBLEM_TYPE: {"schema": schema}}}
        if status in (429, 503):  # a 503 for a feature this process does not run has none
            responses[str(status)]["headers"] = {
                "Retry-After": {"schema": {"type": "string"}, "description": "seconds"}
            }
    operation["responses"] = responses
    return operation


def document(app: web.Application) -> dict[str, Any]:
    """Every route of `app`, described; a route without a description is an error."""
    schemas = _Schemas()
    paths: dict[str, dict[str, Any]] = {}
    for route in app.router.routes():
        if route.method == "HEAD" or route.resource is None:
            continue  # aiohttp answers HEAD wherever it answers GET
        path, door = route.resource.canonical, DOORS.get(route.handler)  # type: ignore[arg-type]
        if door is None:
            raise LookupError(f"{route.method} {path} has no @door description (signaling/doors.py)")
        paths.setdefault(path, {})[route.method.lower()] = _operation(door, path, schemas)
    return {
        "openapi": "3.1.0",
        "info": INFO,
        "components": {"securitySchemes": SECURITY_SCHEMES, "schemas": dict(sorted(schemas.components.items()))},
        "security": [{"bearer": []}, {"token": []}],
        "paths": paths,
    }
