"""Real aiortc peers on an in-process Router, for tests that reach inside the hub or a peer."""

from __future__ import annotations

from collections.abc import Callable

from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCSessionDescription
from aiortc.rtp import RtpPacket

from hub.media.router import Router, StreamMedia, SubscriptionMedia


def tap_rtp(receiver: RTCRtpReceiver, seen: Callable[[RtpPacket], None]) -> None:
    """`seen` gets each RTP packet that reaches `receiver` through aiortc's queue, before aiortc handles it."""
    handle = receiver._handle_rtp_packet

    async def arrive(packet: RtpPacket, arrival_time_ms: int) -> None:
        seen(packet)
        await handle(packet, arrival_time_ms)

    receiver._handle_rtp_packet = arrive  # type: ignore[method-assign]


async def publish_and_view(
    router: Router, publisher: RTCPeerConnection, viewer: RTCPeerConnection
) -> tuple[StreamMedia, SubscriptionMedia]:
    """`publisher` publishes into the router and `viewer` views its stream, offers and answers in process."""
    await publisher.setLocalDescription(await publisher.createOffer())
    stream, answer = await router.publish(publisher.localDescription.sdp)
    await publisher.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    await viewer.setLocalDescription(await viewer.createOffer())
    subscription, answer = await router.view(stream.id, viewer.localDescription.sdp, "viewer")
    await viewer.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    return stream, subscription
