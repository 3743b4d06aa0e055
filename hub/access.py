"""Who may reach what: jurisdiction is a site and every site below it."""

from __future__ import annotations

from .sites import SiteTree
from .tokens import Claims


class Forbidden(Exception):
    """The caller is known but the thing lies outside their jurisdiction."""


def can_reach_site(tree: SiteTree, claims: Claims, site_id: str) -> bool:
    return claims.role != "guest" and tree.covers(claims.site, site_id)


def can_enter_room(tree: SiteTree, claims: Claims, room_id: str, room_site_id: str) -> bool:
    """Guests reach the one room their token names; others, any room of a
    site in their jurisdiction."""
    if claims.role == "guest":
        return claims.room == room_id
    if claims.room is not None and claims.room != room_id:
        return False
    return tree.covers(claims.site, room_site_id)
