"""Who may reach what: jurisdiction is a site and every site below it.

A token bound to a room (every guest's, and any other role's made with
`token --room`) reaches that room only: no site, hence no cases,
recordings, cameras, snapshots, calls or addressed events, whatever its
role. Each door asks these functions, so REST and the event socket answer
the same question the same way.

A department user's home is its department (hub/core/sites.py): it reaches
no site, only its department's own room and what is granted to it by id —
the rooms that admit it (an invitation, a referred case's sessions) and the
cases referred to it (`admitted`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hub.core.sites import SiteTree
from hub.core.tokens import NODE_ROLE, Claims


class Forbidden(Exception):
    """The caller is known but the thing lies outside their jurisdiction."""


def room_bound(claims: Claims) -> bool:
    """Whether the token grants one room and nothing else (guests always)."""
    return claims.role == "guest" or claims.room is not None


def can_reach_site(tree: SiteTree, claims: Claims, site_id: str) -> bool:
    """Whether the caller reaches what belongs to a site (its cases,
    recordings, cameras, snapshots, calls): a site of its jurisdiction,
    and a token not bound to a room."""
    return not room_bound(claims) and tree.covers(claims.site, site_id)


def require_site(tree: SiteTree, claims: Claims, site_id: str) -> None:
    """can_reach_site, or Forbidden saying why not."""
    if can_reach_site(tree, claims, site_id):
        return
    if room_bound(claims):
        raise Forbidden(f"this token is bound to room {claims.room} and reaches nothing else")
    raise Forbidden(f"site {site_id} is outside your jurisdiction")


def admitted(tree: SiteTree, claims: Claims, grants: Iterable[str]) -> bool:
    """Whether something granted to these sites (each with everything below
    it) or departments (each itself) reaches the caller: a room's `admit`, a
    case's referred departments. A room-bound token is granted nothing this way."""
    return not room_bound(claims) and any(tree.covers(g, claims.site) for g in grants)


def can_reach_recording(
    tree: SiteTree, claims: Claims, recording: dict[str, Any], granted_rooms: Iterable[str] = ()
) -> bool:
    """A recording belongs to its room's site (can_reach_site); a department's
    people also reach those of the rooms granted to it (`granted_rooms`: the
    sessions of the cases referred to it, hub.workflows.cases.Cases.granted_rooms)."""
    if can_reach_site(tree, claims, recording["site_id"]):
        return True
    return claims.department is not None and not room_bound(claims) and recording["room_id"] in set(granted_rooms)


def can_enter_room(tree: SiteTree, claims: Claims, room: dict[str, Any]) -> bool:
    """A room-bound token enters the one room it names (a guest's whatever
    its site; another role's only if its site may enter it too); others,
    any room of a site in their jurisdiction, and a room that admits their
    site: a training admits a branch, a conference the sites it convened,
    an escalated case the site it came from (`admit`: site ids, each with
    everything below it). Another hub process (a relay) enters any room: it
    pulls a stream for viewers its own jurisdiction checks admitted."""
    if claims.role == NODE_ROLE:
        return True
    if claims.role == "guest":
        return claims.room == room["id"]
    if claims.room is not None and claims.room != room["id"]:
        return False
    return tree.covers(claims.site, room["site_id"]) or any(tree.covers(s, claims.site) for s in room.get("admit", ()))


def addressed_to(tree: SiteTree, claims: Claims, to: dict[str, Any]) -> bool:
    """Whether an event's audience (`to`) includes this caller. Keys, all
    optional, all must hold: "covering": a site the caller must reach
    (can_reach_site: alerts and case changes go to whoever may read them
    over REST); "sites": home sites (an invitation goes to the people of a
    site); "within": a site whose jurisdiction holds the caller's home;
    "roles"; "users". A room-bound token receives only events of its room,
    never addressed ones."""
    if room_bound(claims):
        return False
    checks = (
        ("covering", lambda site: can_reach_site(tree, claims, site)),
        ("sites", lambda sites: claims.site in sites),
        ("within", lambda site: tree.covers(site, claims.site)),
        ("roles", lambda roles: claims.role in roles),
        ("users", lambda users: claims.user in users),
    )
    return all(check(to[key]) for key, check in checks if key in to)
