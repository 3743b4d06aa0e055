"""python -m hub serve | token | sites | verify | cameras | db | bot"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from hub.config import Settings
from hub.core.sites import SiteTree, SiteTreeError
from hub.core.store import Database, DatabaseError, open_database, redact_url
from hub.core.tokens import DEFAULT_TTL, ROLES, Claims, KeyringError, issue

T = TypeVar("T")


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {k: v for k, v in vars(args).items() if k in Settings.model_fields and v is not None}
    return Settings(**overrides)


def _with_database(settings: Settings, work: Callable[[Database], Awaitable[T]]) -> T:
    """Run `work` on the data directory's database, then close it."""

    async def run() -> T:
        db = open_database(settings.database_url)
        try:
            return await work(db)
        finally:
            await db.close()

    return asyncio.run(run())


def _site_tree(settings: Settings) -> SiteTree:
    from hub.cli.serve import site_tree

    return _with_database(settings, lambda db: site_tree(db, settings))


def cmd_serve(args: argparse.Namespace) -> int:
    from hub.cli.serve import configure_logging, serve, supervise

    configure_logging()
    settings = _settings(args)
    try:
        settings.keys()
    except KeyringError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if settings.workers > 1:
        return supervise(settings)
    serve(settings)
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    settings = _settings(args)
    tree = _site_tree(settings)
    if args.department is not None:
        department = tree.department(args.department)
        if department is None:
            print(f"error: no department {args.department!r} (see: python -m hub sites)", file=sys.stderr)
            return 2
        if args.site not in (None, department.site_id):
            beside = department.site_id
            print(f"error: department {department.id} sits beside {beside}, not {args.site}", file=sys.stderr)
            return 2
        # A department user's home is its department: it reaches no site (hub/core/access.py).
        args.site = department.id
    elif args.site is None:
        print("error: give --site, or --department for a department user", file=sys.stderr)
        return 2
    elif tree.get(args.site) is None:
        print(f"error: no site {args.site!r} (see: python -m hub sites)", file=sys.stderr)
        return 2
    if (
        args.room
        and tree.site_of_room(args.room) is not None
        and not tree.covers(args.site, tree.site_of_room(args.room).id)
    ):
        print(f"error: room {args.room} is outside site {args.site}'s jurisdiction", file=sys.stderr)
        return 2
    try:
        claims = Claims(
            user=args.user, site=args.site, role=args.role, room=args.room, name=args.name, department=args.department
        )
        print(issue(settings.keys(), claims, args.ttl))
    except ValueError as exc:  # KeyringError too
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_sites(args: argparse.Namespace) -> int:
    tree = _site_tree(_settings(args))
    if args.json:
        print(
            json.dumps(
                [
                    {"id": s.id, "name": s.name, "level": s.level, "parent": s.parent}
                    | ({"departments": [d.to_json() for d in ds]} if (ds := tree.departments(s.id)) else {})
                    for s in tree
                ],
                ensure_ascii=False,
                indent=1,
            )
        )
        return 0
    depth = {}
    for site in tree.jurisdiction(next(iter(tree)).id):
        depth[site.id] = depth[site.parent] + 1 if site.parent else 0
        print(f"{'  ' * depth[site.id]}{site.id:<{24 - 2 * depth[site.id]}} {site.level:<10} {site.name}")
        for department in tree.departments(site.id):
            indent = "  " * depth[site.id] + "+ "
            print(f"{indent}{department.id:<{24 - len(indent)}} {department.kind:<10} {department.name}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from recorder.catalogue import Catalogue
    from recorder.manifest import read_manifest, verify

    settings = _settings(args)

    async def row_of(db: Database) -> dict[str, Any] | None:
        catalogue = Catalogue(db)
        await catalogue.open()
        return await catalogue.get(args.recording)

    row = _with_database(settings, row_of)
    folder = settings.recordings_path / args.recording
    if row is None or not folder.is_dir():
        print(f"error: no recording {args.recording} in {settings.data}", file=sys.stderr)
        return 2
    verdict = verify(folder, read_manifest(folder), row["chain_head"] or None)
    if verdict.intact:
        print(f"intact: {verdict.segments} segments, hash chain unbroken")
        return 0
    for path in verdict.changed:
        print(f"changed: {path}")
    for path in verdict.missing:
        print(f"missing: {path}")
    for path, reason in verdict.unplayable.items():
        print(f"unplayable: {path} ({reason})")
    if verdict.chain_broken:
        print("hash chain broken: the manifest does not match the catalogue or its own links")
    return 1


def cmd_cameras(args: argparse.Namespace) -> int:
    from hub.cli.serve import site_tree
    from hub.workflows.cameras import CameraStore, import_cameras, redact, url_rules

    settings = _settings(args)
    if args.action == "import" and args.file is None:
        print("error: cameras import needs a FILE", file=sys.stderr)
        return 2

    async def run(db: Database) -> int:
        tree = await site_tree(db, settings)
        store = CameraStore(db)
        await store.open()
        if args.action == "import":
            try:
                count = await import_cameras(store, tree, args.file, url_rules(settings), by="import")
            except ValueError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            print(f"registered {count} cameras (running hub processes pick them up within a lease period)")
            return 0
        for camera in await store.all():
            print(f"{camera['id']:<20} {camera['site_id']:<16} {camera['name']:<24} {redact(camera['url'])}")
        return 0

    return _with_database(settings, run)


def cmd_db(args: argparse.Namespace) -> int:
    from hub.cli.db import copy, upgrade

    if args.action == "upgrade":
        settings = _settings(args)

        async def run(db: Database) -> int:
            ran = await upgrade(db)
            versions = await db.versions()
            for feature, steps in ran.items():
                print(f"{feature:<12} version {versions.get(feature, 0)}" + (f" ({steps} new)" if steps else ""))
            return 0

        return _with_database(settings, run)

    if not args.source or not args.target:
        print("error: db copy needs --from URL and --to URL", file=sys.stderr)
        return 2

    async def run_copy() -> int:
        source, target = open_database(args.source), open_database(args.target)
        try:
            copied = await copy(source, target)
        finally:
            await source.close()
            await target.close()
        for table, rows in copied.items():
            print(f"{table:<20} {rows} rows")
        print(f"copied {sum(copied.values())} rows from {redact_url(args.source)} to {redact_url(args.target)}")
        return 0

    return asyncio.run(run_copy())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hub", description="Linked governance video hub")
    sub = parser.add_subparsers(dest="command", required=True)

    def data_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data", type=Path, help="data directory: database, secret, media (HUB_DATA)")
        p.add_argument(
            "--database",
            help="durable records: sqlite:///PATH or postgresql://user:pass@host/name"
            " (HUB_DATABASE; default DATA/hub.sqlite3)",
        )
        p.add_argument("--sites", type=Path, help="import this site file (JSON list) first (HUB_SITES)")

    def key_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--secret-file",
            type=Path,
            help="token signing keys, one 'ID SECRET' a line, the first signs (HUB_SECRET_FILE;"
            " default: the data directory's secret.key)",
        )

    def camera_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--camera-path",
            dest="camera_paths",
            action="append",
            type=Path,
            help="a directory file:// camera URLs may point into besides the data directory (HUB_CAMERA_PATHS)",
        )
        p.add_argument(
            "--camera-network",
            dest="camera_networks",
            action="append",
            help="a network (CIDR) or host name network cameras may be at; repeat for more (HUB_CAMERA_NETWORKS)",
        )

    serve = sub.add_parser("serve", help="run the hub")
    serve.add_argument("--host", help="HTTP address (HUB_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="HTTP port (HUB_PORT, default 8080)")
    serve.add_argument("--redis", help="share live state through Redis, e.g. redis://127.0.0.1:6379/0 (HUB_REDIS)")
    serve.add_argument(
        "--workers",
        type=int,
        help="run this many hub processes on one HTTP port, sharing --redis (HUB_WORKERS, default 1)",
    )
    serve.add_argument(
        "--ice-address",
        dest="ice_addresses",
        action="append",
        help="local address for ICE host candidates; repeat for more (HUB_ICE_ADDRESSES)",
    )
    serve.add_argument("--announced-ip", help="public address written into ICE candidates (HUB_ANNOUNCED_IP)")
    serve.add_argument("--public-url", help="URL users reach this hub at, for printed links (HUB_PUBLIC_URL)")
    serve.add_argument("--cameras", type=Path, help="register the cameras of this JSON file first (HUB_CAMERAS)")
    camera_flags(serve)
    key_flags(serve)
    data_flags(serve)
    serve.set_defaults(func=cmd_serve)

    token = sub.add_parser("token", help="print a bearer token")
    token.add_argument("--user", required=True)
    token.add_argument("--site", help="home site id: the user reaches it and all below it")
    token.add_argument(
        "--department",
        help="a department user: reaches only its department's room and what it is invited or referred to",
    )
    token.add_argument("--role", required=True, choices=ROLES)
    token.add_argument("--room", help="bind the token to one room (required for guests)")
    token.add_argument("--name", help="display name")
    token.add_argument("--ttl", type=int, default=DEFAULT_TTL, help="seconds of validity (default 12 h)")
    key_flags(token)
    data_flags(token)
    token.set_defaults(func=cmd_token)

    sites = sub.add_parser("sites", help="print the site tree")
    sites.add_argument(
        "--json", action="store_true", help='a JSON list of {"id", "name", "level", "parent", "departments"?}'
    )
    data_flags(sites)
    sites.set_defaults(func=cmd_sites)

    verify = sub.add_parser("verify", help="recompute a recording's hashes: intact, or what changed (exit 1)")
    verify.add_argument("recording", help="recording id, e.g. rec-20261125-130000-a1b2c3")
    data_flags(verify)
    verify.set_defaults(func=cmd_verify)

    cameras = sub.add_parser("cameras", help="register cameras from a JSON file, or list them")
    cameras.add_argument("action", choices=("import", "list"))
    cameras.add_argument("file", nargs="?", type=Path, help='JSON list of {"site_id", "name", "url", "id"?}')
    camera_flags(cameras)
    data_flags(cameras)
    cameras.set_defaults(func=cmd_cameras)

    db = sub.add_parser("db", help="upgrade a database's schema, or copy every record into another database")
    db.add_argument("action", choices=("upgrade", "copy"))
    db.add_argument("--from", dest="source", help="db copy: the database to read (sqlite:///PATH, postgresql://...)")
    db.add_argument("--to", dest="target", help="db copy: the empty database to fill")
    data_flags(db)
    db.set_defaults(func=cmd_db)

    from hub.cli.bot import add_bot_parser

    add_bot_parser(sub)

    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (SiteTreeError, DatabaseError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
