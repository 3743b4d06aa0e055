"""Bearer tokens: signed JWTs (PyJWT) naming a user, a role and a home site.

A department user's token names its department (`department`); its home
(`site`) is then the department's id, so no jurisdiction check that
compares homes with sites ever lets it reach a site (hub/core/sites.py).

Tokens are signed with a `Keyring`: one or more HS256 keys, each with an id
(the JWT header's `kid`). The first key signs; every key verifies the tokens
that name it. So a key can be rolled over on many machines without a moment
in which one machine refuses another's tokens: first every machine learns the
new key, then it moves first, then the old one goes once its tokens expired.

A key may have no id: the single secret of a data directory's `secret.key`,
which signed tokens before keys had ids. It signs tokens without `kid` when
it is first and verifies tokens without `kid`, so those keep working while a
deployment moves to a key file.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import jwt

log = logging.getLogger(__name__)

ROLES = ("admin", "operator", "mediator", "trainer", "terminal", "guest")
ALGORITHM = "HS256"
DEFAULT_TTL = 12 * 3600
#: The role of another hub process pulling a stream (a relay). Not among
#: ROLES: no user token can carry it; only a token signed with the cluster
#: secret for the cluster audience does, and only the WHEP doors accept it.
NODE_ROLE = "node"
NODE_AUDIENCE = "hub-cluster"
#: A cluster token's subject: this, then the hub process's id (users' names never start so).
NODE_SUBJECT = "node:"
#: A node token is made per request, so it needs to live only that long.
NODE_TTL = 60
#: RFC 7518 §3.2: an HS256 key has at least 256 bits; a printable secret of 32
#: characters carries fewer, but a shorter one is certainly a mistake.
MIN_SECRET_CHARS = 32
KEY_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


class TokenError(Exception):
    """A token that is missing, malformed, expired or wrongly signed."""


class KeyringError(ValueError):
    """A key file that cannot be used: what is wrong, and on which line."""


@dataclass(frozen=True)
class Key:
    #: None: the data directory's legacy secret (tokens without `kid`).
    id: str | None
    secret: str


@dataclass(frozen=True)
class Keyring:
    """Signing keys, the first signs. Read from a key file: one key a line,
    `ID SECRET`, or a lone `SECRET` for the key without id; `#` starts a comment."""

    keys: tuple[Key, ...]

    @classmethod
    def parse(cls, text: str, source: str = "key file") -> Keyring:
        keys: list[Key] = []
        for number, line in enumerate(text.splitlines(), 1):
            words = line.split("#", 1)[0].split()
            if not words:
                continue
            if len(words) > 2:
                raise KeyringError(f"{source}:{number}: expected 'ID SECRET' or 'SECRET'")
            kid, secret = (None, words[0]) if len(words) == 1 else (words[0], words[1])
            if kid is not None and not KEY_ID.fullmatch(kid):
                raise KeyringError(f"{source}:{number}: a key id is 1-64 of A-Z a-z 0-9 . _ -")
            if len(secret) < MIN_SECRET_CHARS:
                raise KeyringError(f"{source}:{number}: a secret has at least {MIN_SECRET_CHARS} characters")
            if any(k.id == kid for k in keys):
                which = f"key {kid!r}" if kid else "key without id"
                raise KeyringError(f"{source}:{number}: a second {which}")
            keys.append(Key(kid, secret))
        if not keys:
            raise KeyringError(f"{source}: no key")
        return cls(tuple(keys))

    @property
    def signing(self) -> Key:
        return self.keys[0]

    def find(self, kid: str | None) -> Key | None:
        return next((k for k in self.keys if k.id == kid), None)

    def current(self) -> Keyring:
        return self


class KeyFile:
    """A key file, read again whenever it changes, so a rollover needs no
    restart. A change that cannot be read (a half-written file, a typo)
    keeps the keys read before and is logged: one bad edit never locks
    every user out."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._ring: Keyring | None = None

    def current(self) -> Keyring:
        try:
            st = os.stat(self.path)
        except OSError as exc:
            return self._keep(None, exc)
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp == self._stamp and self._ring is not None:
            return self._ring
        try:
            ring = Keyring.parse(self.path.read_text(), str(self.path))
        except (OSError, KeyringError) as exc:
            return self._keep(stamp, exc)
        if self._ring is not None and ring != self._ring:
            log.info("signing keys of %s now: %s", self.path, ", ".join(k.id or "(no id)" for k in ring.keys))
        self._ring, self._stamp = ring, stamp
        return ring

    def _keep(self, stamp: tuple[int, int, int] | None, exc: Exception) -> Keyring:
        """The keys read before, when the file's present version cannot be read."""
        if self._ring is None:
            raise KeyringError(str(exc)) from exc
        if stamp != self._stamp:  # once per bad version of the file, not per request
            log.error("keeping the signing keys read before: %s", exc)
        self._stamp = stamp
        return self._ring


#: What signs and verifies: a key file, a keyring, or one secret (a key without id).
Keys = KeyFile | Keyring | str


def _ring(keys: Keys) -> Keyring:
    return Keyring((Key(None, keys),)) if isinstance(keys, str) else keys.current()


@dataclass(frozen=True)
class Claims:
    user: str
    site: str
    role: str
    room: str | None = None
    name: str | None = None
    #: The department of a department user; then `site` is the same id.
    department: str | None = None

    def __post_init__(self) -> None:
        if self.department is not None and self.department != self.site:
            raise ValueError("a department user's home is its department")

    def display_name(self) -> str:
        return self.name or self.user


def issue(keys: Keys, claims: Claims, ttl: int = DEFAULT_TTL) -> str:
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
    if claims.department:
        payload["department"] = claims.department
    key = _ring(keys).signing
    headers = {"kid": key.id} if key.id else None
    return jwt.encode(payload, key.secret, algorithm=ALGORITHM, headers=headers)


def _kid(token: str) -> object:
    """The key id the token's header names, read without checking anything:
    jwt.decode then checks the whole token with the key it picks. (PyJWT's
    get_unverified_header would parse and check all of the token a first
    time, ~100 µs of the ~220 µs a verification costs; every event socket of
    a join storm pays it.)"""
    header = token.partition(".")[0]
    try:
        fields = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))
    except (ValueError, binascii.Error) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise TokenError("invalid token: its header is not base64url-encoded JSON") from exc
    if not isinstance(fields, dict):
        raise TokenError("invalid token: its header is not a JSON object")
    return fields.get("kid")


def verify(keys: Keys, token: str) -> Claims:
    kid = _kid(token)
    key = _ring(keys).find(kid) if kid is None or isinstance(kid, str) else None
    if key is None:
        raise TokenError(
            f"invalid token: signed with key {kid!r}, which this hub does not hold"
            if kid
            else "invalid token: it names no signing key (kid) and this hub holds no key without id"
        )
    try:
        payload = jwt.decode(
            token, key.secret, algorithms=[ALGORITHM], options={"require": ["sub", "site", "role", "exp"]}
        )
    except jwt.ExpiredSignatureError as exc:
        raise TokenError("token expired") from exc
    except jwt.InvalidTokenError as exc:
        raise TokenError(f"invalid token: {exc}") from exc
    role = payload["role"]
    if role not in ROLES or (role == "guest" and not payload.get("room")):
        raise TokenError("invalid token: bad role")
    department = payload.get("department")
    if department is not None and department != payload["site"]:
        raise TokenError("invalid token: a department user's site is its department")
    if str(payload["sub"]).startswith(NODE_SUBJECT):
        raise TokenError("invalid token: a user's name may not pass for a hub process's")
    return Claims(
        user=str(payload["sub"]),
        site=str(payload["site"]),
        role=str(role),
        room=payload.get("room"),
        name=payload.get("name"),
        department=None if department is None else str(department),
    )


def issue_node(cluster_secret: str, node_id: str, ttl: int = NODE_TTL) -> str:
    """A cluster credential: this hub process, asking another one for a stream."""
    now = int(time.time())
    payload = {"sub": f"{NODE_SUBJECT}{node_id}", "role": NODE_ROLE, "aud": NODE_AUDIENCE, "iat": now, "exp": now + ttl}
    return jwt.encode(payload, cluster_secret, algorithm=ALGORITHM)


def pulling_node(user: str) -> str | None:
    """The hub process a WHEP session's viewer is, if it is one (a relay's pull)."""
    return user.removeprefix(NODE_SUBJECT) if user.startswith(NODE_SUBJECT) else None


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
