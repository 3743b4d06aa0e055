"""Who is asking: the bearer token of a request."""

from __future__ import annotations

from aiohttp import web

from hub.core.tokens import Claims, TokenError, verify

from .keys import KEYS


def claims_of(request: web.Request) -> Claims:
    """Verify the request's token: the Authorization header, or a `token`
    query parameter where a browser cannot set headers (WebSocket, links)."""
    header = request.headers.get("Authorization", "")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise TokenError("expected 'Authorization: Bearer <token>'")
    else:
        token = request.query.get("token", "")
    if not token:
        raise TokenError("no bearer token")
    return verify(request.app[KEYS], token.strip())
