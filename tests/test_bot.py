"""The Python client's file source: every packet of every track, as stored."""

from __future__ import annotations

from pathlib import Path

import av

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
