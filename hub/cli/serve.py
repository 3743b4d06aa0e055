"""Wiring one hub process: settings -> store, sites, live state, SFU, web app."""

from __future__ import annotations

import asyncio
import gc
import logging
import multiprocessing
import multiprocessing.connection
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from aiohttp import web

from hub.config import DEMO_SITES, Settings
from hub.core.cluster import Cluster
from hub.core.lag import LagProbe
from hub.core.livestate import LiveState, Unavailable, open_live_state
from hub.core.quotas import Limits
from hub.core.rooms import Rooms, session_prefix
from hub.core.sites import SiteTree, load_sites_file
from hub.core.store import Database, SiteStore, open_database, redact_url
from hub.core.tokens import Claims, issue
from hub.media import reader
from hub.media.forward import use_path
from hub.media.ice import use_addresses
from hub.media.router import Router
from hub.monitoring.console import Console
from hub.monitoring.presence import Presence
from hub.monitoring.snapshots import Snapshots
from hub.workflows.cameras import open_cameras
from hub.workflows.cases import Cases
from hub.workflows.dispatch import Dispatch
from hub.workflows.training import Trainings
from recorder.retention import expire_forever
from recorder.service import Recorder
from signaling.app import make_app

log = logging.getLogger("hub")

#: In the data directory: the latest operator link, when the hub's output is not a terminal.
OPERATOR_LINK_FILE = "operator-link.txt"

#: A worker that dies sooner than this after it started is not restarted: it
#: would die again (a bad setting, a port taken); the supervisor stops them all.
RESTART_AFTER_SECONDS = 10.0
#: Seconds workers get to close their sessions after SIGTERM before they are killed.
STOP_SECONDS = 15.0


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aioice").setLevel(logging.WARNING)


async def site_tree(db: Database, settings: Settings) -> SiteTree:
    """The stored tree; `--sites FILE` (or an empty store) imports one first."""
    store = SiteStore(db)
    await store.open()
    tree = await store.site_tree()
    if settings.sites is not None or tree is None:
        tree = load_sites_file(settings.sites or DEMO_SITES)
        await store.replace_sites(tree)
    return tree


@dataclass
class Hub:
    settings: Settings
    rooms: Rooms
    state: LiveState
    app: web.Application


async def build(settings: Settings) -> Hub:
    lag = LagProbe()
    use_addresses(settings.ice_addresses)
    log.info("forwarding path: %s", use_path(settings.forward))
    log.info("relays' pulls are read %s", reader.use_mode(settings.pull_reader))
    db = open_database(settings.database_url)
    tree = await site_tree(db, settings)
    node_id = secrets.token_hex(4)
    state = open_live_state(settings.redis, node_id, settings.node_ttl)
    await state.start()
    router = Router(
        settings.announced_ip,
        settings.viewer_backlog_bytes,
        settings.keyframe_interval,
        settings.ice_servers,
        settings.session_connect_seconds,
        settings.relay_linger_seconds,
        session_prefix(node_id),
    )
    limits = Limits(
        whip_per_user=settings.whip_sessions_per_user,
        whip_per_room=settings.whip_sessions_per_room,
        whep_per_user=settings.whep_sessions_per_user,
        whep_per_room=settings.whep_sessions_per_room,
        rooms_per_site=settings.rooms_per_site,
        empty_room_seconds=settings.empty_room_seconds,
        connect_seconds=settings.session_connect_seconds,
    )
    cluster = None
    if settings.cluster_secret:
        cluster = Cluster(settings.cluster_secret, node_id, settings.upstream, settings.session_connect_seconds)
    rooms = Rooms(tree, state, router, node_id=node_id, node_url=settings.node_url, limits=limits, cluster=cluster)
    recorder = Recorder(rooms, settings.recordings_path, db, settings.segment_seconds, settings.record_mediation_rooms)
    await recorder.start()
    router.on_view_ended = recorder.audit.view_ended
    snapshots = Snapshots(rooms, settings.snapshot_seconds)
    await snapshots.start()
    console = Console(rooms, db)
    await console.start()
    presence = Presence(state, node_id, tree)
    dispatch = Dispatch(rooms, db, settings.call_ring_seconds)
    await dispatch.start()
    trainings = Trainings(rooms, db)
    await trainings.start()
    cases = Cases(rooms, db)
    await cases.start()
    cameras = await open_cameras(settings, rooms, db)
    await cameras.start()
    app = make_app(
        rooms,
        settings,
        settings.keys(),
        recorder,
        console_service=console,
        presence=presence,
        dispatch_service=dispatch,
        training_service=trainings,
        cases_service=cases,
        snapshots=snapshots,
        camera_service=cameras,
        database=db,
        lag_probe=lag,
    )

    # Participants, streams and presence of a process that died linger in shared state until swept.
    sweeps = [rooms.sweep, presence.sweep]
    sweeper = asyncio.create_task(_sweep_forever(state, sweeps, settings.node_ttl)) if settings.redis else None
    expiry = asyncio.create_task(rooms.expire_forever())
    retention = None
    if settings.retention_days is not None:
        retention = asyncio.create_task(
            expire_forever(
                recorder.catalogue,
                recorder.root,
                settings.retention_days,
                settings.retention_check_seconds,
                rooms.node_url,
            )
        )

    async def shutdown(_: web.Application) -> None:
        if sweeper is not None:
            sweeper.cancel()
        expiry.cancel()
        if retention is not None:
            retention.cancel()
        await dispatch.close()
        await trainings.close()
        await cases.close()
        await cameras.close()
        await snapshots.close()
        await recorder.close()
        await rooms.close()
        await db.close()  # after rooms: the views it ends write their audit rows' ends
        await state.close()
        await lag.stop()

    app.on_shutdown.append(shutdown)
    # The first full garbage collection after start-up walks every object the
    # imports made (aiortc, PyAV, OpenCV...): measured 177 ms of a stalled loop
    # under the first burst of requests. Collect now, before serving, and keep
    # those objects out of every later collection.
    gc.collect()
    gc.freeze()
    lag.start()  # from here on the loop serves: start-up's own work is not lag
    return Hub(settings, rooms, state, app)


async def _sweep_forever(state: LiveState, sweeps: list[Callable[[], Awaitable[int]]], period: float) -> None:
    while True:
        await asyncio.sleep(period)
        # Not while this process is cut off or re-registering: the others' heartbeats
        # may not be back yet, and their records are theirs to restore.
        if not state.available:
            continue
        for sweep in sweeps:
            try:
                if swept := await sweep():
                    log.info("swept %d records of hub processes that stopped", swept)
            except Unavailable:
                break  # noticed and logged by the live state; swept again once it is back
            except Exception:
                log.exception("sweep failed")


def operator_link(settings: Settings, tree: SiteTree) -> str:
    root = next(iter(tree))
    token = issue(settings.keys(), Claims(user="duty-operator", site=root.id, role="operator", name="值班员"))
    return f"{settings.base_url}/?token={token}"


def announce(settings: Settings, link: str, out: TextIO) -> None:
    """Say where the hub listens and hand over the operator link. The link grants the whole
    province for 12 h: it goes to a terminal, where someone is there to open it, but never
    into captured output (a log file, journald, `docker-compose logs`), which others read
    long after; there it goes to a file only the hub's user can read."""
    if out.isatty():
        print(f"Hub ready on {settings.base_url}\nOperator link (valid 12 h):\n  {link}", file=out, flush=True)
        return
    path = write_private(settings.data / OPERATOR_LINK_FILE, link + "\n")
    print(f"Hub ready on {settings.base_url}\nOperator link (valid 12 h) in {path.resolve()}", file=out, flush=True)


def write_private(path: Path, text: str) -> Path:
    """Replace a file with one only its owner can read or write (mode 0600 from creation on)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # whatever the umask
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
    return path


def serve(settings: Settings) -> None:
    async def start() -> web.Application:
        hub = await build(settings)
        log.info(
            "hub node %s: %d sites, live state in %s, durable records in %s",
            hub.rooms.node_id,
            len(hub.rooms.tree),
            "redis" if settings.redis else "memory",
            redact_url(settings.database_url),
        )
        if settings.worker <= 1:  # one link for the whole set of workers
            announce(settings, operator_link(settings, hub.rooms.tree), sys.stdout)
        return hub.app

    backlog = settings.listen_backlog
    if not settings.worker:
        web.run_app(start(), host=settings.host, port=settings.port, backlog=backlog, print=None, access_log=None)
        return
    # A worker shares the HTTP port with its siblings (the kernel spreads
    # connections over them) and answers alone on port + worker.
    own = socket.create_server((settings.host, settings.port + settings.worker))
    web.run_app(
        start(),
        host=settings.host,
        port=settings.port,
        reuse_port=True,
        sock=[own],
        backlog=backlog,
        print=None,
        access_log=None,
    )


def _run_worker(settings: Settings) -> None:
    configure_logging()
    serve(settings)


async def _import_sites(settings: Settings) -> None:
    db = open_database(settings.database_url)
    try:
        await site_tree(db, settings)
    finally:
        await db.close()


def supervise(settings: Settings) -> int:
    """Run `settings.workers` hub processes on one port and keep them running:
    a worker that dies is restarted, unless it died within RESTART_AFTER_SECONDS
    of starting, when all are stopped and the exit status is 1. SIGTERM or
    SIGINT stops them all (each closes its sessions) and exits 0."""
    if settings.redis is None:
        print(
            "error: --workers needs --redis: the workers are separate processes and share rooms,"
            " participants and streams only through Redis",
            file=sys.stderr,
        )
        return 2
    # Once, here, rather than racing in every worker: the site import and the signing keys.
    asyncio.run(_import_sites(settings))
    settings.keys()
    ctx = multiprocessing.get_context("spawn")  # nothing of this process's state leaks into a worker
    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        log.info("supervisor: %s, stopping the workers", signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    workers: dict[int, tuple[multiprocessing.process.BaseProcess, float]] = {}

    def start(worker: int) -> None:
        # The site file was imported above; only the first worker imports a camera file.
        changes = {"workers": 1, "worker": worker, "sites": None} | ({"cameras": None} if worker > 1 else {})
        process = ctx.Process(target=_run_worker, args=(settings.model_copy(update=changes),), name=f"hub-{worker}")
        process.start()
        workers[worker] = (process, time.monotonic())
        log.info("supervisor: worker %d is pid %s, also on port %d", worker, process.pid, settings.port + worker)

    for worker in range(1, settings.workers + 1):
        start(worker)
    status = 0
    while not stopping:
        multiprocessing.connection.wait([p.sentinel for p, _ in workers.values()], timeout=1)
        for worker, (process, started) in tuple(workers.items()):
            if stopping or process.exitcode is None:
                continue
            lived = time.monotonic() - started
            if lived < RESTART_AFTER_SECONDS:
                log.error(
                    "supervisor: worker %d exited (%s) %.1f s after starting; stopping", worker, process.exitcode, lived
                )
                status, stopping = 1, True
                break
            log.warning("supervisor: worker %d exited (%s); starting it again", worker, process.exitcode)
            start(worker)
    for process, _ in workers.values():
        if process.is_alive():
            process.terminate()
    deadline = time.monotonic() + STOP_SECONDS
    for process, _ in workers.values():
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join()
    return status
