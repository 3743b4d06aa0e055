"""Real aiortc peers on an in-process Router, for tests that reach inside the hub or a peer."""

from __future__ import annotations

from collections.abc import Callable

from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCSessionDescription
from aiortc.rtp import RtpPacket

from client import bot
from hub.media.router import Router, StreamMedia, SubscriptionMedia


def tap_rtp(receiver: RTCRtpReceiver, seen: Callable[[RtpPacket], None]) -> None:
    """`seen` gets each RTP packet that reaches `receiver` through aiortc's queue, before aiortc handles it."""
    handle = receiver._handle_rtp_packet

    async def arrive(packet: RtpPacket, arrival_time_ms: int) -> None:
        seen(packet)
        await handle(packet, arrival_time_ms)

    receiver._handle_rtp_packet = arrive  # type: ignore[method-assign]


def in_process(
    keyframe_interval: float = 0.5,
) -> tuple[Router, bot.SyntheticVideo, RTCPeerConnection, RTCPeerConnection]:
    """A Router in this process, a publisher of a small VP8 pattern and a viewer with one video
    receiver, not yet connected (`publish_and_view`)."""
    router = Router(
        None, max_backlog=1 << 20, keyframe_interval=keyframe_interval, ice_servers=[], connect_timeout=10.0
    )
    video = bot.SyntheticVideo("vp8", 160, 120, 30)
    publisher = RTCPeerConnection(bot.NO_ICE_SERVERS)
    publisher.addTransceiver(video, direction="sendonly").sender._send_keyframe = video.request_keyframe  # type: ignore[method-assign]
    viewer = RTCPeerConnection(bot.NO_ICE_SERVERS)
    viewer.addTransceiver("video", direction="recvonly")
    return router, video, publisher, viewer


async def publish_and_view(
    router: Router,
    publisher: RTCPeerConnection,
    viewer: RTCPeerConnection,
    shape: Callable[[str], str] = str,
) -> tuple[StreamMedia, SubscriptionMedia]:
    """`publisher` publishes into the router (its offer through `shape`) and `viewer` views its
    stream, offers and answers in process (each offer gathers all candidates: no trickle)."""
    await publisher.setLocalDescription(await publisher.createOffer())
    stream, answer = await router.publish(shape(publisher.localDescription.sdp))
    await publisher.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    await viewer.setLocalDescription(await viewer.createOffer())
    subscription, answer = await router.view(stream.id, viewer.localDescription.sdp, "viewer")
    await viewer.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    return stream, subscription
