"""The forwarding module's own rules, on real aiortc objects and real encoders."""

from __future__ import annotations

import fractions

import av
import numpy as np
import pytest
from aiortc import RTCCertificate, RTCDtlsTransport, RTCIceGatherer, RTCIceTransport, RTCRtpReceiver, RTCRtpSender
from aiortc.codecs import get_encoder
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

from hub.bot import pattern_image
from hub.rtpforward import TrackSink, TrackSource, is_keyframe_start

VP8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
H264 = RTCRtpCodecParameters(
    mimeType="video/H264",
    clockRate=90000,
    payloadType=102,
    parameters={"packetization-mode": "1", "profile-level-id": "42e01f"},
)


def encoded_frames(codec: str, count: int, keyframe_at: set[int]) -> list[av.Packet]:
    ctx = av.CodecContext.create(codec, "w")
    ctx.width, ctx.height, ctx.pix_fmt = 320, 240, "yuv420p"
    ctx.time_base = fractions.Fraction(1, 90000)
    ctx.framerate = fractions.Fraction(30)
    ctx.gop_size = 1000
    if codec == "libx264":
        ctx.options = {"preset": "ultrafast", "tune": "zerolatency"}
    packets = []
    for i in range(count):
        frame = av.VideoFrame.from_ndarray(pattern_image(320, 240, i), format="rgb24").reformat(format="yuv420p")
        frame.pts, frame.time_base = i * 3000, ctx.time_base
        if i in keyframe_at:
            frame.pict_type = av.video.frame.PictureType.I
        for packet in ctx.encode(frame):
            packet.time_base = ctx.time_base
            packets.append(packet)
    return packets


@pytest.mark.parametrize(("encoder", "codec"), [("libvpx", VP8), ("libx264", H264)])
def test_keyframe_start_found_in_real_packetized_frames(encoder: str, codec: RTCRtpCodecParameters):
    packer = get_encoder(codec)
    frames = encoded_frames(encoder, 12, keyframe_at={0, 7})
    starts = []
    for packet in frames:
        payloads, _ = packer.pack(packet)
        starts.append([is_keyframe_start(codec.mimeType.lower(), p) for p in payloads])
    keyframes = [i for i, s in enumerate(starts) if s[0]]
    assert keyframes == [0, 7]
    # Only the first packet of a keyframe starts it.
    assert not any(any(s[1:]) for s in starts)


def rtp(seq: int, payload: bytes) -> RtpPacket:
    return RtpPacket(payload_type=96, sequence_number=seq, timestamp=seq * 3000, ssrc=1, payload=payload)


@pytest.fixture
async def transport() -> RTCDtlsTransport:
    return RTCDtlsTransport(RTCIceTransport(RTCIceGatherer()), [RTCCertificate.generateCertificate()])


async def test_slow_viewer_drops_its_own_packets_and_waits_for_a_keyframe(transport: RTCDtlsTransport):
    source = TrackSource(RTCRtpReceiver("video", transport), "video", keyframe_interval=0)
    source.codec = VP8
    source._media_ssrc = 1
    slow = TrackSink(source, RTCRtpSender("video", transport), max_queue=8)
    roomy = TrackSink(source, RTCRtpSender("video", transport), max_queue=100)
    requests_at_join = source.keyframe_requests

    keyframe = b"\x10" + b"\x00" * 20  # S=1, partition 0, P=0
    delta = b"\x10\x01" + b"\x00" * 20  # P=1
    continuation = b"\x00\x01" + b"\x00" * 20
    packets = [rtp(0, keyframe)] + [rtp(i, continuation if i % 3 else delta) for i in range(1, 12)]
    for packet in packets:
        for sink in (slow, roomy):
            sink.push(packet)

    # Neither sink's writer ran, so the slow one overflowed at its 9th packet.
    assert len(roomy._queue) == 12
    assert len(slow._queue) == 0
    assert slow.stats.keyframe_waits == 1
    assert source.keyframe_requests == requests_at_join + 1
    # Deltas are refused until the next keyframe; then it starts over.
    slow.push(rtp(12, delta))
    assert len(slow._queue) == 0
    slow.push(rtp(13, keyframe))
    assert [p.sequence_number for p in slow._queue] == [13]
    assert len(roomy._queue) == 12  # nobody else lost anything


async def test_new_video_viewer_starts_at_a_keyframe(transport: RTCDtlsTransport):
    source = TrackSource(RTCRtpReceiver("video", transport), "video", keyframe_interval=10)
    source.codec = VP8
    sink = TrackSink(source, RTCRtpSender("video", transport), max_queue=100)
    sink.push(rtp(1, b"\x10\x01" + b"\x00" * 8))
    assert not sink._queue
    sink.push(rtp(2, b"\x10" + b"\x00" * 8))
    assert len(sink._queue) == 1


def test_pattern_has_frame_number():
    img = pattern_image(320, 240, 5)
    block = 10
    bits = [int(img[0, b * block + 1, 0] == 255) for b in range(16)]
    assert sum(bit << i for i, bit in enumerate(bits)) == 5
    assert np.mean(img) > 20
