"""Relays: a hub process serves viewers of a stream another process hosts by
pulling it once (real hub processes sharing a real redis-server, aiortc peers
over loopback, frames compared by digest)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest

from client import bot
from client.simulcast import SimulcastVideo
from hub.core.tokens import Claims, TokenError, issue, issue_node, verify, verify_node

from .conftest import HubProcess, free_port, start_hub, wait_until
from .test_simulcast import Pictures

CLUSTER_SECRET = secrets.token_urlsafe(32)
NODE_TTL = 2.0


def cluster_env(**more: str) -> dict[str, str]:
    # A short heartbeat, so that a killed process is swept within seconds, and
    # a short linger, so that an idle relay ends soon.
    return {
        "HUB_CLUSTER_SECRET": CLUSTER_SECRET,
        "HUB_NODE_TTL": str(NODE_TTL),
        "HUB_RELAY_LINGER_SECONDS": "1",
    } | more


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[dict[str, HubProcess]]:
    """origin and b pull from the host; c pulls through b (a cascade).
    One data directory: every process verifies the same users' tokens."""
    data = tmp_path_factory.mktemp("cluster")
    hubs: dict[str, HubProcess] = {}
    try:
        hubs["origin"] = start_hub(data, "--redis", redis_url, env=cluster_env())
        hubs["b"] = start_hub(data, "--redis", redis_url, env=cluster_env())
        hubs["c"] = start_hub(data, "--redis", redis_url, env=cluster_env(HUB_UPSTREAM=hubs["b"].url))
        yield hubs
    finally:
        for hub in hubs.values():
            hub.stop()


async def health(http: aiohttp.ClientSession, hub: HubProcess) -> dict[str, Any]:
    async with http.get(f"{hub.url}/healthz") as r:
        assert r.status == 200
        return dict(await r.json())


async def counters(http: aiohttp.ClientSession, hub: HubProcess) -> dict[str, float]:
    """The process's hub_* counters from /metrics, by name less _total."""
    async with http.get(f"{hub.url}/metrics") as r:
        lines = (await r.text()).splitlines()
    pairs = (line.split(" ") for line in lines if line.startswith("hub_") and line.count(" ") == 1)
    return {name.removesuffix("_total"): float(value) for name, value in pairs}


async def delivered(publisher_track: bot.EncodedTrack, viewer: bot.Session, kind: str = "video") -> bot.Delivery:
    log = viewer.logs[kind]
    first_key = next(f for f in log.frames if f.keyframe or kind == "audio")
    return bot.compare(publisher_track, log, since=publisher_track.sent[first_key.key].sent_at)


async def test_two_viewers_on_another_process_share_one_pull(cluster, http: aiohttp.ClientSession):
    origin, b = cluster["origin"], cluster["b"]
    token = origin.sign("m-relay1", "heping", "mediator")
    video = bot.SyntheticVideo("vp8", 320, 240, 30, frames=150)
    audio = bot.SyntheticAudio(frames=250)
    publisher = await bot.publish(http, origin.url, token, "site-heping", [video, audio])
    viewers = []
    try:
        viewers = list(await asyncio.gather(*(bot.view(http, b.url, token, publisher.resource_id) for _ in range(2))))
        # Served by b itself: no redirect to the host.
        assert all(v.location.startswith(f"{b.url}/whep/") for v in viewers)
        counts = await health(http, b)
        assert counts["relays"] == 1 and counts["subscriptions"] == 2 and counts["streams"] == 0
        assert counts["reader_sockets"] == 1  # the pull's one ICE socket (127.0.0.1), read beside b's loop
        assert (await health(http, origin))["subscriptions"] == 1  # the one pull
        await wait_until(lambda: video.readyState == "ended", timeout=30)
        await asyncio.sleep(0.5)  # the last frames in flight
        for viewer in viewers:
            got = await delivered(video, viewer)
            assert got.sent >= 100 and got.ratio >= 0.95 and got.in_order, got
            assert got.unknown == 0  # byte-identical: nothing re-encoded on either hop
            sound = await delivered(audio, viewer, "audio")
            assert sound.ratio >= 0.95 and sound.unknown == 0, sound
        # b handled most pulled packets in C, through the door's express lane.
        figures = await counters(http, b)
        assert figures["hub_packets_express"] >= 0.9 * figures["hub_packets_received"] > 0, figures

        # A client that asks to go to the host gets the 307 it asked for.
        async with http.post(
            f"{b.url}/whep/{publisher.resource_id}?redirect=1",
            data="v=0",
            allow_redirects=False,
            headers=bot._auth(token) | {"Content-Type": "application/sdp"},
        ) as r:
            assert r.status == 307
            assert r.headers["Location"] == f"{origin.url}/whep/{publisher.resource_id}?redirect=1"

        # The last viewer leaving ends the pull after the linger, at both ends.
        await viewers[0].close()
        await asyncio.sleep(1.5)
        assert (await health(http, b))["relays"] == 1  # one viewer is left
        await viewers[1].close()
        viewers = []
        assert (await health(http, b))["relays"] == 1  # lingering
        for _ in range(50):
            if (await health(http, b))["relays"] == 0 and (await health(http, origin))["subscriptions"] == 0:
                break
            await asyncio.sleep(0.2)
        assert (await health(http, b))["relays"] == 0 and (await health(http, b))["reader_sockets"] == 0
        assert (await health(http, origin))["subscriptions"] == 0
    finally:
        for viewer in viewers:
            await viewer.close()
        await publisher.close()


async def test_a_cascade_pulls_once_per_hop_and_ends_when_the_publisher_does(cluster, http: aiohttp.ClientSession):
    origin, b, c = cluster["origin"], cluster["b"], cluster["c"]
    token = origin.sign("m-relay2", "minkang", "mediator")
    video = bot.SyntheticVideo("vp8", 320, 240, 30, frames=150)
    publisher = await bot.publish(http, origin.url, token, "site-minkang", [video])
    viewer = await bot.view(http, c.url, token, publisher.resource_id, kinds=("video",))
    try:
        assert viewer.location.startswith(f"{c.url}/whep/")
        # c pulls through b (its upstream), b from the host: one session per hop.
        assert (await health(http, c))["relays"] == 1
        b_counts = await health(http, b)
        assert b_counts["relays"] == 1 and b_counts["subscriptions"] == 1 and b_counts["reader_sockets"] == 1
        assert (await health(http, origin))["subscriptions"] == 1
        await wait_until(lambda: video.readyState == "ended", timeout=30)
        await asyncio.sleep(0.5)
        got = await delivered(video, viewer)
        assert got.sent >= 100 and got.ratio >= 0.95 and got.in_order and got.unknown == 0, got

        # The publisher ends: every hop ends, and the viewer's session closes.
        await publisher.close()
        await wait_until(lambda: viewer.pc.connectionState == "closed", timeout=10)
        for hub in (b, c):
            await wait_until_counts(http, hub, relays=0, subscriptions=0, reader_sockets=0)
    finally:
        await viewer.pc.close()
        await publisher.pc.close()


async def choice(http: aiohttp.ClientSession, viewer: bot.Session) -> dict[str, Any]:
    async with http.get(viewer.location, headers=bot._auth(viewer.token)) as r:
        assert r.status == 200, await r.text()
        return dict(await r.json())


async def test_a_relay_pulls_every_simulcast_layer_and_its_viewers_choose(cluster, http: aiohttp.ClientSession):
    """A viewer with a small tile on b, and one on c (pulling through b), get
    the low layer of a simulcast stream published on the origin; a viewer on
    b without a tile the top one. Frames decode, byte for byte the layer's."""
    origin, b, c = cluster["origin"], cluster["b"], cluster["c"]
    token = origin.sign("m-relay6", "heping", "mediator")
    video, audio = SimulcastVideo("vp8", 320, 240, 15), bot.SyntheticAudio()
    publisher = await bot.publish(http, origin.url, token, "site-heping", [video, audio])
    viewers: list[bot.Session] = []
    pictures: list[Pictures] = []
    try:
        small, top, far = viewers = [
            await bot.view(http, hub.url, token, publisher.resource_id, kinds=("video", "audio"), decode=True)
            for hub in (b, b, c)
        ]
        pictures = [Pictures(viewer.pc.getReceivers()[0]) for viewer in viewers]
        for viewer in (small, far):
            async with http.patch(viewer.location, json={"width": 80, "height": 60}, headers=bot._auth(token)) as r:
                assert r.status == 200, await r.text()
        # One pull per hop: b from the origin, c from b.
        assert (await health(http, origin))["subscriptions"] == 1
        assert (await health(http, b))["relays"] == 1 and (await health(http, c))["relays"] == 1
        await wait_until(lambda: all(len(p.sizes) >= 30 for p in pictures), timeout=30)
        for viewer, rid in ((small, "q"), (far, "q"), (top, "f")):
            state = await choice(http, viewer)
            assert state["simulcast"] and state["layer"] == rid, state
            assert [(layer["rid"], layer["width"]) for layer in state["layers"]] == [("q", 80), ("h", 160), ("f", 320)]
        await asyncio.sleep(2)  # frames of the chosen layers since
    finally:
        for picture in pictures:
            picture.close()
        for viewer in viewers:
            await viewer.close()
        await publisher.close()
    for viewer, picture, rid, size in ((small, pictures[0], "q", (80, 60)), (top, pictures[1], "f", (320, 240)),
                                        (far, pictures[2], "q", (80, 60))):  # fmt: skip
        assert picture.sizes[-20:] == [size] * 20, picture.sizes[-20:]
        frames = viewer.logs["video"].frames
        layer = video.layers[rid]
        tail = [f for f in frames if f.key in layer.sent][-20:]
        assert len(tail) == 20 and frames[-1].key in layer.sent
        assert all(f.key in video.layers["q"].sent or f.key in video.layers["h"].sent or f.key in video.layers["f"].sent
                   for f in frames)  # fmt: skip
        sound = viewer.logs["audio"].frames  # the pull carries the audio beside the layers
        assert len(sound) > 100 and all(f.key in audio.sent for f in sound)


async def wait_until_counts(http: aiohttp.ClientSession, hub: HubProcess, timeout: float = 10, **want: int) -> None:
    counts: dict[str, Any] = {}
    for _ in range(int(timeout / 0.2)):
        counts = await health(http, hub)
        if all(counts[k] == v for k, v in want.items()):
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{hub.url}: {counts}, wanted {want}")


async def test_a_killed_host_ends_the_relayed_viewers(cluster, redis_url: str, tmp_path: Path, http):
    b = cluster["b"]
    doomed = start_hub(cluster["origin"].data, "--redis", redis_url, env=cluster_env())
    try:
        token = doomed.sign("m-relay3", "xiazhai", "mediator")
        video = bot.SyntheticVideo("vp8", 160, 120, 15)
        publisher = await bot.publish(http, doomed.url, token, "site-xiazhai", [video])
        viewer = await bot.view(http, b.url, token, publisher.resource_id, kinds=("video",))
        await wait_until(lambda: len(viewer.logs["video"].frames) > 10, timeout=10)
        doomed.proc.kill()  # SIGKILL: no DTLS goodbye, no DELETE
        doomed.proc.wait(5)
        # Swept within the node TTL (plus one sweep period): the viewer's session ends, the pull too.
        await wait_until(lambda: viewer.pc.connectionState == "closed", timeout=3 * NODE_TTL + 5)
        await wait_until_counts(http, b, relays=0, subscriptions=0, reader_sockets=0)
        await viewer.pc.close()
        await publisher.pc.close()
    finally:
        doomed.stop()


async def test_a_pull_that_fails_answers_502_and_leaves_nothing(cluster, redis_url: str, http):
    origin = cluster["origin"]
    # Its upstream is a port nobody listens on.
    stranded = start_hub(
        origin.data, "--redis", redis_url, env=cluster_env(HUB_UPSTREAM=f"http://127.0.0.1:{free_port()}")
    )
    # A host whose public URL (its node_url: where others pull from) nobody listens on either.
    unlisted = start_hub(
        origin.data, "--redis", redis_url, env=cluster_env(HUB_PUBLIC_URL=f"http://127.0.0.1:{free_port()}")
    )
    token = origin.sign("m-relay5", "heping", "mediator")
    publisher = await bot.publish(http, origin.url, token, "site-heping", [bot.SyntheticVideo("vp8", 160, 120, 15)])
    hidden = await bot.publish(http, unlisted.url, token, "site-heping", [bot.SyntheticVideo("vp8", 160, 120, 15)])
    try:
        # The upstream does not give the stream: it is pulled from its host instead.
        viewer = await bot.view(http, stranded.url, token, publisher.resource_id, kinds=("video",))
        await wait_until(lambda: viewer.logs["video"].first_keyframe_at is not None, 20)
        assert (await health(http, stranded))["relays"] == 1
        assert (await health(http, origin))["subscriptions"] == 1
        await viewer.close()
        await wait_until_counts(http, stranded, relays=0, subscriptions=0, reader_sockets=0)

        # Neither the upstream nor the host can be reached: 502, and nothing is left behind.
        with pytest.raises(bot.ClientError, match="502") as refused:
            await bot.view(http, stranded.url, token, hidden.resource_id, kinds=("video",))
        assert "could not be reached" in str(refused.value)
        counts = await health(http, stranded)
        assert counts["relays"] == 0 and counts["subscriptions"] == 0
        assert (await health(http, origin))["subscriptions"] == 0
        assert (await health(http, unlisted))["subscriptions"] == 0
    finally:
        await hidden.close()
        await publisher.close()
        unlisted.stop()
        stranded.stop()


async def test_only_a_cluster_token_pulls_and_only_at_the_whep_doors(cluster, http: aiohttp.ClientSession):
    origin = cluster["origin"]
    user = origin.sign("m-relay4", "heping", "mediator")
    publisher = await bot.publish(http, origin.url, user, "site-heping", [bot.SyntheticVideo("vp8", 160, 120, 15)])
    try:
        stream = f"{origin.url}/whep/{publisher.resource_id}"
        sdp = {"Content-Type": "application/sdp"}
        forged = issue_node("not-the-cluster-secret-" + "x" * 16, "intruder")
        async with http.post(stream, data="v=0", headers=bot._auth(forged) | sdp) as r:
            assert r.status == 401
        # The genuine credential reaches WHEP (here: a bad offer, so a 400 that changes nothing) ...
        node = issue_node(CLUSTER_SECRET, "peer")
        async with http.post(stream, data="v=0", headers=bot._auth(node) | sdp) as r:
            assert r.status == 400
        # ... and no other door.
        async with http.get(f"{origin.url}/api/streams/{publisher.resource_id}", headers=bot._auth(node)) as r:
            assert r.status == 401
    finally:
        await publisher.close()


def test_node_and_user_tokens_do_not_pass_for_each_other() -> None:
    secret = "s" * 32
    node = issue_node(secret, "n1")
    assert verify_node(secret, node).role == "node"
    with pytest.raises(TokenError):
        verify(secret, node)  # a user's door refuses a cluster token, even signed with the same secret
    with pytest.raises(TokenError):
        verify_node(secret, issue(secret, Claims(user="u", site="heping", role="admin")))
    # A token that claims the role without the cluster audience is no cluster token either.
    claimed = jwt.encode({"sub": "x", "role": "node", "exp": 2**40}, secret, algorithm="HS256")
    with pytest.raises(TokenError):
        verify_node(secret, claimed)
