"""Who is asking: the bearer token of a request."""

from __future__ import annotations

from aiohttp import web

from hub.core.tokens import Claims, TokenError, verify, verify_node

from .keys import KEYS, SETTINGS


def claims_of(request: web.Request, node: bool = False) -> Claims:
    """Verify the request's token: the Authorization header, or a `token`
    query parameter where a browser cannot set headers (WebSocket, links).
    A door that serves other hub processes (WHEP: relays) says `node`: it
    also accepts a cluster token, signed with HUB_CLUSTER_SECRET."""
    header = request.headers.get("Authorization", "")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise TokenError("expected 'Authorization: Bearer <token>'")
    else:
        token = request.query.get("token", "")
    if not token:
        raise TokenError("no bearer token")
    token = token.strip()
    cluster_secret = request.app[SETTINGS].cluster_secret if node else None
    try:
        return verify(request.app[KEYS], token)
    except TokenError:
        if not cluster_secret:
            raise
    return verify_node(cluster_secret, token)
