"""Bearer tokens: signed JWTs (PyJWT) naming a user, a role and a home site."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import jwt

ROLES = ("admin", "operator", "mediator", "trainer", "terminal", "guest")
ALGORITHM = "HS256"
DEFAULT_TTL = 12 * 3600
#: The role of another hub process pulling a stream (a relay). Not among
#: ROLES: no user token can carry it; only a token signed with the cluster
#: secret for the cluster audience does, and only the WHEP doors accept it.
NODE_ROLE = "node"
NODE_AUDIENCE = "hub-cluster"
#: A node token is made per request, so it needs to live only that long.
NODE_TTL = 60


class TokenError(Exception):
    """A token that is missing, malformed, expired or wrongly signed."""


@dataclass(frozen=True)
class Claims:
    user: str
    site: str
    role: str
    room: str | None = None
    name: str | None = None

    def display_name(self) -> str:
        return self.name or self.user


def issue(secret: str, claims: Claims, ttl: int = DEFAULT_TTL) -> str:
    if claims.role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    if claims.role == "guest" and not claims.room:
        raise ValueError("a guest token must name its room")
    now = int(time.time())
    payload: dict[str, object] = {
        "sub": claims.user,
        "site": claims.site,
        "role": claims.role,
        "iat": now,
        "exp": now + ttl,
        "jti": uuid.uuid4().hex,
    }
    if claims.room:
        payload["room"] = claims.room
    if claims.name:
        payload["name"] = claims.name
    return jwt.encode(payload, secret, algorithm=ALGORITHM)


def verify(secret: str, token: str) -> Claims:
    try:
        payload = jwt.decode(token, secret, algorithms=[ALGORITHM], options={"require": ["sub", "site", "role", "exp"]})
    except jwt.ExpiredSignatureError as exc:
        raise TokenError("token expired") from exc
    except jwt.InvalidTokenError as exc:
        raise TokenError(f"invalid token: {exc}") from exc
    role = payload["role"]
    if role not in ROLES or (role == "guest" and not payload.get("room")):
        raise TokenError("invalid token: bad role")
    return Claims(
        user=str(payload["sub"]),
        site=str(payload["site"]),
        role=str(role),
        room=payload.get("room"),
        name=payload.get("name"),
    )


def issue_node(cluster_secret: str, node_id: str, ttl: int = NODE_TTL) -> str:
    """A cluster credential: this hub process, asking another one for a stream."""
    now = int(time.time())
    payload = {"sub": f"node:{node_id}", "role": NODE_ROLE, "aud": NODE_AUDIENCE, "iat": now, "exp": now + ttl}
    return jwt.encode(payload, cluster_secret, algorithm=ALGORITHM)


def verify_node(cluster_secret: str, token: str) -> Claims:
    """The claims of another hub process's token, or TokenError."""
    try:
        payload = jwt.decode(
            token, cluster_secret, algorithms=[ALGORITHM], audience=NODE_AUDIENCE, options={"require": ["sub", "exp"]}
        )
    except jwt.ExpiredSignatureError as exc:
        raise TokenError("cluster token expired") from exc
    except jwt.InvalidTokenError as exc:
        raise TokenError(f"invalid token: {exc}") from exc
    if payload.get("role") != NODE_ROLE:
        raise TokenError("invalid cluster token: bad role")
    return Claims(user=str(payload["sub"]), site="", role=NODE_ROLE)
