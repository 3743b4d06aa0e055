"""Media across hub processes, end to end: browsers on two processes and a
Python viewer on a third, a training fanned out through a chain of relays,
and the loss of a relaying process or of a stream's host.

Real hub processes share a real redis-server and one data directory (so a
user's token works on each); every peer, Chromium's and aiortc's, offers only
127.0.0.1. Frames are compared by digest (client/bot.py): a frame that was
re-encoded or corrupted anywhere on its way matches nothing that was sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from playwright.async_api import Browser

from client import bot
from client.simulcast import SimulcastVideo
from hub.config import Settings
from hub.core.tokens import NODE_SUBJECT, Claims, TokenError, issue, verify
from hub.media.relay import ABS_SEND_TIME, open_pull

from .browser import assert_playing
from .conftest import HubProcess, start_hub, wait_until
from .test_browser_room import join, new_page, tile_of
from .test_relay import NODE_TTL, cluster_env, delivered, health, wait_until_counts
from .test_room_api import auth
from .test_training import tokens

ROOM = "site-rianxiuma"


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[list[HubProcess]]:
    """Three processes; the third pulls through the second (HUB_UPSTREAM), so a
    stream of the first reaches it over two hops."""
    data = tmp_path_factory.mktemp("cluster-media")
    hubs: list[HubProcess] = []
    try:
        hubs.append(start_hub(data, "--redis", redis_url, env=cluster_env()))
        hubs.append(start_hub(data, "--redis", redis_url, env=cluster_env()))
        hubs.append(start_hub(data, "--redis", redis_url, env=cluster_env(HUB_UPSTREAM=hubs[1].url)))
        yield hubs
    finally:
        for hub in hubs:
            hub.stop()


async def no_pulls(http: aiohttp.ClientSession, hubs: list[HubProcess]) -> None:
    """Nothing left behind: no relay, no subscription (a pull is one at its upstream), no socket
    read for a pull anywhere."""
    for hub in hubs:
        await wait_until_counts(http, hub, relays=0, subscriptions=0, reader_sockets=0)


async def streams_of(http: aiohttp.ClientSession, hub: HubProcess, token: str, room_id: str) -> list[dict[str, Any]]:
    async with http.get(f"{hub.url}/api/rooms/{room_id}", headers=auth(token)) as r:
        assert r.status == 200, await r.text()
        return list((await r.json())["streams"])


def same_frames(direct: bot.TrackLog, relayed: bot.TrackLog) -> tuple[float, float, bool]:
    """(share of the relayed viewer's frames the host's own viewer also got,
    share of the host viewer's frames from the relayed one's first to its last
    that the relayed one got too, whether they came in the same order).

    A viewer on the hosting process gets the packets exactly as the host
    received them (what test_forwarding proves), so its frames are the
    publisher's; the relayed viewer must have those, and only those. The span
    is found by content, not by clock (on a busy machine a hop may lag), from
    the frames that occur once (a fake microphone's beeps repeat)."""
    assert relayed.frames and direct.frames
    theirs = Counter(f.key for f in direct.frames)
    mine = [f.key for f in relayed.frames]
    found = sum(k in theirs for k in mine) / len(mine)
    order = {f.key: i for i, f in enumerate(direct.frames) if theirs[f.key] == 1}
    places = [order[k] for k in mine if k in order]
    if not places:
        return found, 0.0, False
    span = {k for k in (f.key for f in direct.frames[min(places) : max(places) + 1]) if k in order}
    return found, len(span & set(mine)) / len(span), places == sorted(places)


async def test_browsers_on_two_processes_and_a_python_viewer_on_a_third(
    three: list[HubProcess], browser: Browser, http: aiohttp.ClientSession
) -> None:
    p1, p2, p3 = three
    village = p1.sign("med-cluster-a", "rianxiuma", "mediator")
    township = p1.sign("med-cluster-b", "guomaying", "mediator")
    a, b = await new_page(browser), await new_page(browser)
    async with AsyncExitStack() as stack:
        # One layer each: the frames of two viewers of one simulcast stream differ
        # while one has switched layers and the other not yet, which is not what
        # this test compares (tests/test_simulcast.py checks layers byte for byte).
        await join(a, f"{p1.url}/rooms/{ROOM}?token={village}&simulcast=off", "王芳")
        await join(b, f"{p2.url}/rooms/{ROOM}?token={township}&simulcast=off", "李明")
        # Each page plays the other's camera, which the other process hosts.
        await assert_playing(a, tile_of(a, "李明"))
        await assert_playing(b, tile_of(b, "王芳"))
        assert (await health(http, p1))["relays"] == 1 and (await health(http, p2))["relays"] == 1

        streams = {s["user"]: s["id"] for s in await streams_of(http, p3, village, ROOM)}
        assert set(streams) == {"med-cluster-a", "med-cluster-b"}, streams
        hosts = {"med-cluster-a": p1, "med-cluster-b": p2}
        # Each stream's host's own viewer first: the frames as the host received them.
        direct = {
            user: await bot.view(http, hosts[user].url, village, stream_id) for user, stream_id in streams.items()
        }
        for session in direct.values():
            stack.push_async_callback(session.close)
        await wait_until(lambda: all(s.logs["video"].first_keyframe_at for s in direct.values()), 20)
        # The Python viewer on the third process: both streams relayed to it.
        relayed = {user: await bot.view(http, p3.url, village, stream_id) for user, stream_id in streams.items()}
        for session in relayed.values():
            assert session.location.startswith(f"{p3.url}/whep/")
            stack.push_async_callback(session.close)
        await wait_until(lambda: all(s.logs["video"].first_keyframe_at for s in relayed.values()), 20)
        await asyncio.sleep(4)
        for session in relayed.values():
            await session.close()
        shares = {
            (user, kind): same_frames(direct[user].logs[kind], relayed[user].logs[kind])
            for user in streams
            for kind in ("video", "audio")
        }
        # Nothing re-encoded or altered on the way (a re-encoded frame matches
        # nothing; the host's viewer, on a busy machine, may itself lose the
        # odd frame the relayed one has), nothing out of order, nearly everything there.
        assert all(found >= 0.98 and covered >= 0.95 and ordered for found, covered, ordered in shares.values()), shares
        # Stream a reached p3 over two hops (p1 -> p2, p2 -> p3: p2 is p3's upstream), b over one.
        assert all(len(s.logs["video"].frames) >= 30 for s in relayed.values())
    await a.context.close()
    await b.context.close()
    await no_pulls(http, three)


async def metric(http: aiohttp.ClientSession, hub: HubProcess, name: str) -> float:
    async with http.get(f"{hub.url}/metrics") as r:
        assert r.status == 200
        text = await r.text()
    [value] = [line.split()[1] for line in text.splitlines() if line.split(" ", 1)[0] == name]
    return float(value)


TRAINEE_SITES = ["ledu", "chengtai", "qutan", "taizi", "hongzhuang", "qutancun", "xinzhuang"]


async def test_a_training_through_a_chain_of_relays(three: list[HubProcess], http: aiohttp.ClientSession) -> None:
    """origin -> P2 -> P3: 20 trainees on P2 and P3 get the trainer's frames,
    byte for byte and in order, each stream pulled once per process."""
    origin, p2, p3 = three
    trainees = {f"trainee-c{i:02d}": (TRAINEE_SITES[i % len(TRAINEE_SITES)], "terminal") for i in range(20)}
    keys = tokens(origin, trainees | {"trainer-cluster": ("haidong", "trainer")})
    trainer = keys["trainer-cluster"]
    async with http.post(
        f"{origin.url}/api/trainings", json={"title": "联动培训", "branch": "ledu"}, headers=auth(trainer)
    ) as r:
        assert r.status == 201, await r.text()
        room_id = (await r.json())["room_id"]
    # Small frames, a few seconds: what is tested is the path, not the bitrate.
    camera = bot.SyntheticVideo("vp8", 160, 120, 15, bitrate=100_000)
    screen = bot.SyntheticVideo("vp8", 160, 120, 5, bitrate=50_000)
    async with AsyncExitStack() as stack:
        presenter = await bot.publish(http, origin.url, trainer, room_id, [camera])
        stack.push_async_callback(presenter.close)
        shared = await bot.publish(http, origin.url, trainer, room_id, [screen], kind="screen")
        stack.push_async_callback(shared.close)
        where = {user: (p2 if i % 2 else p3) for i, user in enumerate(trainees)}
        sessions = await asyncio.gather(
            *(bot.view(http, where[u].url, keys[u], presenter.resource_id, kinds=("video",)) for u in trainees)
        )
        for session in sessions:
            stack.push_async_callback(session.close)
        # One trainee on each relaying process also watches the screen: a second stream, a second pull.
        screens = [
            await bot.view(http, hub.url, keys[user], shared.resource_id, kinds=("video",))
            for hub, user in ((p2, "trainee-c01"), (p3, "trainee-c00"))
        ]
        for session in screens:
            stack.push_async_callback(session.close)
        assert all(s.location.startswith(where[u].url) for s, u in zip(sessions, trainees, strict=True))

        # One pull per stream and process: P3's from P2 (its upstream), P2's from the origin.
        for hub in (p2, p3):
            assert await metric(http, hub, "hub_relays") == 2
        assert await metric(http, origin, "hub_subscriptions") == 2  # P2's two pulls, nobody else's
        assert await metric(http, p2, "hub_subscriptions") == 10 + 1 + 2  # its trainees, a screen, P3's pulls
        assert await metric(http, p3, "hub_subscriptions") == 10 + 1

        logs = [s.logs["video"] for s in sessions]
        await wait_until(lambda: all(log.first_keyframe_at for log in logs), 30)
        since = max(log.first_keyframe_at or 0.0 for log in logs)
        await asyncio.sleep(5)
        until = time.monotonic()
        # The frames of the window, and a moment for the last of them on their way.
        expected = {k for k, f in camera.sent.items() if since <= f.sent_at <= until}
        assert len(expected) >= 30  # 15 fps when the machine is quiet
        with contextlib.suppress(TimeoutError):
            await wait_until(lambda: all(expected <= {f.key for f in log.frames} for log in logs), 10)
        for user, log in zip(trainees, logs, strict=True):
            got = bot.compare(camera, log, since=since)
            share = len(expected & {f.key for f in log.frames}) / len(expected)
            assert got.unknown == 0, (user, got)  # byte-identical after two hops
            assert got.in_order, (user, got)
            assert share >= 0.95, (user, share)
        for session in screens:
            assert bot.compare(screen, session.logs["video"]).unknown == 0
            assert any(f.keyframe for f in session.logs["video"].frames)
    await no_pulls(http, three)


@contextlib.asynccontextmanager
async def extra_hub(three: list[HubProcess], redis_url: str, **env: str) -> AsyncIterator[HubProcess]:
    """A fourth process of the cluster, to be killed."""
    doomed = start_hub(three[0].data, "--redis", redis_url, env=cluster_env(**env))
    try:
        yield doomed
    finally:
        doomed.stop()


def kill(hub: HubProcess) -> None:
    hub.proc.kill()  # SIGKILL: no DTLS goodbye, no DELETE, no last word to Redis
    hub.proc.wait(5)


async def frames_flow(log: bot.TrackLog, timeout: float = 10) -> None:
    seen = len(log.frames)
    await wait_until(lambda: len(log.frames) >= seen + 10, timeout)


async def test_a_killed_relay_ends_only_its_own_viewers(
    three: list[HubProcess], redis_url: str, http: aiohttp.ClientSession
) -> None:
    host, p2, p3 = three
    token = host.sign("m-cluster-kill", "heping", "mediator")
    video = bot.SyntheticVideo("vp8", 160, 120, 15)
    async with AsyncExitStack() as stack, extra_hub(three, redis_url) as doomed:
        publisher = await bot.publish(http, host.url, token, "site-heping", [video])
        stack.push_async_callback(publisher.close)
        watching = {
            name: await bot.view(http, hub.url, token, publisher.resource_id, kinds=("video",))
            for name, hub in (("host", host), ("p2", p2), ("p3", p3), ("doomed", doomed), ("doomed2", doomed))
        }
        for session in watching.values():
            stack.push_async_callback(session.pc.close)
        await wait_until(lambda: all(s.logs["video"].first_keyframe_at for s in watching.values()), 20)
        assert (await health(http, doomed))["relays"] == 1
        assert (await health(http, host))["subscriptions"] == 3  # its own viewer, P2's pull, the doomed one's

        kill(doomed)
        killed_at = time.monotonic()
        # The host ends the dead process's pull once the cluster has swept it
        # (within the node TTL), not after ICE consent runs out (30 s).
        await wait_until_counts(http, host, timeout=3 * NODE_TTL + 5, subscriptions=2)
        assert time.monotonic() - killed_at < 3 * NODE_TTL + 5
        # Its viewers get nothing more; everyone else's frames go on, and they stay connected.
        doomed_frames = {n: len(watching[n].logs["video"].frames) for n in ("doomed", "doomed2")}
        for name in ("host", "p2", "p3"):
            await frames_flow(watching[name].logs["video"])
            assert watching[name].pc.connectionState == "connected"
        assert {n: len(watching[n].logs["video"].frames) for n in doomed_frames} == doomed_frames
        counts = await health(http, p2)
        assert counts["relays"] == 1 and counts["subscriptions"] == 2  # its viewer and P3's pull
        for name in ("host", "p2", "p3"):
            got = await delivered(video, watching[name])
            assert got.unknown == 0 and got.in_order, (name, got)
            await watching[name].close()
    await no_pulls(http, three)


async def test_a_stream_republished_after_its_host_was_killed_is_viewable_everywhere(
    three: list[HubProcess], redis_url: str, http: aiohttp.ClientSession
) -> None:
    p1, p2, p3 = three
    token = p1.sign("m-cluster-again", "xiazhai", "mediator")
    room = "site-xiazhai"
    async with AsyncExitStack() as stack, extra_hub(three, redis_url) as doomed:
        first = bot.SyntheticVideo("vp8", 160, 120, 15)
        publisher = await bot.publish(http, doomed.url, token, room, [first])
        stack.push_async_callback(publisher.pc.close)
        before = [await bot.view(http, hub.url, token, publisher.resource_id, kinds=("video",)) for hub in three]
        for session in before:
            stack.push_async_callback(session.pc.close)
        await wait_until(lambda: all(s.logs["video"].first_keyframe_at for s in before), 20)

        kill(doomed)
        # Swept: the stream leaves the room, and every relayed viewer's session ends cleanly.
        await wait_until(lambda: all(s.pc.connectionState == "closed" for s in before), 3 * NODE_TTL + 5)
        await no_pulls(http, three)
        for hub in three:
            assert await streams_of(http, hub, token, room) == []

        # The publisher comes back through another process: a new stream, seen on every process.
        second = bot.SyntheticVideo("vp8", 160, 120, 15)
        again = await bot.publish(http, p2.url, token, room, [second])
        stack.push_async_callback(again.close)
        for hub in three:
            assert [s["id"] for s in await streams_of(http, hub, token, room)] == [again.resource_id]
        after = [await bot.view(http, hub.url, token, again.resource_id, kinds=("video",)) for hub in three]
        for session in after:
            stack.push_async_callback(session.close)
        await wait_until(lambda: all(s.logs["video"].first_keyframe_at for s in after), 20)
        for session in after:
            await frames_flow(session.logs["video"])
        assert [(await health(http, hub))["relays"] for hub in three] == [1, 0, 1]  # P3 pulls from P2, the host
        for session in after:
            got = await delivered(second, session)
            assert got.unknown == 0 and got.in_order and got.matched >= 10, got
            await session.close()
        await again.close()
    await no_pulls(http, three)


def test_a_user_token_cannot_name_a_hub_process(tmp_path: Path) -> None:
    """The sweep ends the WHEP sessions of hub processes that died by their
    viewer's name: a user must not be able to carry one."""
    keys = Settings(data=tmp_path).keys()
    with pytest.raises(TokenError, match="hub process"):
        verify(keys, issue(keys, Claims(user=f"{NODE_SUBJECT}c0ffee00", site="heping", role="mediator")))


class AiortcUpstream:
    """An upstream hub's half of a pull, as a plain aiortc peer sending a live track."""

    def __init__(self, track: bot.EncodedTrack) -> None:
        self.pc = RTCPeerConnection(bot.NO_ICE_SERVERS)
        self.pc.addTrack(track)
        self.offer = self.answer = ""

    async def exchange(self, offer: str) -> str:
        self.offer = offer
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        self.answer = self.pc.localDescription.sdp
        return self.answer

    async def close(self) -> None:
        await self.pc.close()


async def test_a_pull_carries_no_send_times() -> None:
    """A pull asks for no abs-send-time: its only use is bandwidth estimation
    (REMB), which an upstream that forwards without encoding ignores."""
    upstream = AiortcUpstream(bot.SyntheticVideo("vp8", 160, 120, 15))
    pc, sources = await open_pull(bot.NO_ICE_SERVERS, ["video"], upstream, 0.3, 10)
    try:
        assert "a=extmap" in upstream.offer and ABS_SEND_TIME not in upstream.offer
        assert ABS_SEND_TIME not in upstream.answer
        packets: list[Any] = []
        sources["video"].forward = packets.append  # type: ignore[method-assign]
        await wait_until(lambda: len(packets) >= 20, 10)
        assert all(p.extensions.abs_send_time is None for p in packets)
    finally:
        await pc.close()
        await upstream.close()


async def test_a_killed_middle_relay_leaves_the_viewers_below_it_watching(
    three: list[HubProcess], redis_url: str, http: aiohttp.ClientSession
) -> None:
    """origin -> middle -> below, and the middle relay is killed: the viewer
    on `below` is below's own, so below pulls the stream from its host
    instead and the viewer's session goes on, with every frame as sent; so
    does a viewer of a simulcast stream (its layers pulled anew)."""
    host = three[0]
    token = host.sign("m-cluster-middle", "zhaduo", "mediator")
    video = bot.SyntheticVideo("vp8", 160, 120, 15)
    async with AsyncExitStack() as stack, extra_hub(three, redis_url) as middle:
        below = start_hub(host.data, "--redis", redis_url, env=cluster_env(HUB_UPSTREAM=middle.url))
        stack.callback(below.stop)
        publisher = await bot.publish(http, host.url, token, "site-zhaduo", [video])
        stack.push_async_callback(publisher.close)
        layered = SimulcastVideo("vp8", 320, 240, 15)
        simulcast = await bot.publish(http, host.url, token, "site-zhaduo", [layered])
        stack.push_async_callback(simulcast.close)
        viewer = await bot.view(http, below.url, token, publisher.resource_id, kinds=("video",))
        stack.push_async_callback(viewer.pc.close)
        layered_viewer = await bot.view(http, below.url, token, simulcast.resource_id, kinds=("video",))
        stack.push_async_callback(layered_viewer.pc.close)
        log, layered_log = viewer.logs["video"], layered_viewer.logs["video"]
        await wait_until(lambda: log.first_keyframe_at is not None and layered_log.first_keyframe_at is not None, 20)
        await frames_flow(log)
        assert (await health(http, middle))["relays"] == 2 and (await health(http, below))["relays"] == 2
        assert (await health(http, host))["subscriptions"] == 2  # the middle's pulls

        kill(middle)
        killed_at, before = time.monotonic(), len(log.frames)
        # Frames again within the node TTL, two sweeps and a new pull; ICE consent
        # alone would end the viewer's session after 30 s.
        layered_before = len(layered_log.frames)
        await frames_flow(log, timeout=4 * NODE_TTL + 10)
        assert time.monotonic() - killed_at < 4 * NODE_TTL + 10
        await wait_until(lambda: len(layered_log.frames) >= layered_before + 10, 10)
        assert viewer.pc.connectionState == "connected" and layered_viewer.pc.connectionState == "connected"
        # below now pulls from the host, which has ended the dead middle's pulls.
        await wait_until_counts(http, host, timeout=3 * NODE_TTL + 5, subscriptions=2)
        assert (await health(http, below))["relays"] == 2
        await frames_flow(log)
        sent = {key for layer in layered.layers.values() for key in layer.sent}
        assert all(f.key in sent for f in layered_log.frames), "a simulcast frame that no layer sent"
        await layered_viewer.close()
        await simulcast.close()
        got = await delivered(video, viewer)
        assert got.unknown == 0 and got.in_order, got
        # Frames sent after the kill came through the new pull (every frame is a known one).
        after = [f for f in log.frames[before:] if video.sent[f.key].sent_at > killed_at]
        assert after[0].keyframe, "the new run of packets starts at a keyframe"
        assert len(after) >= 15
        # One run of sequence numbers for the viewer across both pulls: a jump
        # would count tens of thousands of packets lost.
        stats = await viewer.pc.getStats()
        lost = [s.packetsLost for s in stats.values() if s.type == "inbound-rtp"]
        assert lost and max(lost) < 200, lost
        await viewer.close()
        await wait_until_counts(http, below, relays=0, subscriptions=0, reader_sockets=0)

        # A new viewer on below, its upstream still dead: pulled from the host at once.
        again = await bot.view(http, below.url, token, publisher.resource_id, kinds=("video",))
        stack.push_async_callback(again.pc.close)
        await wait_until(lambda: again.logs["video"].first_keyframe_at is not None, 20)
        await frames_flow(again.logs["video"])
        got = await delivered(video, again)
        assert got.unknown == 0 and got.in_order, got
        await again.close()
        await publisher.close()
        await wait_until_counts(http, below, relays=0, subscriptions=0, reader_sockets=0)
    await no_pulls(http, three)
