"""The console's API against a real hub process: branch status and rollups,
presence of event sockets, jurisdiction, saved wall layouts."""

from __future__ import annotations

import asyncio
import fractions
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import av
import numpy as np
import pytest

from client import bot

from .conftest import HubProcess, free_port, start_hub


@pytest.fixture(scope="module")
def console_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProcess]:
    """A hub of its own: status counts start from nothing."""
    # Snapshots every second: a camera's health alert comes within seconds.
    env = {
        "HUB_SNAPSHOT_SECONDS": "1",
        "HUB_CAMERA_READ_TIMEOUT": "2",
        "HUB_CAMERA_BACKOFF_MAX": "2",
        "HUB_CAMERA_NETWORKS": '["127.0.0.1/32"]',
    }
    process = start_hub(tmp_path_factory.mktemp("console-hub"), env=env)
    yield process
    process.stop()
    # Cameras, snapshots and event followers all stop on SIGTERM: a follower
    # that swallowed its own cancellation once kept this hub up until killed.
    assert process.proc.returncode == 0, f"hub did not stop by itself: {process.proc.returncode}"


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def status(http: aiohttp.ClientSession, hub: HubProcess, token: str, site: str = "") -> dict[str, Any]:
    query = f"?site={site}" if site else ""
    async with http.get(f"{hub.url}/api/console/status{query}", headers=auth(token)) as r:
        assert r.status == 200, await r.text()
        body = await r.json()
    return {row["id"]: row for row in body["sites"]}


async def next_of(ws: aiohttp.ClientWebSocketResponse, kind: str, site: str | None = None) -> dict[str, Any]:
    """The next message of a type (of a site, if given), skipping others (room activity, other presence)."""
    while True:
        message = await ws.receive_json(timeout=10)
        if message["type"] == kind and site in (None, message.get("site_id")):
            return message


async def test_status_rolls_up_a_joined_participant_and_a_published_stream(
    console_hub: HubProcess, http: aiohttp.ClientSession
) -> None:
    operator = console_hub.sign("op-ledu", "ledu", "operator")
    terminal = console_hub.sign("t-qutancun", "qutancun", "terminal")
    publisher = console_hub.sign("t-xinzhuang", "xinzhuang", "terminal")

    before = await status(http, console_hub, operator)
    assert set(before) == {"ledu", "chengtai", "taizi", "hongzhuang", "qutan", "qutancun", "xinzhuang"}
    assert before["ledu"]["rollup"]["villages"] == 4 and before["ledu"]["rollup"]["villages_online"] == 0

    async with http.ws_connect(f"{console_hub.url}/ws?token={terminal}") as ws:
        await next_of(ws, "hello")
        await ws.send_json({"type": "join", "room": "site-qutancun"})
        await next_of(ws, "joined")
        video = bot.SyntheticVideo("vp8", 160, 120, 10)
        session = await asyncio.wait_for(bot.publish(http, console_hub.url, publisher, "site-xinzhuang", [video]), 20)
        try:
            now = await status(http, console_hub, operator)
        finally:
            await session.close()
        after = await status(http, console_hub, operator)

    # The village whose terminal joined: one connection, its room in session with one participant.
    qutancun = now["qutancun"]
    assert qutancun["online"] and qutancun["in_session"]
    assert qutancun["connections"] == {"terminal": 1} and qutancun["terminals"] == 1
    assert [(r["id"], r["participants"]) for r in qutancun["rooms"]] == [("site-qutancun", 1)]
    # The village that publishes over WHIP alone: no socket, but in session with a live stream.
    xinzhuang = now["xinzhuang"]
    assert xinzhuang["online"] and xinzhuang["terminals"] == 0
    assert [s["id"] for s in xinzhuang["streams"]] == [session.resource_id]
    # Rollups: the township holding both, the county, and the township holding neither.
    qutan = now["qutan"]["rollup"]
    assert (qutan["villages"], qutan["villages_online"], qutan["sites_in_session"], qutan["streams"]) == (2, 2, 2, 1)
    ledu = now["ledu"]["rollup"]
    assert (ledu["villages"], ledu["villages_online"], ledu["sites_in_session"]) == (4, 2, 2)
    assert (ledu["rooms_in_session"], ledu["participants"], ledu["streams"], ledu["terminals"]) == (2, 2, 1, 1)
    assert now["chengtai"]["rollup"]["villages_online"] == 0 and not now["taizi"]["online"]
    # Once the stream ended the publisher's site is idle again.
    assert after["xinzhuang"]["streams"] == [] and not after["xinzhuang"]["in_session"]


def write_video(path: Path, picture: Callable[[int], np.ndarray], frames: int = 30) -> None:
    """A 2 s H.264 file of the given pictures (320x240, 15 fps) for a file camera."""
    path.parent.mkdir(exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=15)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        stream.options = {"g": "15", "tune": "zerolatency"}
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(picture(i), format="rgb24")
            frame.pts, frame.time_base = i, fractions.Fraction(1, 15)
            out.mux(stream.encode(frame.reformat(format="yuv420p")))
        out.mux(stream.encode(None))


async def test_status_counts_cameras_online_offline_and_in_alarm(
    console_hub: HubProcess, http: aiohttp.ClientSession
) -> None:
    """Real cameras pulled by the hub: a moving picture, a black one (a health
    alert) and one whose RTSP server is not there."""
    operator = console_hub.sign("op-chengtai", "chengtai", "operator")
    write_video(console_hub.data / "media" / "pattern.mp4", lambda i: bot.pattern_image(320, 240, i))
    write_video(console_hub.data / "media" / "black.mp4", lambda i: np.zeros((240, 320, 3), np.uint8))
    cameras = {
        "pattern": f"file://{console_hub.data}/media/pattern.mp4",
        "black": f"file://{console_hub.data}/media/black.mp4",
        "gone": f"rtsp://127.0.0.1:{free_port()}/none",
    }
    ids = {}
    for name, url in cameras.items():
        body = {"site_id": "taizi", "name": name, "url": url}
        async with http.post(f"{console_hub.url}/api/cameras", json=body, headers=auth(operator)) as r:
            assert r.status == 201, await r.text()
            ids[name] = (await r.json())["id"]
    try:
        latest: dict[str, Any] = {}

        async def settled() -> bool:
            latest.update(await status(http, console_hub, operator))
            rollup = latest["chengtai"]["rollup"]
            return (rollup["cameras_online"], rollup["cameras_offline"], rollup["cameras_alarm"]) == (2, 1, 1)

        deadline = time.monotonic() + 40
        while not await settled():
            assert time.monotonic() < deadline, latest.get("taizi")
            await asyncio.sleep(0.5)
        taizi = latest["taizi"]
        by_name = {c["name"]: c for c in taizi["cameras"]}
        assert by_name["black"]["alarm"] and not by_name["pattern"]["alarm"], by_name
        assert by_name["gone"]["status"] == "offline" and by_name["gone"]["stream_id"] is None
        assert by_name["pattern"]["stream_id"] in {s["id"] for s in taizi["streams"]}
        assert taizi["alerts"] >= 1 and latest["chengtai"]["rollup"]["cameras"] == 3
        assert latest["chengtai"]["rollup"]["alerts"] == taizi["alerts"]
    finally:
        for camera_id in ids.values():
            async with http.delete(f"{console_hub.url}/api/cameras/{camera_id}", headers=auth(operator)) as r:
                assert r.status == 204


async def test_presence_follows_the_event_socket(console_hub: HubProcess, http: aiohttp.ClientSession) -> None:
    operator = console_hub.sign("op-guinan", "guinan", "operator")
    outsider = console_hub.sign("op-chengdong", "chengdong", "operator")
    terminal = console_hub.sign("t-shangzhai", "shangzhai", "terminal")
    async with (
        http.ws_connect(f"{console_hub.url}/ws?token={operator}") as console,
        http.ws_connect(f"{console_hub.url}/ws?token={outsider}") as other,
    ):
        for ws in (console, other):
            await next_of(ws, "hello")
            await ws.send_json({"type": "monitor", "on": True})
            assert (await next_of(ws, "ack"))["of"] == "monitor"
        async with http.ws_connect(f"{console_hub.url}/ws?token={terminal}") as ws:
            await next_of(ws, "hello")
            event = await next_of(console, "presence")
            assert (event["site_id"], event["online"]) == ("shangzhai", 1)
            assert (await status(http, console_hub, operator))["shangzhai"]["connections"] == {"terminal": 1}
            # Monitoring shows the room activity of the jurisdiction without joining.
            await ws.send_json({"type": "join", "room": "site-shangzhai"})
            joined = await next_of(console, "participant-joined")
            assert joined["room_id"] == "site-shangzhai" and joined["participant"]["user"] == "t-shangzhai"
        # Leaving the room comes first, then the site goes offline.
        assert (await next_of(console, "participant-left"))["room_id"] == "site-shangzhai"
        event = await next_of(console, "presence")
        assert (event["site_id"], event["online"]) == ("shangzhai", 0)
        row = (await status(http, console_hub, operator))["shangzhai"]
        assert row["connections"] == {} and not row["online"]
        # Another county's operator heard nothing of it: the next thing it hears is its own pong.
        await other.send_json({"type": "ping"})
        message = await other.receive_json(timeout=5)
        assert message["type"] == "pong", message


async def test_presence_of_a_killed_hub_process_is_swept(
    tmp_path: Path, redis_url: str, http: aiohttp.ClientSession
) -> None:
    """Two processes share presence through Redis; the connections of one that
    dies without a goodbye leave the status once its heartbeat expires."""
    a = start_hub(tmp_path, "--redis", redis_url, env={"HUB_NODE_TTL": "2"})
    b = start_hub(tmp_path, "--redis", redis_url, env={"HUB_NODE_TTL": "2"})
    try:
        operator = b.sign("op-delingha", "delingha", "operator")
        terminal = a.sign("t-hedong", "hedong", "terminal")
        async with http.ws_connect(f"{b.url}/ws?token={operator}") as console:
            await next_of(console, "hello")
            await console.send_json({"type": "monitor", "on": True})
            await next_of(console, "ack")
            ws = await http.ws_connect(f"{a.url}/ws?token={terminal}")
            await next_of(ws, "hello")
            # Presence on a reaches b's monitoring socket and b's status (the
            # operator's own presence, through Redis, may come first: skipped).
            assert (await next_of(console, "presence", "hedong"))["online"] == 1
            assert (await status(http, b, operator))["hedong"]["connections"] == {"terminal": 1}
            a.proc.kill()  # SIGKILL: the socket's record stays behind in Redis
            event = await next_of(console, "presence", "hedong")  # within 10 s: a node TTL and a sweep
            assert (event["site_id"], event["online"]) == ("hedong", 0)
            assert (await status(http, b, operator))["hedong"]["connections"] == {}
            await ws.close()
    finally:
        a.stop()
        b.stop()


async def test_another_countys_branch_is_forbidden(console_hub: HubProcess, http: aiohttp.ClientSession) -> None:
    guinan = console_hub.sign("op-guinan", "guinan", "operator")
    async with http.get(f"{console_hub.url}/api/console/status?site=ledu", headers=auth(guinan)) as r:
        assert r.status == 403 and r.content_type == "application/problem+json"
    async with http.get(f"{console_hub.url}/api/console/status?site=nowhere", headers=auth(guinan)) as r:
        assert r.status == 404
    async with http.get(f"{console_hub.url}/api/console/status") as r:
        assert r.status == 401
    # Default: the caller's own branch, nothing above or beside it.
    assert set(await status(http, console_hub, guinan)) == {"guinan", "guomaying", "rianxiuma", "shangzhai"}
    assert set(await status(http, console_hub, guinan, "guomaying")) == {"guomaying", "rianxiuma", "shangzhai"}


LAYOUTS = {
    "layouts": [
        {"name": "值班 4 画面", "grid": 4, "panes": [{"site_id": "rianxiuma"}, None, {"stream_id": "s-1"}]},
        {
            "name": "patrol",
            "grid": 9,
            "panes": [],
            "patrol": {"feeds": [{"camera_id": "cam-1"}, {"site_id": "shangzhai"}], "seconds": 15},
        },
    ],
    "current": "patrol",
}


BAD_LAYOUTS = [
    {"layouts": [{"name": "x", "grid": 5, "panes": []}]},  # not a square
    {"layouts": [{"name": "x", "grid": 81, "panes": []}]},  # above 64
    {"layouts": [{"name": "x", "grid": 1, "panes": [None, None]}]},  # more panes than the grid
    {"layouts": [{"name": "x", "grid": 4, "panes": [{"site_id": "a", "stream_id": "b"}]}]},  # two sources
    {"layouts": [{"name": "x", "grid": 4, "panes": [{}]}]},  # no source
    {"layouts": [{"name": "x", "grid": 4, "panes": [], "colour": "red"}]},  # unknown field
    {"layouts": [{"name": "x" * 65, "grid": 4, "panes": []}]},
    {"layouts": [{"name": "x", "grid": 4, "patrol": {"feeds": [], "seconds": 0}}]},
    {"layouts": [{"name": "x", "grid": 4}, {"name": "x", "grid": 9}]},  # duplicate names
    {"layouts": [{"name": "x", "grid": 4}], "current": "y"},  # current must exist
    {"layouts": [{"name": f"n{i}", "grid": 1} for i in range(51)]},
    [1, 2],
]


async def test_layouts_round_trip_and_reject_bad_input(console_hub: HubProcess, http: aiohttp.ClientSession) -> None:
    url = f"{console_hub.url}/api/console/layouts"
    me = auth(console_hub.sign("op-hainan", "hainan", "operator"))
    async with http.put(url, json=LAYOUTS, headers=me) as r:
        assert r.status == 200, await r.text()
    async with http.get(url, headers=me) as r:
        assert await r.json() == LAYOUTS
    for bad in BAD_LAYOUTS:
        async with http.put(url, json=bad, headers=me) as r:
            assert r.status == 400 and r.content_type == "application/problem+json", (bad, await r.text())
    async with http.put(url, data=aiohttp.StringPayload("{not json", content_type="application/json"), headers=me) as r:
        assert r.status == 400
    async with http.get(url, headers=me) as r:
        assert await r.json() == LAYOUTS  # nothing changed
    # Layouts are the user's own.
    async with http.get(url, headers=auth(console_hub.sign("op-haixi", "haixi", "operator"))) as r:
        assert await r.json() == {"layouts": []}
