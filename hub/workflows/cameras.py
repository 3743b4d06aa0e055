"""Cameras: registered to sites (API or data file), stored in SQLite, pulled
by one hub process each and published as streams of their site's standing room.

A camera that delivers frames is a stream like any other (kind "ipcam", no
participant): WHEP viewers, the recorder and snapshots find it through the
usual stream records. Its live status is the named record ("camera", id):

    {"id", "site_id", "name", "status": "connecting"|"online"|"offline",
     "since", "error", "stream_id" (when online), "node"}

and every change is published as {"type": "camera-status", "camera": record,
"to": {"covering": site_id}}; a removed camera's last event has status
"removed". With several hub processes on Redis, the one holding a camera's
lease (claim_record("camera-lease", id), renewed while it pulls) pulls it;
the others take over when the lease expires.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import socket
import time
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from hub.config import Settings
from hub.core.access import Forbidden, can_reach_site, require_site
from hub.core.livestate import NodeUnreachable, Record, Unavailable
from hub.core.rooms import NotFound, Rooms
from hub.core.sites import SiteTree, standing_room_id
from hub.core.store import Database, Migrations, Tables
from hub.core.tasks import cancel_and_wait
from hub.core.tokens import Claims
from hub.media.ingest import PROTOCOLS, CameraPuller, Feeder, PullOptions, redact

log = logging.getLogger(__name__)

#: The stream kind of a camera the hub pulls (a participant's webcam is "camera").
STREAM_KIND = "ipcam"
#: Roles that may register and remove cameras of the sites they reach.
MANAGER_ROLES = ("admin", "operator")
MAX_NAME = 100
MAX_URL = 2048
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

MIGRATIONS = Migrations(
    "cameras",
    (
        (
            """CREATE TABLE IF NOT EXISTS cameras (
    id TEXT PRIMARY KEY,
    site_id TEXT NOT NULL,
    name TEXT NOT NULL,
    url TEXT NOT NULL,
    created_by TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL
)""",
            "CREATE INDEX IF NOT EXISTS cameras_site ON cameras (site_id)",
        ),
    ),
)
COLUMNS = ("id", "site_id", "name", "url", "created_by", "created_at")


# -- validation ----------------------------------------------------------------

Address = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network
#: Addresses that reach the hub's own machine or its cloud metadata service
#: (169.254.169.254): only a network listed inside one of these admits them,
#: never a wide entry such as 0.0.0.0/0 that merely covers them.
GUARDED: tuple[Network, ...] = tuple(
    ip_network(n) for n in ("0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "::/128", "::1/128", "fe80::/10")
)
_HOST_NAME = re.compile(r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")


def _guard(address: Address) -> Network | None:
    return next((g for g in GUARDED if address.version == g.version and address in g), None)


@dataclass(frozen=True)
class CameraNetworks:
    """Where network cameras may be (HUB_CAMERA_NETWORKS): networks in CIDR
    notation and host names. Nothing listed: no network camera at all.

    A URL's host must resolve only to addresses of listed networks, or be a
    listed host name; either way a loopback, link-local or unspecified
    address needs a listed network inside its range (127.0.0.1/32, say).
    Checked at registration and before every connection, since a name may
    resolve elsewhere later.
    """

    networks: tuple[Network, ...] = ()
    hosts: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, entries: list[str]) -> CameraNetworks:
        networks, hosts = [], set()
        for entry in entries:
            try:
                networks.append(ip_network(entry.strip(), strict=False))
                continue
            except ValueError:
                pass
            name = entry.strip().lower().rstrip(".")
            if not _HOST_NAME.match(name):
                raise ValueError(f"HUB_CAMERA_NETWORKS: {entry!r} is neither a network (CIDR) nor a host name")
            hosts.add(name)
        return cls(tuple(networks), frozenset(hosts))

    def admits(self, address: Address) -> bool:
        if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
        guard = _guard(address)
        return any(
            address in n and (guard is None or (n.version == guard.version and n.subnet_of(guard)))  # type: ignore[arg-type]
            for n in self.networks
            if n.version == address.version
        )

    def check(self, host: str) -> None:
        """ValueError unless a camera may be pulled from `host` (a URL's hostname)."""
        if not self.networks and not self.hosts:
            raise ValueError("network cameras are off: HUB_CAMERA_NETWORKS lists no networks or hosts")
        name = host.lower().rstrip(".")
        literal = True
        try:
            addresses: set[Address] = {ip_address(name)}
        except ValueError:
            literal = False
            try:
                infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
            except (OSError, UnicodeError) as exc:
                raise ValueError(f"url host {host} does not resolve") from exc
            addresses = {ip_address(str(info[4][0]).split("%")[0]) for info in infos}
        listed_name = name in self.hosts
        for address in addresses:
            if listed_name and _guard(address) is None:
                continue
            if not self.admits(address):
                where = "is" if literal else "resolves to an address"
                raise ValueError(
                    f"url host {host} {where} not in HUB_CAMERA_NETWORKS"
                    " (a loopback or link-local address only if a network inside its range is listed)"
                )


@dataclass(frozen=True)
class UrlRules:
    """Where cameras may be pulled from: `dirs` for file URLs (the data
    directory's media/ folder and HUB_CAMERA_PATHS), `networks` for the rest."""

    dirs: list[Path]
    networks: CameraNetworks


def check_url(url: object, rules: UrlRules) -> str:
    """The URL if a camera may be pulled from it, else ValueError.

    rtsp, rtsps, http and https need a host that `rules.networks` admits.
    A file URL (file:///abs/path) must name an existing file inside one of
    `rules.dirs` after resolving symbolic links and "..": not the data
    directory itself, which holds the signing secret, the database and
    recordings. The API must not become a way to read the hub's files
    (FFmpeg can render even a text file as video), nor to reach the hub's
    own machine or network (a metadata service, Redis on localhost).
    """
    if not isinstance(url, str) or not url or len(url) > MAX_URL:
        raise ValueError(f"url must be a string of at most {MAX_URL} characters")
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise ValueError("url must not contain spaces or control characters")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in PROTOCOLS:
        raise ValueError(f"url scheme must be one of {', '.join(PROTOCOLS)}")
    if scheme != "file":
        if not parts.hostname:
            raise ValueError(f"a {scheme} url needs a host")
        rules.networks.check(parts.hostname)
        return url
    if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
        raise ValueError("a file url is file:///absolute/path, nothing more")
    path = Path(unquote(parts.path))
    if not path.is_absolute():
        raise ValueError("a file url needs an absolute path")
    resolved = path.resolve()
    if not any(resolved.is_relative_to(d.resolve()) for d in rules.dirs):
        raise ValueError("a file url must lie inside the data directory's media/ folder or HUB_CAMERA_PATHS")
    if not resolved.is_file():
        raise ValueError(f"no file {path}")
    return f"file://{resolved}"


def check_entry(entry: object, tree: SiteTree, rules: UrlRules) -> dict[str, str]:
    """One camera to register: {"site_id", "name", "url"} and optionally "id"."""
    if not isinstance(entry, dict):
        raise ValueError('a camera is {"site_id", "name", "url"}')
    site_id, name = entry.get("site_id"), entry.get("name")
    if not isinstance(site_id, str) or tree.get(site_id) is None:
        raise NotFound(f"no site {site_id}")
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME:
        raise ValueError(f"name must be a non-empty string of at most {MAX_NAME} characters")
    out = {"site_id": site_id, "name": name.strip(), "url": check_url(entry.get("url"), rules)}
    if "id" in entry:
        if not isinstance(entry["id"], str) or not _ID.match(entry["id"]):
            raise ValueError("id must be 1-64 letters, digits, '-', '_' or '.'")
        out["id"] = entry["id"]
    return out


# -- durable registrations --------------------------------------------------------


class CameraStore(Tables):
    """The `cameras` table."""

    migrations = MIGRATIONS

    async def all(self) -> list[dict[str, Any]]:
        rows = await self.db.fetchall(f"SELECT {', '.join(COLUMNS)} FROM cameras ORDER BY site_id, name")
        return [dict(zip(COLUMNS, row, strict=True)) for row in rows]

    async def get(self, camera_id: str) -> dict[str, Any] | None:
        row = await self.db.fetchone(f"SELECT {', '.join(COLUMNS)} FROM cameras WHERE id = ?", (camera_id,))
        return dict(zip(COLUMNS, row, strict=True)) if row else None

    async def save(self, cameras: list[dict[str, Any]]) -> None:
        """Insert or replace, all in one transaction."""
        async with self.db.transaction() as tx:
            await tx.executemany(
                f"INSERT INTO cameras ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
                f" ON CONFLICT (id) DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in COLUMNS[1:])}",
                [tuple(c[k] for k in COLUMNS) for c in cameras],
            )

    async def delete(self, camera_id: str) -> bool:
        return await self.db.execute("DELETE FROM cameras WHERE id = ?", (camera_id,)) > 0

    async def id_of(self, site_id: str, name: str) -> str | None:
        row = await self.db.fetchone("SELECT id FROM cameras WHERE site_id = ? AND name = ?", (site_id, name))
        return row[0] if row else None


async def import_cameras(store: CameraStore, tree: SiteTree, path: Path, rules: UrlRules, by: str) -> int:
    """Register the cameras of a data file (a JSON list of {"site_id",
    "name", "url"} with an optional "id"). All or nothing: one bad entry
    stores none. An entry without an id replaces the camera of the same
    site and name, so importing a file twice changes nothing."""
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: {exc}") from exc
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a JSON list of cameras")
    cameras = []
    for n, entry in enumerate(entries):
        try:
            camera = check_entry(entry, tree, rules)
        except (ValueError, NotFound) as exc:
            raise ValueError(f"{path}: camera {n + 1}: {exc}") from exc
        camera_id = camera.get("id") or await store.id_of(camera["site_id"], camera["name"]) or _new_id()
        cameras.append(camera | {"id": camera_id, "created_by": by, "created_at": time.time()})
    await store.save(cameras)
    return len(cameras)


def _new_id() -> str:
    return f"cam-{secrets.token_hex(5)}"


# -- the service -----------------------------------------------------------------


@dataclass
class _Pulled:
    """A camera this process pulls."""

    camera: dict[str, Any]
    puller: CameraPuller
    stream_id: str | None = None
    #: The last status record written: restored when shared live state lost it.
    status: Record | None = None


class Cameras:
    def __init__(
        self,
        rooms: Rooms,
        db: Database,
        rules: UrlRules,
        options: PullOptions,
        lease_seconds: float,
    ) -> None:
        self.rooms = rooms
        self.store = CameraStore(db)
        self.rules = rules
        self.options = options
        self.lease_seconds = lease_seconds
        self.pulled: dict[str, _Pulled] = {}
        self._task: asyncio.Task[None] | None = None
        self._reconcile_lock = asyncio.Lock()
        # Leases and statuses are renewed by reconcile: after an outage, at once.
        rooms.state.restorers.append(self.reconcile)
        rooms.state.acts["cameras-reconcile"] = self._act_reconcile

    @property
    def tree(self) -> SiteTree:
        return self.rooms.tree

    async def start(self) -> None:
        await self.store.open()
        await self.reconcile()
        self._task = asyncio.create_task(self._reconcile_forever())

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        for pulled in self.pulled.values():
            pulled.puller.stop()  # all at once: each may wait out a read
        for camera_id in tuple(self.pulled):
            await self._stop_pulling(camera_id, "the hub process stopped")

    # -- API -------------------------------------------------------------------

    async def register(self, claims: Claims, entry: object) -> Record:
        # Off the loop: checking a host name resolves it.
        camera = await asyncio.to_thread(check_entry, entry, self.tree, self.rules)
        self._check_manager(claims, camera["site_id"])
        if "id" in camera and await self.store.get(camera["id"]) is not None:
            raise ValueError(f"camera {camera['id']} exists")
        camera = camera | {"id": camera.get("id") or _new_id(), "created_by": claims.user, "created_at": time.time()}
        await self.store.save([camera])
        await self.reconcile()
        return await self._view(camera)

    async def cameras(self, claims: Claims, site_id: str | None = None) -> list[Record]:
        """The cameras of the caller's jurisdiction (of one site's branch if
        given, which the caller must reach), with live status."""
        branch = claims.site if site_id is None else site_id
        if self.tree.get(branch) is None:
            raise NotFound(f"no site {branch}")
        require_site(self.tree, claims, branch)
        statuses = await self.rooms.state.records("camera")
        return [
            self._merge(c, statuses.get(c["id"]))
            for c in await self.store.all()
            if self.tree.covers(branch, c["site_id"])  # the caller reaches the branch, so all of it
        ]

    async def camera(self, claims: Claims, camera_id: str) -> Record:
        camera = await self._reachable(claims, camera_id)
        return await self._view(camera)

    async def remove(self, claims: Claims, camera_id: str) -> None:
        camera = await self._reachable(claims, camera_id)
        self._check_manager(claims, camera["site_id"])
        lease = await self.rooms.state.get_record("camera-lease", camera_id)
        await self.store.delete(camera_id)
        # The lease holder stops pulling it now, whichever process was asked (not at its next round).
        try:
            await self.rooms.ask(lease["node"] if lease else self.rooms.node_id, "cameras-reconcile")
        except NodeUnreachable as exc:  # a dead holder's lease expires, and no one takes a removed camera
            log.info("camera %s removed; its lease holder did not answer: %s", camera_id, exc)
        await self.rooms.state.delete_record("camera", camera_id)
        await self._announce(self._status_record(camera, "removed", "", None))

    async def _reachable(self, claims: Claims, camera_id: str) -> dict[str, Any]:
        camera = await self.store.get(camera_id)
        if camera is None:
            raise NotFound(f"no camera {camera_id}")
        if not can_reach_site(self.tree, claims, camera["site_id"]):
            raise Forbidden(f"camera {camera_id} is outside your jurisdiction")
        return camera

    def _check_manager(self, claims: Claims, site_id: str) -> None:
        if claims.role not in MANAGER_ROLES:
            raise Forbidden("only an admin or an operator may register or remove cameras")
        require_site(self.tree, claims, site_id)

    async def _view(self, camera: dict[str, Any]) -> Record:
        return self._merge(camera, await self.rooms.state.get_record("camera", camera["id"]))

    @staticmethod
    def _merge(camera: dict[str, Any], status: Record | None) -> Record:
        live = status or {"status": "offline", "since": None, "error": "not pulled by any hub process"}
        return camera | {
            "url": redact(camera["url"]),
            "status": live["status"],
            "since": live.get("since"),
            "error": live.get("error", ""),
            "stream_id": live.get("stream_id"),
            "room_id": standing_room_id(camera["site_id"]),
        }

    # -- who pulls what ----------------------------------------------------------

    async def _reconcile_forever(self) -> None:
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            try:
                await self.reconcile()
            except Unavailable:
                pass  # the pulls go on; the leases are renewed when shared live state is back (a restorer)
            except Exception:  # keep going; Redis may come back
                log.exception("camera reconcile failed")

    async def _act_reconcile(self, _: dict[str, Any]) -> dict[str, Any]:
        await self.reconcile()
        return {}

    async def reconcile(self) -> None:
        """Pull the registered cameras whose lease this process holds or
        wins; stop those removed or whose lease went elsewhere; renew the rest."""
        async with self._reconcile_lock:
            state, node = self.rooms.state, self.rooms.node_id
            registered = {c["id"]: c for c in await self.store.all()}
            for camera_id, pulled in tuple(self.pulled.items()):
                lease = await state.get_record("camera-lease", camera_id)
                camera = registered.get(camera_id)
                if camera is None:
                    await self._stop_pulling(camera_id, "")
                    continue
                if camera["url"] != pulled.camera["url"] or (lease and lease.get("node") != node):
                    await self._stop_pulling(camera_id, "restarting: its url changed or another hub process took it")
                    continue
                pulled.camera = camera
                await state.put_record("camera-lease", camera_id, {"node": node}, ttl=self.lease_seconds)
                status = await state.get_record("camera", camera_id) or pulled.status
                if status is not None:
                    await state.put_record("camera", camera_id, status, ttl=self.lease_seconds)
            for camera_id, camera in registered.items():
                if camera_id in self.pulled:
                    continue
                if await state.claim_record("camera-lease", camera_id, {"node": node}, ttl=self.lease_seconds):
                    await self._start_pulling(camera)

    async def _start_pulling(self, camera: dict[str, Any]) -> None:
        puller = CameraPuller(camera["id"], camera["url"], self, self.options, self.rules.networks.check)
        self.pulled[camera["id"]] = _Pulled(camera, puller)
        await self._set_status(camera, "connecting", "", None)
        puller.start()

    async def _stop_pulling(self, camera_id: str, reason: str) -> None:
        pulled = self.pulled.pop(camera_id)
        pulled.puller.stop()
        if pulled.stream_id is not None:
            await self.rooms.unpublish_stream(pulled.stream_id)
        lease = await self.rooms.state.get_record("camera-lease", camera_id)
        if lease is not None and lease.get("node") == self.rooms.node_id:
            await self.rooms.state.delete_record("camera-lease", camera_id)
        if reason:  # still registered: tell who pulls it no more
            await self._set_status(pulled.camera, "offline", reason, None)
        await pulled.puller.join(timeout=1.0)

    # -- what the pullers report (Link) ---------------------------------------------

    async def online(self, puller: CameraPuller, codec: RTCRtpCodecParameters) -> Feeder:
        pulled = self.pulled.get(puller.camera_id)
        if pulled is None or pulled.puller is not puller:
            puller.stop()
            raise RuntimeError("camera no longer pulled here")
        camera = pulled.camera
        stream, feeder = await self.rooms.publish_local(
            standing_room_id(camera["site_id"]),
            codec,
            puller.request_keyframe,
            STREAM_KIND,
            camera["name"],
            camera["site_id"],
            camera_id=camera["id"],
            transcoded=puller.transcoding,
        )
        pulled.stream_id = stream["id"]
        await self._set_status(camera, "online", "", stream["id"])
        return feeder

    async def offline(self, puller: CameraPuller, error: str) -> None:
        pulled = self.pulled.get(puller.camera_id)
        if pulled is None or pulled.puller is not puller:
            return
        if pulled.stream_id is not None:
            stream_id, pulled.stream_id = pulled.stream_id, None
            await self.rooms.unpublish_stream(stream_id)
        await self._set_status(pulled.camera, "offline", error, None)

    # -- status ------------------------------------------------------------------------

    def _status_record(self, camera: dict[str, Any], status: str, error: str, stream_id: str | None) -> Record:
        record: Record = {
            "id": camera["id"],
            "site_id": camera["site_id"],
            "name": camera["name"],
            "status": status,
            "since": time.time(),
            "error": error,
            "node": self.rooms.node_id,
        }
        if stream_id is not None:
            record["stream_id"] = stream_id
        return record

    async def _set_status(self, camera: dict[str, Any], status: str, error: str, stream_id: str | None) -> None:
        """Keep the live record; publish an event when the status or the error changed."""
        state = self.rooms.state
        old = await state.get_record("camera", camera["id"])
        record = self._status_record(camera, status, error, stream_id)
        if old is not None and old.get("status") == status:
            record["since"] = old.get("since", record["since"])
        await state.put_record("camera", camera["id"], record, ttl=self.lease_seconds)
        if (pulled := self.pulled.get(camera["id"])) is not None:
            pulled.status = record
        if old is None or any(old.get(k) != record.get(k) for k in ("status", "error", "stream_id", "name")):
            await self._announce(record)

    async def _announce(self, record: Record) -> None:
        event = {"type": "camera-status", "camera": record, "to": {"covering": record["site_id"]}}
        await self.rooms.state.emit(event)


def url_rules(settings: Settings) -> UrlRules:
    """Where cameras may be: file:// URLs in media/ of the data directory and
    HUB_CAMERA_PATHS, network ones in HUB_CAMERA_NETWORKS."""
    return UrlRules([settings.data / "media", *settings.camera_paths], CameraNetworks.parse(settings.camera_networks))


async def open_cameras(settings: Settings, rooms: Rooms, db: Database) -> Cameras:
    """The camera service of a hub process; `--cameras FILE` is imported first."""
    if settings.cameras is not None:
        store = CameraStore(db)
        await store.open()
        count = await import_cameras(store, rooms.tree, settings.cameras, url_rules(settings), by="import")
        log.info("registered %d cameras from %s", count, settings.cameras)
    options = PullOptions(
        read_timeout=settings.camera_read_timeout,
        backoff_min=settings.camera_backoff_min,
        backoff_max=settings.camera_backoff_max,
    )
    return Cameras(rooms, db, url_rules(settings), options, settings.camera_lease_seconds)
