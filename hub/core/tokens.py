"""Bearer tokens: signed JWTs (PyJWT) naming a user, a role and a home site."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import jwt

ROLES = ("admin", "operator", "mediator", "trainer", "terminal", "guest")
ALGORITHM = "HS256"
DEFAULT_TTL = 12 * 3600


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
