"""One segment file: encoded frames remuxed with PyAV, never re-encoded.

VP8 and Opus go into WebM, H.264 (with Opus) into Matroska. Matroska writes each cluster as it closes and
its header stays valid without the trailer, so a file cut off by a killed
process still plays up to its last complete cluster; clusters are closed at
least every `CLUSTER_MS` and the file is flushed after every packet, so a
kill loses at most about that much of the open segment.
"""

from __future__ import annotations

import fractions
from dataclasses import dataclass
from pathlib import Path

import av

from hub.media.annexb import join_nal_units, split_nal_units

CLUSTER_MS = 1000
#: RTP clock and PyAV codec name of each codec the recorder can store.
CODECS = {"video/vp8": ("vp8", 90000), "video/h264": ("h264", 90000), "audio/opus": ("opus", 48000)}
#: WebM holds only VP8/VP9/AV1 and Opus/Vorbis; anything else goes into Matroska.
WEBM_CODECS = {"video/vp8", "audio/opus"}


def suffix(mime_types: list[str]) -> str:
    return ".webm" if set(mime_types) <= WEBM_CODECS else ".mkv"


def vp8_size(frame: bytes) -> tuple[int, int]:
    """Width and height from a VP8 keyframe header (RFC 6386 section 9.1)."""
    if len(frame) < 10 or frame[0] & 0x01 or frame[3:6] != b"\x9d\x01\x2a":
        raise ValueError("not a VP8 keyframe")
    return int.from_bytes(frame[6:8], "little") & 0x3FFF, int.from_bytes(frame[8:10], "little") & 0x3FFF


def h264_parameter_sets(frame: bytes) -> bytes:
    """The SPS and PPS of an Annex B keyframe, as the stream's extradata."""
    return join_nal_units(nal for nal in split_nal_units(frame) if nal[0] & 0x1F in (7, 8))


def video_size(mime_type: str, keyframe: bytes) -> tuple[int, int]:
    if mime_type == "video/vp8":
        return vp8_size(keyframe)
    # Parsing an SPS by hand means exp-Golomb codes and cropping; decoding the
    # one keyframe that starts a segment is simpler and cheap.
    decoder = av.CodecContext.create("h264", "r")
    for frame in decoder.decode(av.Packet(keyframe)):
        return frame.width, frame.height
    for frame in decoder.decode(None):
        return frame.width, frame.height
    raise ValueError("H.264 keyframe did not decode")


@dataclass
class TrackSpec:
    kind: str  #: "video" or "audio"
    mime_type: str
    width: int = 0
    height: int = 0
    channels: int = 2
    extradata: bytes = b""


class SegmentWriter:
    """Writes frames of one stream's tracks into one WebM (or Matroska) file."""

    def __init__(self, path: Path, tracks: list[TrackSpec]) -> None:
        self.path = path
        self._container = av.open(
            str(path),
            "w",
            format="webm" if path.suffix == ".webm" else "matroska",
            options={"cluster_time_limit": str(CLUSTER_MS), "flush_packets": "1"},
            # libavformat holds packets back to interleave tracks; a track
            # that goes quiet must not hold the others in memory for long.
            container_options={"max_interleave_delta": "500000"},
        )
        self._streams: dict[str, tuple[av.stream.Stream, fractions.Fraction]] = {}
        for track in tracks:
            name, clock = CODECS[track.mime_type]
            stream = self._container.add_stream(name, rate=clock if track.kind == "audio" else 30)
            if track.kind == "video":
                stream.width, stream.height = track.width, track.height
                if track.extradata:
                    stream.codec_context.extradata = track.extradata
            else:
                stream.codec_context.layout = "stereo" if track.channels == 2 else "mono"
            stream.time_base = fractions.Fraction(1, clock)
            self._streams[track.kind] = (stream, fractions.Fraction(1, clock))
        self.end = 0.0  #: seconds: end of the last frame written

    def write(self, kind: str, data: bytes, pts: int, keyframe: bool, frame_duration: int) -> None:
        stream, time_base = self._streams[kind]
        packet = av.Packet(data)
        packet.pts = packet.dts = pts
        packet.time_base = time_base
        packet.is_keyframe = keyframe
        packet.stream = stream
        self._container.mux(packet)
        self.end = max(self.end, float((pts + frame_duration) * time_base))

    def close(self) -> None:
        self._container.close()
