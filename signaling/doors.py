"""The REST doors: what each handler takes and answers, and the readers that
validate a request against it before the handler changes anything.

A handler is described once, with `@door(...)`: its summary, its JSON body
model, its query model and its answers. signaling/openapi.py builds the API
document from these descriptions and the route table; `read_body` and
`read_query` refuse what the description does not allow, so the document
and the code cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web
from pydantic_core import from_json

from .models import Body, Query
from .problems import Problem

JSON_TYPE = "application/json"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
H = TypeVar("H", bound=Handler)
B = TypeVar("B", bound=Body)
Q = TypeVar("Q", bound=Query)


@dataclass(frozen=True)
class Answer:
    """One successful answer: a JSON body of `model` (any type pydantic
    describes), or a body of another `media` type, or none."""

    status: int
    description: str
    model: Any = None
    media: str | None = None
    headers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Door:
    summary: str
    answers: tuple[Answer, ...]
    body: type[Body] | None = None
    #: An absent body reads as the model's defaults (POST /api/calls).
    body_optional: bool = False
    query: type[Query] | None = None
    #: The body is an SDP offer (WHIP, WHEP), not JSON.
    sdp: bool = False
    #: No token needed.
    public: bool = False
    #: Problem statuses beyond those the description implies (409, 503, ...).
    problems: tuple[int, ...] = ()
    #: The model of a 409 that carries more than the problem (a call's end).
    conflict: Any = None
    description: str = ""
    tags: tuple[str, ...] = field(default=())


#: Problem statuses a door may add: over a quota (sessions, rooms per site).
QUOTA = (429,)

#: Every described handler. Route handlers are module-level functions (or
#: a page's closure), so the mapping stays small and lives as long as they do.
DOORS: dict[Handler, Door] = {}


def door(summary: str, *answers: Answer, **details: Any) -> Callable[[H], H]:
    """Describe a handler (see Door for `details`)."""

    def describe(handler: H) -> H:
        DOORS[handler] = Door(summary, answers, **details)
        return handler

    return describe


def ok(model: Any, description: str = "OK") -> Answer:
    return Answer(200, description, model)


def created(model: Any, description: str = "Created") -> Answer:
    return Answer(201, description, model)


def _door_of(request: web.Request) -> Door:
    found = DOORS.get(request.match_info.handler)  # type: ignore[arg-type]
    if found is None:
        raise LookupError(f"{request.method} {request.path} has no @door description")
    return found


def _described(request: web.Request, model: type, kind: str) -> None:
    """The handler reads what its description names, so the API document is true."""
    described = getattr(_door_of(request), kind)
    if described is not model:
        raise LookupError(f"{request.method} {request.path} reads {model.__name__}, but its door says {described}")


async def read_body(request: web.Request, model: type[B]) -> B:
    """The JSON body, validated whole by `model`, or a problem: 415 for
    another content type, 413 past the application's size limit, 400 for
    anything else wrong. pydantic's JSON parser bounds nesting (it refuses
    deeper than 200 levels instead of recursing), refuses NaN and Infinity
    and invalid Unicode (lone surrogates), so nothing reaches the model that
    could not be stored, announced and sent back as JSON."""
    _described(request, model, "body")
    if not request.body_exists and _door_of(request).body_optional:
        return model()
    if request.content_type != JSON_TYPE:
        raise Problem(415, "Unsupported Media Type", f"send the body as {JSON_TYPE}")
    raw = await request.read()  # past client_max_size: HTTPRequestEntityTooLarge, a 413
    try:
        data = from_json(raw, allow_inf_nan=False)
    except ValueError as exc:
        raise Problem(400, "Bad Request", f"the body is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise Problem(400, "Bad Request", "the body must be a JSON object")
    return model.model_validate(data)  # a ValidationError is a 400 (problems_middleware)


def read_query(request: web.Request, model: type[Q]) -> Q:
    """The query parameters, validated by `model` (a 400 names the first wrong one)."""
    _described(request, model, "query")
    return model.model_validate(dict(request.query))
