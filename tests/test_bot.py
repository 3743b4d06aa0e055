"""The Python client: its file source gives every packet of every track, as stored; its viewer
records only whole frames."""

from __future__ import annotations

from pathlib import Path

import av
from aiortc import RTCCertificate, RTCDtlsTransport, RTCIceGatherer, RTCIceTransport, RTCRtpReceiver
from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtp import RtpPacket

from client import bot


def test_file_tracks_yield_every_packet_of_both_streams(tmp_path: Path):
    path = tmp_path / "av.webm"
    video, audio = bot.SyntheticVideo("vp8", 160, 120, 30, frames=45), bot.SyntheticAudio(frames=75)
    with av.open(str(path), "w") as out:
        vstream = out.add_stream("libvpx", rate=30)
        vstream.width, vstream.height = 160, 120
        astream = out.add_stream("libopus", rate=48000, layout="stereo")
        written = {"video": [], "audio": []}
        # Interleave as a muxer would: 30 video frames and 50 audio frames a second.
        for packet in sorted([*video._packets, *audio._packets], key=lambda p: float(p.pts * p.time_base)):
            kind = "video" if packet.time_base.denominator == bot.VIDEO_CLOCK else "audio"
            written[kind].append(bytes(packet))
            packet.stream = vstream if kind == "video" else astream
            out.mux(packet)

    tracks = {t.kind: t for t in bot.FileTracks(path).tracks}
    assert {t.mime_type for t in tracks.values()} == {"video/VP8", "audio/opus"}
    # Drain the two tracks alternately, as two senders would.
    read = {"video": [], "audio": []}
    iterators = {kind: track._packets for kind, track in tracks.items()}
    while iterators:
        for kind in list(iterators):
            packet = next(iterators[kind], None)
            if packet is None:
                del iterators[kind]
            else:
                read[kind].append(bytes(packet))
    assert read == written


async def test_the_viewer_drops_a_frame_cut_short():
    """A stream cut mid-frame (its upstream hub killed) and restarted: aiortc's buffer hands on
    the frame's head once the next frame starts; the viewer drops it, as a browser does."""
    transport = RTCDtlsTransport(RTCIceTransport(RTCIceGatherer()), [RTCCertificate.generateCertificate()])
    receiver = RTCRtpReceiver("video", transport)
    bot.record_receiver(receiver, bot.TrackLog("video"), decode=False)
    ours: JitterBuffer = receiver._RTCRtpReceiver__jitter_buffer  # type: ignore[attr-defined]
    stock = JitterBuffer(capacity=512, is_video=True)

    def packets():  # frame 1 whole, frame 2 without its last packet, frame 3 whole, frame 4 begun
        for seq, (timestamp, marker) in enumerate([(1, 0), (1, 1), (2, 0), (2, 0), (3, 0), (3, 1), (4, 0)]):
            packet = RtpPacket(payload_type=96, sequence_number=seq, timestamp=timestamp * 3000, marker=marker)
            packet._data = bytes([timestamp, seq])  # type: ignore[attr-defined]
            yield packet

    def frames(buffer: JitterBuffer) -> list[int]:
        return [frame.timestamp // 3000 for _, frame in map(buffer.add, packets()) if frame is not None]

    assert frames(stock) == [1, 2, 3]  # what aiortc alone would show
    assert frames(ours) == [1, 3]
