"""Training broadcast: one presenter, 21 viewing Python clients at three
levels of a county's branch, a raised hand promoted to speaker and returned
to watching, and the attendance the hub kept of it all."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import expect

from client import bot
from hub.config import Settings
from hub.core.store import SQLiteDatabase
from hub.core.tokens import Claims, issue
from hub.workflows.training import attendance_by_site

from .browser import assert_playing, chromium, screen_text
from .conftest import HubProcess, start_hub, wait_until
from .test_browser_room import CJK, join, new_page
from .test_room_api import PROBLEM, Socket, auth

BRANCH = "ledu"  # county -> chengtai, qutan (townships) -> taizi, hongzhuang, qutancun, xinzhuang (villages)
VIEWER_SITES = ["ledu", "chengtai", "qutan", "taizi", "hongzhuang", "qutancun", "xinzhuang"]
VIEWERS = 21


def tokens(hub: HubProcess, people: dict[str, tuple[str, str]]) -> dict[str, str]:
    """Tokens signed with the hub's keys in this process: 20-odd CLI runs would take most of a minute."""
    keys = Settings(data=hub.data).keys()
    return {user: issue(keys, Claims(user=user, site=site, role=role)) for user, (site, role) in people.items()}


class Drained:
    """An event socket read all the time, so that the hub's heartbeat pings
    are answered while the test is busy with media for longer than the
    heartbeat; `Socket` reads what arrived from the queue."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self._ws:
            if message.type == aiohttp.WSMsgType.TEXT:
                self._queue.put_nowait(message.data)

    async def receive_str(self) -> str:
        return await self._queue.get()

    async def send_str(self, data: str) -> None:
        await self._ws.send_str(data)


@asynccontextmanager
async def socket(http: aiohttp.ClientSession, hub: HubProcess, token: str) -> AsyncIterator[Socket]:
    async with http.ws_connect(f"{hub.url}/ws", headers=auth(token)) as ws:
        drained = Drained(ws)
        try:
            sock = Socket(drained)  # type: ignore[arg-type]
            await sock.next("hello")
            yield sock
        finally:
            drained.reader.cancel()


async def steady_delivery(track: bot.EncodedTrack, logs: list[bot.TrackLog], seconds: float = 3.0) -> list[float]:
    """Once every viewer has had a keyframe: the share of the frames sent over
    the next `seconds` that each received (the burst of 20-odd handshakes
    before it is not what a broadcast is judged by); and every frame any
    viewer received is byte for byte one that was sent."""
    await wait_until(lambda: all(any(f.keyframe for f in log.frames) for log in logs), 30)
    since = time.monotonic() + 0.5
    await asyncio.sleep(seconds + 0.5)
    expected = {k for k, f in track.sent.items() if since <= f.sent_at <= since + seconds}
    assert len(expected) >= 10  # a busy machine slows the publisher; 15 fps when quiet

    def share(log: bot.TrackLog) -> float:
        return len(expected & {f.key for f in log.frames}) / len(expected)

    # On a loaded machine the last frames may be a second or more on their way.
    with contextlib.suppress(TimeoutError):
        await wait_until(lambda: all(share(log) == 1 for log in logs), 10)
    for log in logs:
        assert all(f.key in track.sent for f in log.frames), "a viewer got a frame that was never sent"
    return [share(log) for log in logs]


async def event(sock: Socket, type_: str, match: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The next event of a type that matches, others skipped."""
    while not match(found := await sock.next(type_, timeout=10)):
        pass
    return found


async def status_of_publish(http: aiohttp.ClientSession, hub: HubProcess, token: str, room: str, **kw: str) -> int:
    """POST a WHIP offer and return the status (the session is closed again if it was created)."""
    track = bot.SyntheticVideo("vp8", 160, 120, 15)
    try:
        session = await bot.publish(http, hub.url, token, room, [track], **kw)
    except bot.ClientError as exc:
        return int(str(exc).split(": ", 2)[1].split()[0])
    await session.close()
    return 201


async def test_training_broadcast_with_speaker_and_attendance(hub: HubProcess, http: aiohttp.ClientSession):
    viewers = {f"trainee-{i:02d}": (VIEWER_SITES[i % len(VIEWER_SITES)], "terminal") for i in range(VIEWERS)}
    keys = tokens(
        hub,
        viewers
        | {
            "trainer-haidong": ("haidong", "trainer"),
            "outsider-guinan": ("guinan", "terminal"),
            "op-ledu": ("ledu", "operator"),
            "op-guinan": ("guinan", "operator"),
        },
    )
    trainer = keys["trainer-haidong"]
    async with AsyncExitStack() as stack:
        # Everyone is on the home page (an event socket) before the training starts.
        sockets: dict[str, Socket] = {}
        for user in [*viewers, "outsider-guinan"]:
            sockets[user] = await stack.enter_async_context(socket(http, hub, keys[user]))

        async with http.post(
            f"{hub.url}/api/trainings", json={"title": "调解法规", "branch": "guinan"}, headers=auth(trainer)
        ) as r:
            assert r.status == 403 and r.content_type == PROBLEM  # guinan is not the trainer's jurisdiction
        async with http.post(
            f"{hub.url}/api/trainings", json={"title": "调解法规", "branch": BRANCH}, headers=auth(keys["trainee-00"])
        ) as r:
            assert r.status == 403  # a terminal does not start trainings
        async with http.post(
            f"{hub.url}/api/trainings", json={"title": "调解法规培训", "branch": BRANCH}, headers=auth(trainer)
        ) as r:
            assert r.status == 201, await r.text()
            training = await r.json()
        room_id = training["room_id"]
        assert training["room"]["kind"] == "training" and training["room"]["admit"] == [BRANCH]

        # Every level of the branch is invited live; the neighbouring county is not.
        for user in viewers:
            invitation = await sockets[user].next("invitation", timeout=10)
            assert invitation["room_id"] == room_id and invitation["from"]["user"] == "trainer-haidong"
            assert invitation["from"]["site_name"] == "海东市"  # above the attendees' tree
        assert await sockets["outsider-guinan"].nothing_of("invitation")
        async with http.get(f"{hub.url}/api/trainings", headers=auth(keys["trainee-20"])) as r:
            assert room_id in [t["room_id"] for t in await r.json()]
        async with http.get(f"{hub.url}/api/trainings", headers=auth(keys["outsider-guinan"])) as r:
            assert room_id not in [t["room_id"] for t in await r.json()]

        # The presenter: the trainer's camera (and a socket of their own, to see hands).
        video = bot.SyntheticVideo("vp8", 320, 240, 15, bitrate=150_000)
        presenter = await bot.publish(http, hub.url, trainer, room_id, [video])
        stack.push_async_callback(presenter.close)
        trainer_socket = await stack.enter_async_context(socket(http, hub, trainer))
        assert (await trainer_socket.request({"type": "join", "room": room_id}))["type"] == "joined"

        # Someone outside the branch cannot enter, watch or publish.
        outsider = sockets["outsider-guinan"]
        refused = await outsider.request({"type": "join", "room": room_id})
        assert refused["type"] == "error" and refused["code"] == "forbidden"
        async with http.get(f"{hub.url}/api/rooms/{room_id}", headers=auth(keys["outsider-guinan"])) as r:
            assert r.status == 403
        with pytest.raises(bot.ClientError, match=": 403 "):
            await bot.view(http, hub.url, keys["outsider-guinan"], presenter.resource_id)
        assert await status_of_publish(http, hub, keys["outsider-guinan"], room_id) == 403

        # The viewers attend (event socket) and watch the presenter (WHEP).
        participants: dict[str, str] = {}
        for user in viewers:
            joined = await sockets[user].request({"type": "join", "room": room_id, "name": f"学员{user[-2:]}"})
            assert joined["type"] == "joined", joined
            assert [s["id"] for s in joined["streams"]] == [presenter.resource_id]
            participants[user] = joined["participant"]["id"]
        sessions = await asyncio.gather(
            *(bot.view(http, hub.url, keys[u], presenter.resource_id, kinds=("video",)) for u in viewers)
        )
        for session in sessions:
            stack.push_async_callback(session.close)
        logs = [s.logs["video"] for s in sessions]
        ratios = await steady_delivery(video, logs)
        assert min(ratios) >= 0.9, dict(zip(viewers, ratios, strict=True))

        # The trainer shares a screen: a second stream.
        screen = await bot.publish(
            http, hub.url, trainer, room_id, [bot.SyntheticVideo("vp8", 320, 240, 5)], kind="screen"
        )
        added = await event(sockets["trainee-03"], "stream-added", lambda e: e["stream"]["id"] == screen.resource_id)
        assert added["stream"]["kind"] == "screen" and added["stream"]["user"] == "trainer-haidong"
        watcher = await bot.view(http, hub.url, keys["trainee-03"], screen.resource_id, kinds=("video",))
        await wait_until(lambda: any(f.keyframe for f in watcher.logs["video"].frames), 20)
        await watcher.close()
        await screen.close()

        # An attendee may not publish before the trainer lets them speak.
        speaker, speaker_key = "trainee-05", keys["trainee-05"]  # a village (taizi)
        pid = participants[speaker]
        assert await status_of_publish(http, hub, speaker_key, room_id, participant=pid) == 403
        assert await status_of_publish(http, hub, speaker_key, room_id) == 403
        await sockets[speaker].request({"type": "hand", "room": room_id, "raised": True})
        raised = await trainer_socket.next("participant-updated", timeout=10)
        assert raised["participant"]["id"] == pid and raised["participant"]["hand"] is True

        speakers = f"{hub.url}/api/trainings/{room_id}/speakers"
        async with http.post(speakers, json={"participant_id": pid}, headers=auth(keys["trainee-06"])) as r:
            assert r.status == 403  # only the trainer chooses
        async with http.post(speakers, json={"participant": pid}, headers=auth(trainer)) as r:
            assert r.status == 400 and r.content_type == PROBLEM
        async with http.post(speakers, json={"participant_id": "p-nobody"}, headers=auth(trainer)) as r:
            assert r.status == 404
        async with http.post(speakers, json={"participant_id": pid}, headers=auth(trainer)) as r:
            assert r.status == 200
            assert (await r.json())["speaker"] is True
        promoted = await event(sockets["trainee-11"], "participant-updated", lambda e: "speaker" in e["participant"])
        assert promoted["participant"]["id"] == pid and promoted["participant"]["speaker"] is True

        # The speaker's stream reaches the others.
        voice = bot.SyntheticVideo("vp8", 320, 240, 15, bitrate=150_000)
        spoken = await bot.publish(http, hub.url, speaker_key, room_id, [voice], participant=pid)
        stack.push_async_callback(spoken.close)
        listeners = ["trainee-00", "trainee-09", "trainee-20"]  # county, township, village
        added = await event(sockets["trainee-09"], "stream-added", lambda e: e["stream"]["id"] == spoken.resource_id)
        assert added["stream"]["participant_id"] == pid
        hearing = [await bot.view(http, hub.url, keys[u], spoken.resource_id, kinds=("video",)) for u in listeners]
        for session in hearing:
            stack.push_async_callback(session.close)
        ratios = await steady_delivery(voice, [s.logs["video"] for s in hearing])
        assert min(ratios) >= 0.9, dict(zip(listeners, ratios, strict=True))

        # Back to watching: their stream ends and they may not publish again.
        async with http.delete(f"{speakers}/{pid}", headers=auth(trainer)) as r:
            assert r.status == 200
            assert (await r.json())["speaker"] is False
        await event(sockets["trainee-00"], "stream-removed", lambda e: e["stream_id"] == spoken.resource_id)
        await wait_until(lambda: all(s.pc.connectionState == "closed" for s in hearing), 10)
        assert await status_of_publish(http, hub, speaker_key, room_id, participant=pid) == 403
        # The presenter goes on.
        async with http.get(f"{hub.url}/api/rooms/{room_id}", headers=auth(trainer)) as r:
            assert presenter.resource_id in [s["id"] for s in (await r.json())["streams"]]
        seen = len(logs[0].frames)
        await wait_until(lambda: len(logs[0].frames) > seen + 5, 20)

        # The viewers leave.
        left_at = time.time()
        for user in viewers:
            assert (await sockets[user].request({"type": "leave", "room": room_id}))["type"] == "left"

    # Attendance: every viewer, from their site, with join and leave times.
    attendance_url = f"{hub.url}/api/trainings/{room_id}/attendance"
    async with http.get(attendance_url, headers=auth(keys["op-guinan"])) as r:
        assert r.status == 404  # not in the neighbouring county's view at all
    async with http.get(attendance_url, headers=auth(keys["trainee-01"])) as r:
        assert r.status == 403
    async with http.get(attendance_url, headers=auth(keys["op-ledu"])) as r:
        assert r.status == 200
    body: dict[str, Any] = {}

    async def all_left() -> bool:
        # Attendance follows the room events: the leave is written just after the "left" reply.
        nonlocal body
        async with http.get(attendance_url, headers=auth(trainer)) as r:
            assert r.status == 200
            body = await r.json()
        return all(row["left_at"] for row in body["attendance"] if row["user"] in viewers)

    deadline = time.monotonic() + 10
    while not await all_left() and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    rows = {row["user"]: row for row in body["attendance"] if row["user"] in viewers}
    assert set(rows) == set(viewers)
    for user, (site, _) in viewers.items():
        row = rows[user]
        assert row["site_id"] == site and row["participant_id"] == participants[user]
        assert training["started_at"] <= row["joined_at"] < row["left_at"] <= time.time()
        assert row["left_at"] >= left_at - 60 and row["interrupted"] is False
    assert {r["user"] for r in body["attendance"]} == set(viewers) | {"trainer-haidong"}
    async with http.get(attendance_url, params={"format": "csv"}, headers=auth(trainer)) as r:
        assert r.status == 200 and r.content_type == "text/csv"
        table = list(csv.DictReader(io.StringIO((await r.text()).lstrip("\ufeff"))))
    assert {row["user"] for row in table} >= set(viewers)
    assert all(row["joined_at"] and row["left_at"] for row in table if row["user"] in viewers)

    # The statistics page's view of it: every site of the branch attended.
    db = SQLiteDatabase(hub.data / "hub.sqlite3")
    try:
        by_site = {row["site_id"]: row for row in await attendance_by_site(db, left_at - 3600, time.time())}
    finally:
        await db.close()
    for site in VIEWER_SITES:
        assert by_site[site]["trainings"] >= 1 and by_site[site]["people"] == 3 and by_site[site]["minutes"] > 0

    # Ending it: the trainer's stream stops and the branch may no longer enter.
    async with http.post(f"{hub.url}/api/trainings/{room_id}/end", headers=auth(keys["trainee-02"])) as r:
        assert r.status == 403
    async with http.post(f"{hub.url}/api/trainings/{room_id}/end", headers=auth(trainer)) as r:
        assert r.status == 200 and (await r.json())["ended_at"]
    async with http.post(f"{hub.url}/api/trainings/{room_id}/end", headers=auth(trainer)) as r:
        assert r.status == 400
    async with http.get(f"{hub.url}/api/rooms/{room_id}", headers=auth(keys["trainee-03"])) as r:
        assert r.status == 403
    async with http.get(f"{hub.url}/api/trainings", headers=auth(trainer)) as r:
        assert room_id not in [t["room_id"] for t in await r.json()]
    async with http.get(f"{hub.url}/api/trainings?all=1", headers=auth(trainer)) as r:
        assert room_id in [t["room_id"] for t in await r.json()]


async def test_training_in_browsers(hub: HubProcess, http: aiohttp.ClientSession):
    """A trainer starts a training from the trainings page and presents; a
    village attendee watches, raises a hand, is let speak (their page
    publishes) and returned to watching (it stops); ending the training sends
    the attendee out; the attendance reads in English."""
    keys = tokens(hub, {"trainer-golmud": ("golmud", "trainer"), "trainee-minkang": ("minkang", "terminal")})
    async with chromium() as browser:
        trainer, attendee = await new_page(browser), await new_page(browser)
        trainer.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
        await attendee.goto(f"{hub.url}/?token={keys['trainee-minkang']}")
        await expect(attendee.locator("#tree")).to_contain_text("民康村")
        await trainer.goto(f"{hub.url}/trainings?token={keys['trainer-golmud']}")
        await trainer.fill("#t-title", "Mediation law")
        await trainer.select_option("#t-branch", "golmud")
        await trainer.click("#t-submit")
        await trainer.wait_for_url(re.compile(r"/rooms/room-"))
        room_id = trainer.url.rsplit("/", 1)[-1]
        await join(trainer, trainer.url)
        await expect(trainer.locator("#training-bar")).to_have_attribute("data-mode", "trainer")

        # The attendee's home page shows the invitation live; one click joins.
        invitation = attendee.locator(f'.invitation[data-room-id="{room_id}"]')
        await expect(invitation).to_contain_text("格尔木市")
        await invitation.locator(".invitation-join").click()
        await attendee.wait_for_url(f"**/rooms/{room_id}")
        await expect(attendee.locator("#prejoin")).to_be_visible()
        await attendee.wait_for_function("() => document.querySelector('#preview').videoWidth > 0")
        await attendee.click("#join")
        await expect(attendee.locator("#training-bar")).to_have_attribute("data-mode", "watching")
        await expect(attendee.locator(".room-tile.self")).to_be_hidden()  # the stage is the trainer's
        # The trainer sees where the attendee is, though that site is not in the room's own line of sites.
        await expect(trainer.locator("#people")).to_contain_text("民康村")
        presenter = attendee.locator(
            ".room-tile:not(.self)", has=attendee.locator(".tile-name", has_text="trainer-golmud")
        )
        await assert_playing(attendee, presenter)

        async def streams_of(user: str) -> list[dict[str, Any]]:
            async with http.get(f"{hub.url}/api/rooms/{room_id}", headers=auth(keys["trainer-golmud"])) as r:
                return [s for s in (await r.json())["streams"] if s["user"] == user]

        assert await streams_of("trainee-minkang") == []  # an attendee watches

        # A raised hand, "let speak": the attendee's page publishes and the trainer sees it.
        await attendee.click("#btn-hand")
        await trainer.click('#people [data-action="let-speak"]')
        await expect(attendee.locator("#training-bar")).to_have_attribute("data-mode", "speaking")
        await expect(attendee.locator(".room-tile.self")).to_be_visible()
        speaker = trainer.locator(
            ".room-tile:not(.self)", has=trainer.locator(".tile-name", has_text="trainee-minkang")
        )
        await assert_playing(trainer, speaker)
        assert len(await streams_of("trainee-minkang")) == 1

        # "Back to watching": the stream ends.
        await trainer.click('#people [data-action="stop-speaking"]')
        await expect(speaker).to_have_count(0)
        await expect(attendee.locator("#training-bar")).to_have_attribute("data-mode", "watching")
        await expect(attendee.locator(".room-tile.self")).to_be_hidden()
        assert await streams_of("trainee-minkang") == []

        # Ending the training sends everyone out.
        await trainer.click("#training-bar .training-end")
        await expect(attendee.locator("#left")).to_be_visible()
        await expect(attendee.locator("#left-message")).to_have_text("培训已结束。")

        # The attendance, in English.
        await trainer.goto(f"{hub.url}/trainings?room={room_id}")
        row = trainer.locator('#attendance-rows tr[data-user="trainee-minkang"]')
        await expect(row).to_contain_text("民康村")
        await trainer.click("#lang-toggle")
        await expect(row).to_contain_text("Minkang Village")
        await expect(trainer.locator(f'#training-rows tr[data-room-id="{room_id}"]')).to_have_attribute(
            "data-state", "ended"
        )
        assert not CJK.search(await screen_text(trainer))


async def test_attendance_left_open_by_a_killed_hub_is_closed_at_restart(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    first = start_hub(tmp_path / "hub")
    try:
        keys = tokens(first, {"trainer-ledu": ("ledu", "trainer"), "trainee-taizi": ("taizi", "terminal")})
        async with http.post(
            f"{first.url}/api/trainings",
            json={"title": "Fire safety", "branch": "qutan"},
            headers=auth(keys["trainer-ledu"]),
        ) as r:
            room_id = (await r.json())["room_id"]
        async with http.ws_connect(f"{first.url}/ws", headers=auth(keys["trainee-taizi"])) as ws:
            # taizi lies in chengtai, not qutan: the branch is what admits, not the trainer.
            sock = Socket(ws)
            await sock.next("hello")
            assert (await sock.request({"type": "join", "room": room_id}))["code"] == "forbidden"
        async with http.post(
            f"{first.url}/api/trainings",
            json={"title": "Fire safety", "branch": "chengtai"},
            headers=auth(keys["trainer-ledu"]),
        ) as r:
            room_id = (await r.json())["room_id"]
        ws = await http.ws_connect(f"{first.url}/ws", headers=auth(keys["trainee-taizi"]))
        sock = Socket(ws)
        await sock.next("hello")
        assert (await sock.request({"type": "join", "room": room_id}))["type"] == "joined"
        async with http.get(f"{first.url}/api/trainings/{room_id}/attendance", headers=auth(keys["trainer-ledu"])) as r:
            [row] = (await r.json())["attendance"]
        assert row["left_at"] is None
        first.proc.kill()  # no goodbye: the row stays open in SQLite
        first.proc.wait(10)
        await ws.close()
    finally:
        first.stop()

    second = start_hub(tmp_path / "hub")
    try:
        async with http.get(
            f"{second.url}/api/trainings/{room_id}/attendance", headers=auth(keys["trainer-ledu"])
        ) as r:
            [row] = (await r.json())["attendance"]
        # Closed at the last heartbeat of the killed process, and marked as such.
        assert row["interrupted"] is True and row["joined_at"] <= row["left_at"] <= row["joined_at"] + 15
        async with http.get(f"{second.url}/api/trainings?all=1", headers=auth(keys["trainer-ledu"])) as r:
            [training] = [t for t in await r.json() if t["room_id"] == room_id]
        assert training["ended_at"] is not None  # its room went with the killed process's live state
    finally:
        second.stop()


async def test_speaker_on_another_hub_process(tmp_path: Path, redis_url: str, http: aiohttp.ClientSession) -> None:
    """Two hub processes sharing Redis and the data directory: the trainer
    acts on one, the attendee speaks through the other, whose process ends the
    stream when the trainer returns them to watching, and writes the row."""
    a = start_hub(tmp_path, "--redis", redis_url)
    b = start_hub(tmp_path, "--redis", redis_url)
    try:
        keys = tokens(a, {"trainer-delingha": ("delingha", "trainer"), "trainee-hedong": ("hedong", "terminal")})
        trainer = auth(keys["trainer-delingha"])
        async with http.post(
            f"{a.url}/api/trainings", json={"title": "Flood drill", "branch": "delingha"}, headers=trainer
        ) as r:
            room_id = (await r.json())["room_id"]
        async with socket(http, b, keys["trainee-hedong"]) as attendee:
            pid = (await attendee.request({"type": "join", "room": room_id}))["participant"]["id"]
            assert await status_of_publish(http, b, keys["trainee-hedong"], room_id, participant=pid) == 403
            async with http.post(
                f"{a.url}/api/trainings/{room_id}/speakers", json={"participant_id": pid}, headers=trainer
            ) as r:
                assert r.status == 200
            video = bot.SyntheticVideo("vp8", 160, 120, 15)
            spoken = await bot.publish(http, b.url, keys["trainee-hedong"], room_id, [video], participant=pid)
            try:
                await event(attendee, "stream-added", lambda e: e["stream"]["id"] == spoken.resource_id)
                async with http.delete(f"{a.url}/api/trainings/{room_id}/speakers/{pid}", headers=trainer) as r:
                    assert r.status == 200
                await event(attendee, "stream-removed", lambda e: e["stream_id"] == spoken.resource_id)
                for hub in (a, b):
                    async with http.get(f"{hub.url}/api/streams/{spoken.resource_id}", headers=trainer) as r:
                        assert r.status == 404
            finally:
                await spoken.close()
            assert (await attendee.request({"type": "leave", "room": room_id}))["type"] == "left"
        async with http.get(f"{a.url}/api/trainings/{room_id}/attendance", headers=trainer) as r:
            [row] = (await r.json())["attendance"]
        assert row["user"] == "trainee-hedong" and row["participant_id"] == pid and row["left_at"] is not None
    finally:
        a.stop()
        b.stop()
