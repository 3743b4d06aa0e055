"""Who may see what, at every door: a room-bound token reaches its room and
nothing else (REST and the event socket alike); a monitoring socket forgets
a room once its admissions change; network cameras only where the
administrator lists, no redirects, errors that do not map the network."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from client import bot
from hub.core.livestate import Record
from hub.media.ingest import NOT_A_VIDEO, REFUSED, UNREACHABLE, CameraPuller, IngestError, PullOptions
from hub.workflows.cameras import CameraNetworks

from .conftest import EventSocket, HubProcess, free_port, start_hub, wait_until
from .recording_helpers import call, set_recording

PROBLEM = "application/problem+json"
VILLAGE = "qutancun"  # qutan township, ledu county
NEW_CASE = {
    "title": "宅基地边界纠纷",
    "dispute_type": "land",
    "parties": [{"name": "张三", "role": "applicant", "phone": "139 0000 0000"}],
    "summary": "两户因院墙位置发生争执",
}


@pytest.fixture(scope="module")
def access_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProcess]:
    env = {
        "HUB_CAMERA_NETWORKS": '["127.0.0.1/32"]',  # the test's own servers; nothing else
        "HUB_CAMERA_READ_TIMEOUT": "2",
        "HUB_CAMERA_BACKOFF_MIN": "0.5",
        "HUB_CAMERA_BACKOFF_MAX": "2",
    }
    process = start_hub(tmp_path_factory.mktemp("access"), env=env)
    yield process
    process.stop()


@contextlib.asynccontextmanager
async def sockets(http: aiohttp.ClientSession, hub: HubProcess, *tokens: str) -> AsyncIterator[list[EventSocket]]:
    opened = [await EventSocket.open(http, hub, token) for token in tokens]
    try:
        yield opened
    finally:
        for sock in opened:
            await sock.close()


async def monitor(sock: EventSocket) -> None:
    await sock.ws.send_json({"type": "monitor", "on": True})
    await sock.wait_for("ack")


async def test_room_bound_mediator_gets_no_case_or_site_events(access_hub: HubProcess, http: aiohttp.ClientSession):
    """A mediator token bound to the village's room hears that room, and not
    the village's cases (another mediator changes one) nor its presence."""
    hub = access_hub
    room = f"site-{VILLAGE}"
    bound = hub.sign("m-bound", VILLAGE, "mediator", room=room)
    free = hub.sign("m-free", VILLAGE, "mediator")
    worker = hub.sign("m-worker", VILLAGE, "mediator")
    async with sockets(http, hub, bound) as [bound_ws]:
        await monitor(bound_ws)
        await bound_ws.ws.send_json({"type": "join", "room": room})
        await bound_ws.wait_for("joined")
        async with sockets(http, hub, free) as [free_ws]:  # its connection is a presence change of the village
            await monitor(free_ws)
            status, case = await call(http, "POST", f"{hub.url}/api/cases", worker, json=NEW_CASE)
            assert status == 201, case
            url = f"{hub.url}/api/cases/{case['id']}"
            status, _ = await call(http, "PATCH", url, worker, json={"outcome": "约定下周再谈"})
            assert status == 200
            await free_ws.wait_for("case-updated", 2)  # the control: an unbound mediator of the village hears both
            await free_ws.ws.send_json({"type": "join", "room": room})
            await bound_ws.wait_for("participant-joined")  # its own room still reaches it
            await bound_ws.settle()
            heard = {m["type"] for m in bound_ws.messages}
            assert not {t for t in heard if t.startswith("case-")}, heard
            assert "presence" not in heard, heard
            assert (await call(http, "GET", url, bound))[0] == 403
            assert (await call(http, "GET", f"{hub.url}/api/cases", bound))[0] == 403


async def test_room_bound_token_reaches_no_recording_camera_or_snapshot_beyond_its_room(
    access_hub: HubProcess, http: aiohttp.ClientSession
):
    """A county mediator's token bound to the county's room: the county's
    jurisdiction covers a village's recording, camera and stream, the token
    reaches none of them; an unbound token of the same user does."""
    hub = access_hub
    bound = hub.sign("m-guinan", "guinan", "mediator", room="site-guinan")
    unbound = hub.sign("m-guinan", "guinan", "mediator")
    operator = hub.sign("op-guinan", "guinan", "operator")
    outsider = hub.sign("op-golmud", "golmud", "operator")

    media = hub.data / "media"
    media.mkdir(exist_ok=True)
    (media / "not-video.mp4").write_bytes(b"this is no video\n" * 64)
    body = {"site_id": "rianxiuma", "name": "gate", "url": f"file://{media / 'not-video.mp4'}"}
    status, camera = await call(http, "POST", f"{hub.url}/api/cameras", operator, json=body)
    assert status == 201, camera

    started = await set_recording(http, hub, operator, "site-rianxiuma", True)
    video = bot.SyntheticVideo("vp8", 320, 240, 30, frames=90)
    publisher = await bot.publish(http, hub.url, operator, "site-rianxiuma", [video])
    try:
        stream = publisher.resource_id
        assert (await call(http, "GET", f"{hub.url}/api/streams/{stream}", unbound))[0] == 200
        for path in (
            f"/api/streams/{stream}",
            f"/api/streams/{stream}/snapshot",
            "/api/snapshots",
            "/api/snapshots?site=rianxiuma",
            "/api/alerts",
            "/api/cameras",
            "/api/cameras?site=rianxiuma",
            f"/api/cameras/{camera['id']}",
            "/api/recordings",
            "/api/recordings?site=guinan",
            "/api/sites/guinan",
            "/api/console/status",
        ):
            status, problem = await call(http, "GET", f"{hub.url}{path}", bound)
            assert status == 403 and problem["status"] == 403, (path, status, problem)
        assert (await call(http, "GET", f"{hub.url}/api/sites", bound)) == (200, [])
        assert (await call(http, "GET", f"{hub.url}/api/calls", bound)) == (200, [])
        assert (await call(http, "POST", f"{hub.url}/api/calls", bound, json={}))[0] == 403
        status, cameras = await call(http, "GET", f"{hub.url}/api/cameras?site=rianxiuma", unbound)
        assert status == 200 and [c["id"] for c in cameras] == [camera["id"]]
    finally:
        await wait_until(lambda: video.readyState == "ended", timeout=30)
        await set_recording(http, hub, operator, "site-rianxiuma", False)
        await publisher.close()
    recording = started["recording"]["id"]
    assert (await call(http, "GET", f"{hub.url}/api/recordings/{recording}", unbound))[0] == 200
    for path in (f"/api/recordings/{recording}", f"/api/recordings/{recording}/files/manifest.json"):
        assert (await call(http, "GET", f"{hub.url}{path}", bound))[0] == 403, path

    # Every door answers 403 for a site outside the caller's reach, the camera list too; 404 for no site.
    assert (await call(http, "GET", f"{hub.url}/api/cameras?site=guinan", outsider))[0] == 403
    assert (await call(http, "GET", f"{hub.url}/api/cameras?site=nowhere", outsider))[0] == 404
    # A file that is no video says so, nothing more.
    assert (await offline(http, hub, operator, camera["id"]))["error"] == NOT_A_VIDEO
    assert (await call(http, "DELETE", f"{hub.url}/api/cameras/{camera['id']}", operator))[0] == 204


async def offline(http: aiohttp.ClientSession, hub: HubProcess, token: str, camera_id: str) -> Record:
    """The camera once its puller has tried and given up at least once."""
    deadline = time.monotonic() + 30
    while True:
        status, camera = await call(http, "GET", f"{hub.url}/api/cameras/{camera_id}", token)
        assert status == 200, camera
        if camera["status"] == "offline" or time.monotonic() > deadline:
            assert camera["status"] == "offline", camera
            return camera
        await asyncio.sleep(0.2)


async def test_a_village_monitor_hears_a_training_no_more_once_it_ended(
    access_hub: HubProcess, http: aiohttp.ClientSession
):
    """A training admits the county's branch, so a village's console watches
    its roster; once it ends, the village may not enter and hears nothing
    more of it (the people let go, anyone joining later)."""
    hub = access_hub
    trainer = hub.sign("trainer-ledu", "ledu", "trainer")
    village = hub.sign("op-qutancun", VILLAGE, "operator")
    attendee = hub.sign("t-xinzhuang", "xinzhuang", "terminal")
    async with sockets(http, hub, village, attendee, trainer) as [village_ws, attendee_ws, trainer_ws]:
        await monitor(village_ws)
        body = {"title": "调解法规", "branch": "ledu"}
        status, training = await call(http, "POST", f"{hub.url}/api/trainings", trainer, json=body)
        assert status == 201, training
        room = training["room_id"]
        await attendee_ws.ws.send_json({"type": "join", "room": room})
        await attendee_ws.wait_for("joined")
        joined = await village_ws.wait_for("participant-joined")
        assert joined["room_id"] == room  # while it runs, the village watches it
        await village_ws.settle()
        ended_at = len(village_ws.messages)

        assert (await call(http, "POST", f"{hub.url}/api/trainings/{room}/end", trainer))[0] == 200
        await attendee_ws.wait_for("training-ended")
        await trainer_ws.ws.send_json({"type": "join", "room": room})  # the county still may
        await trainer_ws.wait_for("joined")
        await village_ws.settle()
        after = [m for m in village_ws.messages[ended_at:] if m.get("room_id") == room]
        assert not after, after
        status, problem = await call(http, "GET", f"{hub.url}/api/rooms/{room}", village)
        assert status == 403, problem


async def test_camera_registration_refuses_unlisted_and_own_machine_urls(
    access_hub: HubProcess, hub: HubProcess, http: aiohttp.ClientSession
):
    """Only 127.0.0.1/32 is listed: the metadata service, link-local,
    private ranges, other loopback addresses (v4 or v6, literal or mapped)
    are a clear 400 and store nothing; a hub that lists nothing takes no
    network camera, localhost's Redis port included."""
    operator = access_hub.sign("op-guinan", "guinan", "operator")
    refused = [
        "http://169.254.169.254/latest/meta-data/",
        "rtsp://169.254.10.20/cam",
        "rtsp://[::ffff:169.254.169.254]/cam",
        "rtsp://[fe80::1]/cam",
        "rtsp://10.0.0.5/cam",
        "rtsp://192.168.1.64:554/Streaming/Channels/101",
        "rtsp://172.16.0.9/cam",
        "rtsp://127.0.0.2/cam",
        "http://[::1]:6379/",
        "rtsp://0.0.0.0:6379/",
        "rtsps://[::ffff:127.0.0.2]/cam",
    ]
    for url in refused:
        body = {"site_id": "rianxiuma", "name": "x", "url": url}
        status, problem = await call(http, "POST", f"{access_hub.url}/api/cameras", operator, json=body)
        assert status == 400 and "HUB_CAMERA_NETWORKS" in problem["detail"], (url, status, problem)
    assert (await call(http, "GET", f"{access_hub.url}/api/cameras?site=rianxiuma", operator)) == (200, [])

    unlisted = hub.sign("op-guinan", "guinan", "operator")
    for url in ("http://localhost:6379/", "rtsp://127.0.0.1:8554/cam"):
        body = {"site_id": "rianxiuma", "name": "x", "url": url}
        status, problem = await call(http, "POST", f"{hub.url}/api/cameras", unlisted, json=body)
        assert status == 400 and "network cameras are off" in problem["detail"], (url, status, problem)


def test_camera_networks_admit_own_machine_only_when_listed_as_such():
    """A wide entry covers private and public ranges but not loopback,
    link-local or 0.0.0.0; a listed network inside loopback does admit it;
    host names are resolved (here from /etc/hosts) and every address checked."""
    wide = CameraNetworks.parse(["0.0.0.0/0", "::/0"])
    for host in ("10.0.0.5", "192.168.1.64", "203.0.113.7", "2001:db8::7"):
        wide.check(host)
    for host in ("127.0.0.1", "127.1", "2130706433", "localhost", "169.254.169.254", "::1", "fe80::1", "0.0.0.0"):
        with pytest.raises(ValueError, match="HUB_CAMERA_NETWORKS"):
            wide.check(host)
    with pytest.raises(ValueError, match="HUB_CAMERA_NETWORKS"):
        wide.check("::ffff:127.0.0.1")
    own = CameraNetworks.parse(["127.0.0.0/8", "cam-7.example.org"])
    for host in ("127.0.0.1", "localhost", "127.0.0.2", "::ffff:127.0.0.1"):
        own.check(host)
    with pytest.raises(ValueError, match="HUB_CAMERA_NETWORKS"):
        own.check("10.0.0.5")
    with pytest.raises(ValueError, match="neither a network"):
        CameraNetworks.parse(["10.0.0.0/8", "not a host"])


class Listener:
    """A TCP port that answers like a service that is not a camera (an SSH
    banner, then silence), counting its connections."""

    def __init__(self) -> None:
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.write(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n")
        with contextlib.suppress(ConnectionError):
            await writer.drain()
            await reader.read(65536)
            await asyncio.sleep(3)
        writer.close()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()


async def test_camera_errors_do_not_tell_an_open_port_from_a_closed_one(
    access_hub: HubProcess, http: aiohttp.ClientSession
):
    hub = access_hub
    operator = hub.sign("op-guinan", "guinan", "operator")
    listener = Listener()
    open_port, closed_port = await listener.start(), free_port()
    ids = []
    try:
        for n, url in enumerate(
            (
                f"rtsp://127.0.0.1:{closed_port}/cam",
                f"rtsp://127.0.0.1:{open_port}/cam",
                f"http://127.0.0.1:{closed_port}/cam",
                f"http://127.0.0.1:{open_port}/cam",
            )
        ):
            body = {"site_id": "rianxiuma", "name": f"probe-{n}", "url": url}
            status, camera = await call(http, "POST", f"{hub.url}/api/cameras", operator, json=body)
            assert status == 201, camera
            ids.append(camera["id"])
        errors = [(await offline(http, hub, operator, camera_id))["error"] for camera_id in ids]
        assert listener.connections >= 2  # the hub did talk to the open port
        assert errors == [UNREACHABLE] * 4, errors
    finally:
        for camera_id in ids:
            await call(http, "DELETE", f"{hub.url}/api/cameras/{camera_id}", operator)
        await listener.stop()


@contextlib.asynccontextmanager
async def http_server(host: str, handler: Any) -> AsyncIterator[int]:
    app = web.Application()
    app.router.add_route("*", "/{path:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    try:
        yield int(runner.addresses[0][1])
    finally:
        await runner.cleanup()


async def test_camera_redirect_to_another_host_is_not_followed(access_hub: HubProcess, http: aiohttp.ClientSession):
    """The listed camera answers 302 to another loopback address (127.0.0.2):
    FFmpeg must not go there."""
    hub = access_hub
    operator = hub.sign("op-guinan", "guinan", "operator")
    asked: list[str] = []
    elsewhere: list[str] = []

    async def other_host(request: web.Request) -> web.Response:
        elsewhere.append(request.path)
        return web.Response(status=404)

    async with http_server("127.0.0.2", other_host) as other_port:

        async def camera(request: web.Request) -> web.Response:
            asked.append(request.path)
            raise web.HTTPFound(f"http://127.0.0.2:{other_port}/loop.mp4")

        async with http_server("127.0.0.1", camera) as port:
            body = {"site_id": "rianxiuma", "name": "redirected", "url": f"http://127.0.0.1:{port}/cam.mp4"}
            status, registered = await call(http, "POST", f"{hub.url}/api/cameras", operator, json=body)
            assert status == 201, registered
            try:
                await wait_until(lambda: len(asked) >= 2, timeout=30)  # tried, gave up, tried again
                assert not elsewhere, elsewhere
                assert (await offline(http, hub, operator, registered["id"]))["error"] == UNREACHABLE
            finally:
                await call(http, "DELETE", f"{hub.url}/api/cameras/{registered['id']}", operator)


class _Link:
    async def online(self, puller: CameraPuller, codec: Any) -> Any:
        raise AssertionError("a refused camera never comes online")

    async def offline(self, puller: CameraPuller, error: str) -> None:
        pass


async def test_a_camera_whose_host_is_refused_at_connection_time_is_not_opened():
    """A name may resolve elsewhere after registration: the puller asks
    again before every connection, and a refusal is REFUSED, nothing opened."""
    hosts: list[str] = []

    def refuse(host: str) -> None:
        hosts.append(host)
        raise ValueError("url host cam.example.org resolves to an address HUB_CAMERA_NETWORKS does not list")

    puller = CameraPuller("cam-x", "rtsp://cam.example.org/live", _Link(), PullOptions(), refuse)
    with pytest.raises(IngestError) as raised:
        await asyncio.to_thread(puller._pull)
    assert raised.value.status == REFUSED and str(raised.value) == REFUSED
    assert hosts == ["cam.example.org"]
