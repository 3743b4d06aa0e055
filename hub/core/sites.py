"""The governance site tree and jurisdiction: a site and everything below it."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

LEVELS = ("province", "prefecture", "county", "township", "village")


class SiteTreeError(ValueError):
    """A site file that does not describe one well-formed tree."""


@dataclass(frozen=True)
class Site:
    id: str
    name: str
    level: str
    parent: str | None
    name_en: str = ""

    @property
    def room_id(self) -> str:
        """The id of the site's standing room."""
        return standing_room_id(self.id)

    def to_json(self) -> dict[str, str | None]:
        return asdict(self) | {"room_id": self.room_id}


def standing_room_id(site_id: str) -> str:
    return f"site-{site_id}"


class SiteTree:
    """An immutable tree of sites, checked on construction."""

    def __init__(self, sites: list[Site]) -> None:
        self._sites: dict[str, Site] = {}
        self._children: dict[str, list[str]] = {}
        for site in sites:
            self._check(site)
            self._sites[site.id] = site
            self._children.setdefault(site.id, [])
            if site.parent is not None:
                self._children[site.parent].append(site.id)
        if sum(1 for s in sites if s.parent is None) != 1:
            raise SiteTreeError("a site tree needs exactly one root")

    def _check(self, site: Site) -> None:
        if not site.id or not site.id.isascii() or not all(c.isalnum() or c in "-_" for c in site.id):
            raise SiteTreeError(f"site id {site.id!r} must be ASCII letters, digits, - or _")
        if site.id in self._sites:
            raise SiteTreeError(f"site id {site.id!r} appears twice")
        if site.level not in LEVELS:
            raise SiteTreeError(f"site {site.id!r}: level must be one of {', '.join(LEVELS)}")
        if site.parent is None:
            return
        parent = self._sites.get(site.parent)
        if parent is None:
            raise SiteTreeError(f"site {site.id!r}: parent {site.parent!r} must be listed before it")
        if LEVELS.index(site.level) <= LEVELS.index(parent.level):
            raise SiteTreeError(f"site {site.id!r} ({site.level}) cannot sit below {parent.level} {parent.id!r}")

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._sites.values())

    def __len__(self) -> int:
        return len(self._sites)

    def get(self, site_id: str) -> Site | None:
        return self._sites.get(site_id)

    def covers(self, ancestor_id: str, site_id: str) -> bool:
        """Whether `site_id` lies in the jurisdiction of `ancestor_id`."""
        current = self._sites.get(site_id)
        while current is not None:
            if current.id == ancestor_id:
                return True
            current = self._sites.get(current.parent) if current.parent else None
        return False

    def children(self, site_id: str) -> list[str]:
        """The ids of the site's children, in the order the tree lists them."""
        return list(self._children.get(site_id, ()))

    def ancestors(self, site_id: str) -> list[str]:
        """The site and the sites above it, nearest first; [] for an unknown site."""
        out: list[str] = []
        current = self._sites.get(site_id)
        while current is not None:
            out.append(current.id)
            current = self._sites.get(current.parent) if current.parent else None
        return out

    def jurisdiction(self, site_id: str) -> list[Site]:
        """The site and every site below it, parents before children."""
        if site_id not in self._sites:
            return []
        out, stack = [], [site_id]
        while stack:
            current = stack.pop()
            out.append(self._sites[current])
            stack.extend(reversed(self._children[current]))
        return out

    def site_of_room(self, room_id: str) -> Site | None:
        prefix = standing_room_id("")
        return self._sites.get(room_id[len(prefix) :]) if room_id.startswith(prefix) else None


def sites_from_json(items: list[dict[str, object]]) -> list[Site]:
    try:
        return [
            Site(
                id=str(item["id"]),
                name=str(item["name"]),
                level=str(item["level"]),
                parent=None if item.get("parent") is None else str(item["parent"]),
                name_en=str(item.get("name_en", "")),
            )
            for item in items
        ]
    except (KeyError, TypeError) as exc:
        raise SiteTreeError(f"each site needs id, name, level and parent: {exc}") from exc


def load_sites_file(path: Path) -> SiteTree:
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # ValueError: not UTF-8, or not JSON
        raise SiteTreeError(f"cannot read site file {path}: {exc}") from exc
    if not isinstance(items, list):
        raise SiteTreeError(f"{path}: expected a JSON list of sites")
    return SiteTree(sites_from_json(items))
