"""Time-limited TURN credentials (the TURN REST scheme, draft-uberti-behave-turn-rest-00).

The hub and the TURN server share one secret and never talk to each other: the hub mints, for a
user, the username `<expiry>:<user>` (expiry in Unix seconds) and the password
`base64(HMAC-SHA1(secret, username))`; the TURN server (coturn's `use-auth-secret`) recomputes the
HMAC from the username it is given and refuses the request once the expiry has passed. A leaked
credential so stops working by itself, and nothing has to be provisioned per user.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass


@dataclass(frozen=True)
class TurnCredential:
    urls: list[str]
    username: str
    credential: str
    expires: int

    def ice_server(self) -> dict[str, object]:
        """The credential as a WebRTC RTCIceServer dictionary."""
        return {"urls": self.urls, "username": self.username, "credential": self.credential}


def password(secret: str, username: str) -> str:
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def mint(secret: str, urls: list[str], user: str, expires: int) -> TurnCredential:
    """A credential for `user` valid until `expires` (Unix seconds)."""
    username = f"{expires}:{user}"
    return TurnCredential(list(urls), username, password(secret, username), expires)
