"""SDP offers: a real aiortc offer, mutated line by line; and the in-process
target that answers them with the hub's Router, as WHIP and WHEP do."""

from __future__ import annotations

import asyncio
import functools
import re

from aiortc import RTCPeerConnection
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from hypothesis import given
from hypothesis import strategies as st

from hub.media.ice import use_addresses
from hub.media.router import Router, SdpError, check_offer

from .core import target

# Offers and answers name only loopback: the hub's ICE agent checks every candidate it is given.
use_addresses(["127.0.0.1"])

MAX_SDP_BYTES = 20_000

_LINES = [
    "m=video 9 UDP/TLS/RTP/SAVPF 96 97",
    "m=audio 0 RTP/AVP 0",
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
    "m=video 9 UDP/TLS/RTP/SAVPF",
    "a=rtpmap:96 H264/90000",
    "a=rtpmap:96 VP8",
    "a=rtpmap:abc VP8/90000",
    "a=rtpmap:111 opus/48000/2",
    "a=rtpmap:0 PCMU/8000",
    "a=rtpmap:97 rtx/90000",
    "a=fmtp:97 apt=200",
    "a=fmtp:97 apt=abc",
    "a=fmtp:102 packetization-mode=1;profile-level-id=42e01f",
    "a=rtcp-fb:96 nack pli",
    "a=rtcp-fb:* goog-remb",
    "a=setup:actpass",
    "a=setup:passive",
    "a=setup:bogus",
    "a=fingerprint:sha-256 00:11",
    "a=fingerprint:md5",
    "a=ice-ufrag:",
    "a=ice-pwd:x",
    "a=ice-lite",
    "a=candidate:0 1 UDP 2122252543 127.0.0.1 9 typ host",
    "a=candidate:1 1 TCP 2122252543 127.0.0.1 9 typ host tcptype active",
    "a=candidate:garbage",
    "a=end-of-candidates",
    "a=group:BUNDLE 0 1 7",
    "a=group:BUNDLE",
    "a=mid:",
    "a=mid:0",
    "a=msid:- -",
    "a=ssrc:abc cname:x",
    "a=ssrc:1 cname:x",
    "a=ssrc-group:FID 1",
    "a=ssrc-group:FID 1 2 3",
    "a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid",
    "a=extmap:x y",
    "a=extmap:300 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
    "a=sendonly",
    "a=recvonly",
    "a=sendrecv",
    "a=inactive",
    "a=rtcp-mux",
    "a=rtcp:9 IN IP4 0.0.0.0",
    "a=rtcp:x",
    "a=sctp-port:abc",
    "a=max-message-size:-1",
    "a=rid:1 send",
    "a=simulcast:send 1;2",
    "b=AS:-5",
    "c=IN IP4 999.1.1.1",
    "c=IN IP6 ::1",
    "c=IN",
    "t=0 0",
    "o=- 0 0 IN IP4 127.0.0.1",
    "o=",
    "s=-",
    "v=1",
    "",
    "=",
    "a=",
    "x=unknown",
]

_LOOPBACK = re.compile(r"^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$")


def loopback_only(sdp: str) -> str:
    """Drop every candidate line not naming a loopback address: the hub would
    send ICE checks to it (or resolve it, for an mDNS or DNS name)."""
    kept = []
    for line in sdp.split("\r\n"):
        if "candidate" in line.lower() and "end-of-candidates" not in line.lower():
            fields = line.split()
            if len(fields) < 5 or not _LOOPBACK.match(fields[4]):
                continue
        kept.append(line)
    return "\r\n".join(kept)


async def make_offer(kinds: tuple[str, ...]) -> str:
    pc = RTCPeerConnection()
    for kind in kinds:
        pc.addTransceiver(kind, direction="sendonly" if kinds == ("video", "audio") else "recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


@functools.cache
def real_offers() -> dict[str, str]:
    """A publisher's offer (video and audio, sendonly) and a viewer's (recvonly), made by aiortc."""
    loop = asyncio.new_event_loop()
    try:
        return {
            "whip": loop.run_until_complete(make_offer(("video", "audio"))),
            "whep": loop.run_until_complete(make_offer(("video", "audio", "video"))),
        }
    finally:
        loop.close()


@st.composite
def mutated_offers(draw: st.DrawFn, door: str) -> str:
    """The door's real offer with lines dropped, repeated, swapped, replaced, edited
    or added from a list of troublesome ones, or cut short; candidates stay on loopback."""
    lines = real_offers()[door].split("\r\n")
    for _ in range(draw(st.integers(0, 6))):
        action = draw(st.sampled_from(["drop", "dup", "swap", "replace", "insert", "edit", "cut"]))
        at = draw(st.integers(0, len(lines) - 1)) if lines else 0
        if not lines and action != "insert":
            continue
        if action == "drop":
            del lines[at]
        elif action == "dup":
            lines.insert(at, lines[at])
        elif action == "swap":
            other = draw(st.integers(0, len(lines) - 1))
            lines[at], lines[other] = lines[other], lines[at]
        elif action in ("replace", "insert"):
            new = draw(st.sampled_from(_LINES) | st.text(max_size=30))
            if action == "replace":
                lines[at] = new
            else:
                lines.insert(at, new)
        elif action == "edit":
            line = lines[at]
            pos = draw(st.integers(0, len(line)))
            lines[at] = line[:pos] + draw(st.text(max_size=5)) + line[pos + draw(st.integers(0, 5)) :]
        else:
            lines = lines[: at + 1]
            lines[-1] = lines[-1][: draw(st.integers(0, len(lines[-1])))]
    return loopback_only("\r\n".join(lines))


#: (door, offer): a mutated WHIP or WHEP offer.
door_offers = st.sampled_from(["whip", "whep"]).flatmap(lambda door: st.tuples(st.just(door), mutated_offers(door)))


@functools.cache
def _router() -> tuple[asyncio.AbstractEventLoop, Router, str]:
    """A router and a VP8 stream it hosts (fed by no one) for WHEP offers to view."""
    loop = asyncio.new_event_loop()
    router = Router(None, max_backlog=100_000, keyframe_interval=1.0, ice_servers=[], connect_timeout=30.0)
    vp8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
    media, _ = router.publish_local(vp8, lambda: None)
    return loop, router, media.id


async def _answer_offer(router: Router, stream_id: str, door: str, offer: str) -> None:
    before = router.counts()
    try:
        check_offer(offer, MAX_SDP_BYTES)
        if door == "whip":
            media, answer = await router.publish(offer)
            await router.end_stream(media.id)
        else:
            subscription, answer = await router.view(stream_id, offer, "fuzz")
            await router.end_view(subscription.id)
        assert answer.startswith("v=0"), answer
    except SdpError:
        assert router.counts() == before, "a refused offer left a stream or subscription behind"


@target(ci_examples=150)
@given(offer=door_offers)
def fuzz_sdp_offers(_: object, offer: tuple[str, str]) -> None:
    """An offer through check_offer and the Router (aiortc's SDP parser as `_answer`
    uses it) is answered or refused with SdpError, and a refused one leaves nothing."""
    door, offer = offer
    loop, router, stream_id = _router()
    loop.run_until_complete(asyncio.wait_for(_answer_offer(router, stream_id, door, offer), 30))
