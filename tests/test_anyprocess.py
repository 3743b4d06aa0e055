"""Any request on any process: an act sent to a hub process that does not own
the thing (stream, subscription, room's streams, recording, camera lease) is
decided there and done by the owner; a room whose publishers are on several
processes is recorded whole by the one that was asked (real hub processes
sharing a real redis-server, aiortc peers over loopback)."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Iterator
from typing import Any

import aiohttp
import av
import pytest
import redis.asyncio as aioredis

from client import bot
from hub.core.livestate import ActFailed, NodeUnreachable, RedisLiveState
from hub.core.rooms import NotFound

from .conftest import EventSocket, HubProcess, free_port, start_hub, wait_until
from .recording_helpers import auth, decoded_seconds, set_recording

CLUSTER_SECRET = secrets.token_urlsafe(32)
NODE_TTL = 2.0
ROOM = "site-heping"  # a village of dongguan township, chengdong county


def cluster_env(**more: str) -> dict[str, str]:
    return {
        "HUB_CLUSTER_SECRET": CLUSTER_SECRET,
        "HUB_NODE_TTL": str(NODE_TTL),
        "HUB_RELAY_LINGER_SECONDS": "1",
        "HUB_SEGMENT_SECONDS": "1",
        "HUB_CAMERA_NETWORKS": '["127.0.0.1/32"]',
        # Reconcile rounds 20 s apart: a camera removed elsewhere stops only if its holder is asked.
        "HUB_CAMERA_LEASE_SECONDS": "60",
    } | more


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[list[HubProcess]]:
    """Three processes, one data directory (the same users' tokens, one catalogue)."""
    data = tmp_path_factory.mktemp("anyprocess")
    hubs: list[HubProcess] = []
    try:
        for _ in range(3):
            hubs.append(start_hub(data, "--redis", redis_url, env=cluster_env()))
        yield hubs
    finally:
        for hub in hubs:
            hub.stop()


async def health(http: aiohttp.ClientSession, hub: HubProcess) -> dict[str, Any]:
    async with http.get(f"{hub.url}/healthz") as r:
        assert r.status == 200
        return dict(await r.json())


async def counts_become(http: aiohttp.ClientSession, hub: HubProcess, timeout: float = 10, **want: int) -> None:
    counts: dict[str, Any] = {}
    for _ in range(int(timeout / 0.2)):
        counts = await health(http, hub)
        if all(counts[k] == v for k, v in want.items()):
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{hub.url}: {counts}, wanted {want}")


async def connected(session: bot.Session) -> None:
    await wait_until(lambda: session.pc.connectionState == "connected", timeout=10)


async def refused(http: aiohttp.ClientSession, method: str, url: str, token: str) -> tuple[int, str]:
    async with http.request(method, url, headers=auth(token)) as r:
        return r.status, (await r.json())["detail"] if r.status >= 400 else ""


async def test_whip_delete_through_another_process(cluster, http: aiohttp.ClientSession):
    p1, p2, _ = cluster
    publisher_token = p1.sign("m-any1", "heping", "mediator")
    neighbour = p1.sign("m-any1b", "heping", "mediator")  # same site, not the publisher
    outsider = p1.sign("m-any1c", "minkang", "mediator")  # another county
    publisher = await bot.publish(http, p1.url, publisher_token, ROOM, [bot.SyntheticVideo("vp8", 160, 120, 15)])
    try:
        await connected(publisher)
        path = f"/whip/{ROOM}/{publisher.resource_id}"
        # The same refusal, word for word, whichever process is asked.
        for who in (neighbour, outsider):
            answers = {await refused(http, "DELETE", hub.url + path, who) for hub in (p1, p2)}
            assert len(answers) == 1 and answers.pop()[0] == 403
        assert (await health(http, p1))["streams"] == 1
        # Sent to p2, which does not host it: p1 ends the media.
        async with http.delete(p2.url + path, headers=auth(publisher_token)) as r:
            assert r.status == 200, await r.text()
        assert (await health(http, p1))["streams"] == 0
        await wait_until(lambda: publisher.pc.connectionState == "closed", timeout=10)
        for hub in (p1, p2):
            async with http.get(f"{hub.url}/api/streams/{publisher.resource_id}", headers=auth(neighbour)) as r:
                assert r.status == 404
            async with http.delete(hub.url + path, headers=auth(publisher_token)) as r:
                assert r.status == 404  # gone everywhere
    finally:
        await publisher.pc.close()


async def test_whep_delete_through_another_process(cluster, http: aiohttp.ClientSession):
    p1, p2, _ = cluster
    token = p1.sign("m-any2", "heping", "mediator")
    other = p1.sign("m-any2b", "heping", "mediator")
    outsider = p1.sign("m-any2c", "minkang", "mediator")
    publisher = await bot.publish(http, p1.url, token, ROOM, [bot.SyntheticVideo("vp8", 160, 120, 15)])
    direct = relayed = None
    try:
        direct = await bot.view(http, p1.url, token, publisher.resource_id, kinds=("video",))
        relayed = await bot.view(http, p2.url, token, publisher.resource_id, kinds=("video",))
        for session in (direct, relayed):
            await connected(session)
        await counts_become(http, p1, subscriptions=2)  # the direct viewer and p2's pull
        await counts_become(http, p2, relays=1, subscriptions=1)
        # A subscription id names its process: a DELETE anywhere finds the holder.
        for session, elsewhere in ((direct, p2), (relayed, p1)):
            path = session.location.removeprefix(p1.url).removeprefix(p2.url)
            for who in (other, outsider):
                answers = {await refused(http, "DELETE", hub.url + path, who) for hub in (p1, p2)}
                assert len(answers) == 1 and answers.pop()[0] == 403
            async with http.delete(elsewhere.url + path, headers=auth(token)) as r:
                assert r.status == 200, await r.text()
            await wait_until(lambda s=session: s.pc.connectionState == "closed", timeout=10)
            async with http.delete(elsewhere.url + path, headers=auth(token)) as r:
                assert r.status == 404
        # The relay's last viewer left: the pull ends after the linger, at both ends.
        await counts_become(http, p2, relays=0, subscriptions=0)
        await counts_become(http, p1, subscriptions=0)
        for hub in (p1, p2):
            status, _ = await refused(http, "DELETE", f"{hub.url}/whep/{publisher.resource_id}/nobody.xyz", token)
            assert status == 404
    finally:
        for session in (direct, relayed):
            if session is not None:
                await session.pc.close()
        await publisher.close()


async def test_close_room_through_another_process_ends_its_streams_on_their_host(cluster, http):
    p1, p2, _ = cluster
    mediator = p1.sign("m-any3", "heping", "mediator")
    outsider = p1.sign("op-any3", "minkang", "operator")
    async with http.post(
        f"{p1.url}/api/rooms",
        json={"site_id": "heping", "kind": "mediation", "title": "邻里纠纷"},
        headers=auth(mediator),
    ) as r:
        assert r.status == 201, await r.text()
        room_id = (await r.json())["id"]
    publisher = await bot.publish(http, p1.url, mediator, room_id, [bot.SyntheticVideo("vp8", 160, 120, 15)])
    try:
        await connected(publisher)
        answers = {await refused(http, "DELETE", f"{hub.url}/api/rooms/{room_id}", outsider) for hub in (p1, p2)}
        assert len(answers) == 1 and answers.pop()[0] == 403
        async with http.delete(f"{p2.url}/api/rooms/{room_id}", headers=auth(mediator)) as r:
            assert r.status == 200, await r.text()
        # Not only the record: the host's media ends too.
        await counts_become(http, p1, streams=0)
        await wait_until(lambda: publisher.pc.connectionState == "closed", timeout=10)
        async with http.get(f"{p1.url}/api/rooms/{room_id}", headers=auth(mediator)) as r:
            assert r.status == 404
    finally:
        await publisher.pc.close()


async def test_back_to_watching_through_another_process_ends_the_stream_before_answering(cluster, http):
    p1, p2, _ = cluster
    trainer = p1.sign("trainer-any8", "delingha", "trainer")
    stranger = p1.sign("trainer-any8b", "golmud", "trainer")  # another county's trainer
    attendee = p1.sign("trainee-any8", "hedong", "terminal")
    training = {"title": "Flood drill", "branch": "delingha"}
    async with http.post(f"{p1.url}/api/trainings", json=training, headers=auth(trainer)) as r:
        assert r.status == 201, await r.text()
        room_id = (await r.json())["room_id"]
    sock = await EventSocket.open(http, p2, attendee)
    speaker = None
    try:
        await sock.ws.send_json({"type": "join", "room": room_id})
        pid = (await sock.wait_for("joined"))["participant"]["id"]
        speakers = f"/api/trainings/{room_id}/speakers"
        async with http.post(p1.url + speakers, json={"participant_id": pid}, headers=auth(trainer)) as r:
            assert r.status == 200, await r.text()
        video = bot.SyntheticVideo("vp8", 160, 120, 15)
        speaker = await bot.publish(http, p2.url, attendee, room_id, [video], participant=pid)
        await connected(speaker)
        answers = {await refused(http, "DELETE", f"{h.url}{speakers}/{pid}", stranger) for h in (p1, p2)}
        assert len(answers) == 1 and answers.pop()[0] == 403
        assert (await health(http, p2))["streams"] == 1
        async with http.delete(f"{p1.url}{speakers}/{pid}", headers=auth(trainer)) as r:
            assert r.status == 200, await r.text()
        # Done by p2 before p1 answered: nothing left to wait for.
        assert (await health(http, p2))["streams"] == 0
        await wait_until(lambda: speaker.pc.connectionState == "closed", timeout=10)
    finally:
        if speaker is not None:
            await speaker.pc.close()
        await sock.close()


def stream_frames(folder, entry: dict[str, Any]) -> int:
    frames, _ = decoded_seconds(folder, entry)
    return frames


async def test_a_room_published_through_two_processes_is_recorded_whole_by_a_third(cluster, http):
    p1, p2, p3 = cluster
    token = p1.sign("m-any4", "heping", "mediator")
    outsider = p1.sign("m-any4b", "minkang", "mediator")
    first = bot.SyntheticVideo("vp8", 320, 240, 30, frames=150)
    second = bot.SyntheticVideo("vp8", 320, 240, 30, frames=120)
    on_p1 = await bot.publish(http, p1.url, token, ROOM, [first, bot.SyntheticAudio(frames=250)])
    on_p2 = None
    try:
        for hub in (p1, p3):
            async with http.post(
                f"{hub.url}/api/rooms/{ROOM}/recording", json={"on": True}, headers=auth(outsider)
            ) as r:
                assert r.status == 403
        started = await set_recording(http, p3, token, ROOM, True)
        # Asked again elsewhere: the one session, not a second.
        again = await set_recording(http, p2, token, ROOM, True)
        assert again["recording"]["id"] == started["recording"]["id"] and again["on"]
        # A stream published after recording began, through yet another process.
        on_p2 = await bot.publish(http, p2.url, token, ROOM, [second])
        await wait_until(lambda: first.readyState == "ended" and second.readyState == "ended", timeout=60)
        await asyncio.sleep(0.5)
        assert (await health(http, p3))["relays"] == 2  # p3 pulls both, hosts none
        # Stopped through p1, which does not record it.
        stopped = await set_recording(http, p1, token, ROOM, False)
        assert stopped["recording"]["id"] == started["recording"]["id"] and stopped["recording"]["status"] == "complete"
        for hub in (p1, p2, p3):
            async with http.get(f"{hub.url}/api/rooms/{ROOM}/recording", headers=auth(token)) as r:
                assert (await r.json())["on"] is False
        folder = p3.data / "recordings" / started["recording"]["id"]
        manifest = json.loads((folder / "manifest.json").read_text())
        assert {s["id"] for s in manifest["streams"]} == {on_p1.resource_id, on_p2.resource_id}
        for entry in manifest["streams"]:
            assert stream_frames(folder, entry) >= 60, entry
        [audio_of_p1] = [s for s in manifest["streams"] if s["id"] == on_p1.resource_id]
        assert set(audio_of_p1["codecs"]) == {"audio", "video"}
        # The recorder's pulls end once it stops (after the linger).
        await counts_become(http, p3, relays=0)
    finally:
        await on_p1.close()
        if on_p2 is not None:
            await on_p2.close()


async def test_a_recorded_stream_whose_host_dies_ends_cleanly(cluster, redis_url: str, http):
    p1, _, p3 = cluster
    doomed = start_hub(p1.data, "--redis", redis_url, env=cluster_env())
    try:
        token = p1.sign("m-any5", "shangzhai", "mediator")
        room = "site-shangzhai"
        video = bot.SyntheticVideo("vp8", 320, 240, 30)
        publisher = await bot.publish(http, doomed.url, token, room, [video])
        started = await set_recording(http, p3, token, room, True)
        folder = p3.data / "recordings" / started["recording"]["id"]

        def segments() -> int:
            streams = json.loads((folder / "manifest.json").read_text())["streams"]
            return len(streams[0]["segments"]) if streams else 0

        await wait_until(lambda: segments() >= 2, timeout=30)  # a finished segment or two, then the death
        doomed.proc.kill()
        doomed.proc.wait(5)
        # Swept within the node TTL: the recording's pull of it ends.
        await counts_become(http, p3, timeout=3 * NODE_TTL + 10, relays=0)
        stopped = await set_recording(http, p1, token, room, False)
        assert stopped["recording"]["status"] == "complete"
        manifest = json.loads((folder / "manifest.json").read_text())
        [entry] = manifest["streams"]
        assert entry["id"] == publisher.resource_id and len(entry["segments"]) >= 2
        # Every segment, the last one cut by the death too, is a whole file that decodes.
        for seg in entry["segments"]:
            with av.open(str(folder / seg["path"])) as container:
                assert sum(1 for _ in container.decode(video=0)) > 0
        await publisher.pc.close()
    finally:
        doomed.stop()


async def test_an_owner_that_does_not_answer_is_a_503_not_a_hang(cluster, redis_url: str, http):
    p1, p2, _ = cluster
    # Its heartbeat outlives it by 30 s: the stream stays listed, its host gone.
    doomed = start_hub(p1.data, "--redis", redis_url, env=cluster_env(HUB_NODE_TTL="30"))
    try:
        node = (await health(http, doomed))["node"]
        token = p1.sign("m-any6", "heping", "mediator")
        publisher = await bot.publish(http, doomed.url, token, ROOM, [bot.SyntheticVideo("vp8", 160, 120, 15)])
        doomed.proc.kill()
        doomed.proc.wait(5)
        async with asyncio.timeout(10):
            async with http.delete(f"{p2.url}/whip/{ROOM}/{publisher.resource_id}", headers=auth(token)) as r:
                assert r.status == 503, await r.text()
                assert r.content_type == "application/problem+json"
        await publisher.pc.close()
    finally:
        doomed.stop()
        # Its records are swept now, not 30 s later under the other tests.
        async with aioredis.from_url(redis_url) as redis:
            await redis.delete(f"hub:node:{node}")


async def test_removing_a_camera_through_another_process_stops_its_pull_at_once(cluster, redis_url: str, http):
    p1, p2, _ = cluster
    operator = p1.sign("op-any7", "chengdong", "operator")
    outsider = p1.sign("op-any7b", "minkang", "operator")
    body = {"site_id": "heping", "name": "村口", "url": f"rtsp://127.0.0.1:{free_port()}/cam"}
    async with http.post(f"{p1.url}/api/cameras", json=body, headers=auth(operator)) as r:
        assert r.status == 201, await r.text()
        camera_id = (await r.json())["id"]
    lease_key = f"hub:rec:camera-lease:{camera_id}"
    async with aioredis.from_url(redis_url, decode_responses=True) as redis:
        # The registering process takes the lease at once.
        assert json.loads(await redis.get(lease_key))["node"] == (await health(http, p1))["node"]
        answers = {await refused(http, "DELETE", f"{h.url}/api/cameras/{camera_id}", outsider) for h in (p1, p2)}
        assert len(answers) == 1 and answers.pop()[0] == 403
        async with http.delete(f"{p2.url}/api/cameras/{camera_id}", headers=auth(operator)) as r:
            assert r.status == 204, await r.text()
        # The holder let it go before p2 answered, not at its next round (a third of the lease later).
        assert await redis.get(lease_key) is None


async def test_acts_over_redis_answer_fail_and_time_out(redis_url: str):
    """The act channel itself: a result, an owner's failure told as such, an
    owner that takes the act but never answers, and one not running."""
    asker, owner = RedisLiveState(redis_url, "asker", 5), RedisLiveState(redis_url, "owner", 5)
    stuck = asyncio.Event()

    async def double(args: dict[str, Any]) -> dict[str, Any]:
        return {"twice": args["n"] * 2}

    async def missing(_: dict[str, Any]) -> dict[str, Any]:
        raise NotFound("no such thing")

    async def hang(_: dict[str, Any]) -> dict[str, Any]:
        await stuck.wait()
        return {}

    owner.acts.update({"double": double, "missing": missing, "hang": hang})
    await asker.start()
    await owner.start()
    try:
        assert await asker.ask("owner", "double", {"n": 21}) == {"twice": 42}
        with pytest.raises(ActFailed) as failed:
            await asker.ask("owner", "missing", {})
        assert (failed.value.kind, failed.value.detail) == ("NotFound", "no such thing")
        with pytest.raises(ActFailed, match="no act 'nothing'"):
            await asker.ask("owner", "nothing", {})
        with pytest.raises(NodeUnreachable, match="within 0.5 s"):
            await asker.ask("owner", "hang", {}, timeout=0.5)
        async with asyncio.timeout(2):  # known at once, not after a timeout
            with pytest.raises(NodeUnreachable, match="not running"):
                await asker.ask("gone", "double", {"n": 1})
        # A process asking itself does the act in place (no Redis round trip).
        asker.acts["double"] = double
        assert await asker.ask("asker", "double", {"n": 2}) == {"twice": 4}
    finally:
        stuck.set()
        await owner.close()
        await asker.close()
