"""Who may reach what: jurisdiction is a site and every site below it."""

from __future__ import annotations

from typing import Any

from hub.core.sites import SiteTree
from hub.core.tokens import Claims


class Forbidden(Exception):
    """The caller is known but the thing lies outside their jurisdiction."""


def can_reach_site(tree: SiteTree, claims: Claims, site_id: str) -> bool:
    return claims.role != "guest" and tree.covers(claims.site, site_id)


def can_enter_room(tree: SiteTree, claims: Claims, room: dict[str, Any]) -> bool:
    """Guests reach the one room their token names; others, any room of a
    site in their jurisdiction, and a room that admits their site: a
    training admits a branch, a conference the sites it convened, an
    escalated case the site it came from (`admit`: site ids, each with
    everything below it)."""
    if claims.role == "guest":
        return claims.room == room["id"]
    if claims.room is not None and claims.room != room["id"]:
        return False
    return tree.covers(claims.site, room["site_id"]) or any(tree.covers(s, claims.site) for s in room.get("admit", ()))


def addressed_to(tree: SiteTree, claims: Claims, to: dict[str, Any]) -> bool:
    """Whether an event's audience (`to`) includes this caller. Keys, all
    optional, all must hold: "covering": a site the caller's jurisdiction
    must cover (alerts go to the operators above a site); "sites": home
    sites (an invitation goes to the people of a site); "within": a site
    whose jurisdiction holds the caller's home; "roles"; "users". Guests
    receive only events of their room, never addressed ones."""
    if claims.role == "guest":
        return False
    checks = (
        ("covering", lambda site: tree.covers(claims.site, site)),
        ("sites", lambda sites: claims.site in sites),
        ("within", lambda site: tree.covers(site, claims.site)),
        ("roles", lambda roles: claims.role in roles),
        ("users", lambda users: claims.user in users),
    )
    return all(check(to[key]) for key, check in checks if key in to)
