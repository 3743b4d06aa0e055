"""Video health diagnostics: the measures on synthetic pictures, the
hysteresis, and a real hub raising exactly the expected alerts for a black,
a frozen and a normal WHIP feed, to the operators of their county only."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import aiohttp
import cv2
import numpy as np
import pytest

from client.bot import SyntheticVideo, pattern_image, publish
from hub.monitoring.health import Health, conditions, measure

from .conftest import EventSocket, HubProcess, start_hub, wait_until
from .test_snapshots import monitor

W, H = 320, 240


def bgr(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)


def reencoded(picture: np.ndarray, quality: int) -> np.ndarray:
    """The same picture through a lossy codec again, as a frozen feed's next keyframe is."""
    _, data = cv2.imencode(".jpg", picture, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.imdecode(data, cv2.IMREAD_COLOR)


def test_a_normal_picture_shows_nothing() -> None:
    assert conditions(measure(bgr(pattern_image(W, H, 7))), measure(bgr(pattern_image(W, H, 0)))) == set()


def test_black_even_with_a_caption() -> None:
    black = np.zeros((H, W, 3), np.uint8)
    assert conditions(measure(black), None) == {"black"}
    cv2.putText(black, "CAM 01", (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1)
    # Black, not also frozen or covered: a picture without content is not judged further.
    assert conditions(measure(black), measure(black)) == {"black"}


def test_covered_is_uniform_but_not_black() -> None:
    for level in (40, 128, 220):
        grey = np.full((H, W, 3), level, np.uint8)
        noisy = np.clip(grey + np.random.default_rng(level).normal(0, 3, grey.shape), 0, 255).astype(np.uint8)
        assert conditions(measure(noisy), measure(noisy)) == {"covered"}


def test_blur() -> None:
    sharp = bgr(pattern_image(640, 480, 3))
    blurred = cv2.resize(cv2.GaussianBlur(sharp, (0, 0), 6), (W, H), interpolation=cv2.INTER_AREA)
    assert "blur" in conditions(measure(blurred), None)
    assert "blur" not in conditions(measure(cv2.resize(sharp, (W, H), interpolation=cv2.INTER_AREA)), None)


def test_frozen_tolerates_reencoding_but_not_motion() -> None:
    picture = bgr(pattern_image(W, H, 5))
    first, again = reencoded(picture, 85), reencoded(picture, 55)
    assert float(cv2.absdiff(first, again).mean()) > 0.5  # not bit-identical
    assert conditions(measure(again), measure(first)) == {"frozen"}
    moved = reencoded(bgr(pattern_image(W, H, 6)), 55)  # one frame of the pattern later
    assert conditions(measure(moved), measure(first)) == set()


def test_alerts_need_two_snapshots_to_raise_and_to_clear() -> None:
    black = measure(np.zeros((H, W, 3), np.uint8))
    normal = [measure(bgr(pattern_image(W, H, i * 10))) for i in range(6)]
    health = Health()
    assert health.update(black, 1.0) == ({}, {})
    assert health.update(normal[0], 2.0) == ({}, {})  # one black picture raises nothing
    assert health.update(black, 3.0) == ({}, {})
    assert health.update(black, 4.0) == ({"black": 3.0}, {})  # dated by the first black snapshot
    assert health.update(black, 5.0) == ({}, {})
    assert health.update(normal[1], 6.0) == ({}, {})  # one good picture clears nothing
    assert health.update(black, 7.0) == ({}, {})
    assert health.update(normal[2], 8.0) == ({}, {})
    assert health.update(normal[3], 9.0) == ({}, {"black": 8.0})
    assert health.active == {}


async def wait_for(log: EventSocket, predicate: Callable[[], bool], timeout: float) -> None:
    try:
        await wait_until(predicate, timeout)
    except TimeoutError:
        pytest.fail(f"timed out; {history(log)}")


# -- real feeds through a real hub ---------------------------------------------


@pytest.fixture(scope="module")
def health_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProcess]:
    process = start_hub(tmp_path_factory.mktemp("health"), env={"HUB_SNAPSHOT_SECONDS": "1"})
    yield process
    process.stop()


class FreezablePicture:
    """The moving test pattern, stuck on one frame until `moving` is set."""

    def __init__(self) -> None:
        self.moving = False

    def __call__(self, width: int, height: int, index: int) -> np.ndarray:
        return pattern_image(width, height, index if self.moving else 5)


def black(width: int, height: int, index: int) -> np.ndarray:
    return np.zeros((height, width, 3), np.uint8)


def alerts(log: EventSocket, kind: str) -> set[tuple[str, str]]:
    return {(e["alert"]["stream_id"], e["alert"]["kind"]) for e in log.of(kind)}  # type: ignore[index]


def history(log: EventSocket) -> str:
    """What a failing assertion shows: the alert events, and snapshots per stream."""
    shots: dict[str, int] = {}
    for event in log.of("snapshot"):
        shots[str(event["stream_id"])] = shots.get(str(event["stream_id"]), 0) + 1
    return f"alerts: {[(e['type'], e['alert']) for e in log.messages if 'alert' in e]}; snapshots: {shots}"


async def test_black_frozen_and_normal_feeds_raise_exactly_their_alerts(
    http: aiohttp.ClientSession, health_hub: HubProcess
) -> None:
    hub = health_hub
    own = await monitor(http, hub, hub.token("op-guinan", "guinan", "operator"))
    other = await monitor(http, hub, hub.token("op-golmud", "golmud", "operator"))
    freezable = FreezablePicture()
    feeds = {
        # 320x240: a snapshot's own size, and three live encoders cheap enough for a busy machine.
        "black": ("site-rianxiuma", SyntheticVideo("vp8", 320, 240, picture=black)),
        "frozen": ("site-shangzhai", SyntheticVideo("h264", 320, 240, picture=freezable)),
        "normal": ("site-guomaying", SyntheticVideo("vp8", 320, 240)),
    }
    sessions = {}
    try:
        for name, (room, track) in feeds.items():
            token = hub.token(f"t-{name}", room.removeprefix("site-"), "terminal")
            sessions[name] = await publish(http, hub.url, token, room, [track])
        ids = {name: s.resource_id for name, s in sessions.items()}
        expected = {(ids["black"], "black"), (ids["frozen"], "frozen")}
        await wait_for(own, lambda: alerts(own, "alert-raised") >= expected, 60)

        operator = {"Authorization": f"Bearer {hub.token('op-guinan', 'guinan', 'operator')}"}
        async with http.get(f"{hub.url}/api/alerts", headers=operator) as response:
            active = await response.json()
        assert {(a["stream_id"], a["kind"]) for a in active} == expected, history(own)
        black_alert = next(a for a in active if a["kind"] == "black")
        assert black_alert["id"] == f"{ids['black']}:black"
        assert black_alert["site_id"] == "rianxiuma" and "camera_id" not in black_alert
        assert black_alert["since"] <= next(e["alert"]["since"] for e in own.of("alert-raised"))  # type: ignore[index]

        freezable.moving = True
        await wait_for(own, lambda: alerts(own, "alert-cleared") >= {(ids["frozen"], "frozen")}, 30)
        cleared = next(e["alert"] for e in own.of("alert-cleared"))
        assert cleared["until"] > cleared["since"]  # type: ignore[index]
        # Two more periods: the normal feed, and the frozen one now moving, stay quiet.
        await asyncio.sleep(2.5)
        assert alerts(own, "alert-raised") == expected, history(own)
        assert alerts(own, "alert-cleared") == {(ids["frozen"], "frozen")}
        async with http.get(f"{hub.url}/api/alerts?site=guomaying", headers=operator) as response:
            assert {(a["stream_id"], a["kind"]) for a in await response.json()} == {(ids["black"], "black")}

        golmud = {"Authorization": f"Bearer {hub.token('op-golmud', 'golmud', 'operator')}"}
        async with http.get(f"{hub.url}/api/alerts", headers=golmud) as response:
            assert await response.json() == []
        async with http.get(f"{hub.url}/api/alerts?site=guinan", headers=golmud) as response:
            assert response.status == 403
        assert not [e for e in other.messages if e["type"] in ("snapshot", "alert-raised", "alert-cleared")]
    finally:
        for session in sessions.values():
            await session.close()
    # An ended stream's alerts end with it.
    await wait_for(own, lambda: alerts(own, "alert-cleared") >= {(ids["black"], "black")}, 10)
    await own.close()
    await other.close()
