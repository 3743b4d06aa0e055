"""Publishing over a weak link (network namespaces, tests/netem.py): a publisher behind random loss
and a rate limit still reaches its viewer without freezes, because the hub asks for what was lost
(NACK, answered with RTX) and for keyframes when a picture cannot be repaired."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from .conftest import HubProcess
from .netem import Namespace, Network
from .nsbot import BotProcess

HUB_PORT = 8080


def serve_hub(hub_ns: Namespace, hub_ip: str, tmp_path: Path) -> HubProcess:
    """A hub process inside `hub_ns`, listening and gathering ICE candidates on `hub_ip` only."""
    data = tmp_path / "hub"
    data.mkdir()
    log = data / "hub.log"
    env = {"HUB_ICE_ADDRESSES": json.dumps([hub_ip])}
    proc = hub_ns.python("-m", "hub", "serve", "--host", hub_ip, "--port", str(HUB_PORT), "--data", str(data),
                         env=os.environ | env, stdout=log.open("wb"), stderr=subprocess.STDOUT)  # fmt: skip
    hub_ns.wait_for_port(hub_ip, HUB_PORT, proc)
    return HubProcess(f"http://{hub_ip}:{HUB_PORT}", data, proc, log)


LOSS_PERCENT = 3
RATE_KBIT = 800
#: The stream: 320x240 at 30 fps, 300 kbit/s, so the limit leaves room for retransmissions and
#: keyframes, which aiortc sends as bursts of packets.
BITRATE = 300_000
#: Frames are counted per BIN seconds; the viewer may miss at most FREEZE seconds in a row, after SETTLE.
BIN, FREEZE, SETTLE = 0.2, 1.0, 5.0


def test_a_publisher_behind_loss_and_a_rate_limit_reaches_its_viewer_without_freezes(network: Network, tmp_path: Path):
    hub_ns, router, publisher_ns, viewer_ns = (network.namespace() for _ in range(4))
    # The hub, the publisher and the viewer each hang off a router, as on a real network: the
    # hub has one address (10.77.1.1), the publisher's link is the weak one.
    router.forward()
    hub_link, uplink, downlink = (network.link(ns, router) for ns in (hub_ns, publisher_ns, viewer_ns))
    for link in (hub_link, uplink, downlink):
        network.route(link.a.namespace, link.b.address)
    hub_ip = hub_link.a.address
    # Both directions of the publisher's link lose packets: media and retransmissions on the way
    # in, NACKs and keyframe requests on the way out. Its sending side is rate limited.
    uplink.a.lose(LOSS_PERCENT)
    uplink.b.lose(LOSS_PERCENT)
    uplink.a.rate_limit(RATE_KBIT, queue_ms=200)

    hub = serve_hub(hub_ns, hub_ip, tmp_path)

    token = hub.sign("mediator-weak", "guomaying", "mediator")
    publisher = BotProcess(publisher_ns, "publish", hub.url, token, "site-rianxiuma", "--bitrate", str(BITRATE))
    stream = publisher.next(timeout=30)["connected"]  # a KeyError shows the bot's error
    viewer = BotProcess(viewer_ns, "view", hub.url, hub.sign("operator-weak", "guinan", "operator"), stream,
                        "--seconds", "15")  # fmt: skip
    assert "connected" in viewer.next(timeout=30)
    received = viewer.next(timeout=40)["received"]
    publisher.finish()
    report = publisher.next(timeout=30)
    sent = {key: at for key, at, _ in report["sent"]}

    assert received and all(key in sent for key, *_ in received), "frames arrive byte-identical"
    # Frames counted per 200 ms of the publisher's timeline, after the viewer's first 5 s: a freeze
    # is a run of bins in which the publisher sent frames and the viewer got none of them. (Bins of
    # the viewer's own clock would also count the times a busy machine starved the publisher.)
    start, end = sent[received[0][0]] + SETTLE, sent[received[-1][0]]
    seen = {int((sent[key] - start) / BIN) for key, *_ in received if sent[key] >= start}
    run, longest = 0, 0
    for b in sorted({int((at - start) / BIN) for at in sent.values() if start <= at <= end}):
        run = 0 if b in seen else run + 1
        longest = max(longest, run)
    assert longest * BIN <= FREEZE, f"the viewer missed {longest * BIN:.1f} s of the stream"
    # Of the frames sent while the viewer watched (after its first 5 s), it got at least 90 %.
    window = {key for key, at in sent.items() if start <= at <= end}
    got = {key for key, *_ in received} & window
    assert len(window) >= 30 and len(got) >= 0.9 * len(window), (len(got), len(window))
    # The link did lose packets, and the hub asked the publisher to resend them.
    assert report["retransmit_requests"] > 0, report["retransmit_requests"]
