"""The governance site tree and jurisdiction: a site and everything below it.

Departments (a court, a police station, a judicial office...) sit beside a
site, not in its tree: they share the sites' id space, and a department
covers itself and nothing else, nor does any site cover it. A department
user's token has the department's id as its home, so no check that compares
homes with sites ever lets it reach a site, nor a site user reach a
department's own things (its room, its recordings): departments reach what
they are admitted or referred to (hub/core/access.py), and whoever needs to
see them beside a site (the console) asks for them by site.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

LEVELS = ("province", "prefecture", "county", "township", "village")
DEPARTMENT_KINDS = (
    "court",
    "tribunal",
    "procuratorate",
    "police",
    "justice",
    "petition",
    "civil_affairs",
    "womens_federation",
    "other",
)


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


@dataclass(frozen=True)
class Department:
    id: str
    site_id: str
    kind: str
    name: str
    name_en: str = ""

    @property
    def room_id(self) -> str:
        """The id of the department's own standing room."""
        return department_room_id(self.id)

    def to_json(self) -> dict[str, str]:
        return asdict(self) | {"room_id": self.room_id}


def standing_room_id(site_id: str) -> str:
    return f"site-{site_id}"


def department_room_id(department_id: str) -> str:
    return f"dept-{department_id}"


def _check_id(what: str, ident: str) -> None:
    if not ident or not ident.isascii() or not all(c.isalnum() or c in "-_" for c in ident):
        raise SiteTreeError(f"{what} id {ident!r} must be ASCII letters, digits, - or _")


class SiteTree:
    """An immutable tree of sites, checked on construction."""

    def __init__(self, sites: list[Site], departments: list[Department] | tuple[Department, ...] = ()) -> None:
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
        self._departments: dict[str, Department] = {}
        self._departments_of: dict[str, list[Department]] = {}
        for department in departments:
            self._check_department(department)
            self._departments[department.id] = department
            self._departments_of.setdefault(department.site_id, []).append(department)

    def _check_department(self, department: Department) -> None:
        _check_id("department", department.id)
        # One id space with the sites: a token's home names either.
        if department.id in self._sites or department.id in self._departments:
            raise SiteTreeError(f"department id {department.id!r} is already taken by a site or a department")
        if department.site_id not in self._sites:
            raise SiteTreeError(f"department {department.id!r}: no site {department.site_id!r}")
        if department.kind not in DEPARTMENT_KINDS:
            raise SiteTreeError(f"department {department.id!r}: kind must be one of {', '.join(DEPARTMENT_KINDS)}")
        if not department.name:
            raise SiteTreeError(f"department {department.id!r} needs a name")

    def _check(self, site: Site) -> None:
        _check_id("site", site.id)
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

    def department(self, department_id: str) -> Department | None:
        return self._departments.get(department_id)

    def departments(self, site_id: str | None = None) -> list[Department]:
        """The departments of one site, or (None) of the whole tree, in file order."""
        if site_id is None:
            return list(self._departments.values())
        return list(self._departments_of.get(site_id, ()))

    def covers(self, ancestor_id: str, site_id: str) -> bool:
        """Whether `site_id` lies in the jurisdiction of `ancestor_id`; a
        department (either way) lies in its own only."""
        if site_id in self._departments:
            return ancestor_id == site_id
        current = self._sites.get(site_id)
        while current is not None:
            if current.id == ancestor_id:
                return True
            current = self._sites.get(current.parent) if current.parent else None
        return False

    def children(self, site_id: str) -> list[str]:
        """The ids of the site's children, in the order the tree lists them."""
        return list(self._children.get(site_id, ()))

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

    def ancestors(self, site_id: str) -> list[str]:
        """The ids whose jurisdiction holds `site_id`, nearest first (covers(a, site_id) for each)."""
        if site_id in self._departments:
            return [site_id]
        out: list[str] = []
        current = self._sites.get(site_id)
        while current is not None:
            out.append(current.id)
            current = self._sites.get(current.parent) if current.parent else None
        return out

    def site_of_room(self, room_id: str) -> Site | None:
        prefix = standing_room_id("")
        return self._sites.get(room_id[len(prefix) :]) if room_id.startswith(prefix) else None

    def department_of_room(self, room_id: str) -> Department | None:
        prefix = department_room_id("")
        return self._departments.get(room_id[len(prefix) :]) if room_id.startswith(prefix) else None


def departments_from_json(items: list[dict[str, object]]) -> list[Department]:
    """The departments a site file lists: each site's optional "departments"
    list of {"id", "kind", "name", "name_en"?}."""
    out = []
    for item in items:
        listed = item.get("departments", [])
        if not isinstance(listed, list):
            raise SiteTreeError(f"site {item.get('id')!r}: departments must be a list")
        try:
            out.extend(
                Department(
                    id=str(d["id"]),
                    site_id=str(item["id"]),
                    kind=str(d["kind"]),
                    name=str(d["name"]),
                    name_en=str(d.get("name_en", "")),
                )
                for d in listed
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise SiteTreeError(f"site {item.get('id')!r}: each department needs id, kind and name: {exc}") from exc
    return out


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
    if not all(isinstance(item, dict) for item in items):
        raise SiteTreeError(f"{path}: each site is a JSON object")
    return SiteTree(sites_from_json(items), departments_from_json(items))
