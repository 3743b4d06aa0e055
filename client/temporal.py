"""A VP8 test pattern with temporal layers, as Chromium sends with L1T2/L1T3.

libvpx makes the layers: FFmpeg's `ts-parameters` with `ts_layering_mode`
2 (two layers, period 0-1) or 3 (three layers, period 0-2-1-2) sets each
frame's reference and update flags so that a frame refers only to frames of
its layer or lower (libavcodec/libvpxenc.c, set_temporal_layer_pattern).
FFmpeg does not export which layer a frame is in, but its pattern restarts
at every forced keyframe, and with the keyframe distance out of reach every
keyframe is a forced one: so the n-th frame since the last keyframe is in
layer `pattern[n % period]`. aiortc's packetizer writes no temporal fields,
so a `TemporalVideo` packs its frames itself with the RFC 7741 descriptor's
TID, Y (layer sync: the frame refers to layer 0 alone) and TL0PICIDX.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import av
from aiortc import RTCRtpSender
from aiortc.codecs.vpx import PACKET_MAX, VpxPayloadDescriptor
from aiortc.mediastreams import VIDEO_TIME_BASE, convert_timebase

from client.bot import Picture, SyntheticVideo, frame_key, pattern_image

#: Per layer count: (FFmpeg's ts_layering_mode, TID of each frame of the period, whether it is a sync frame).
#: Mode 3's frames 1 and 2 refer to the last layer-0 frame only; frame 3 refers to frame 2 (golden).
PATTERNS = {2: (2, (0, 1), (False, True)), 3: (3, (0, 2, 1, 2), (False, True, True, False))}


class TemporalVideo(SyntheticVideo):
    """`SyntheticVideo` in two or three temporal layers; `tids` maps each
    sent frame's digest (`bot.frame_key`) to its layer and whether it is a sync frame."""

    def __init__(
        self,
        layers: int = 3,
        width: int = 320,
        height: int = 240,
        fps: int = 30,
        bitrate: int = 300_000,
        frames: int | None = None,
        picture: Picture = pattern_image,
    ) -> None:
        super().__init__("vp8", width, height, fps, frames, bitrate, picture)
        mode, self._tids, self._syncs = PATTERNS[layers]
        # Layer bitrates in kbit/s, cumulative: layer 0 gets the least.
        shares = {2: (60, 100), 3: (40, 60, 100)}[layers]
        rates = ",".join(str(bitrate * share // 100_000) for share in shares)
        decimators = ",".join(str(2 ** (layers - 1 - i)) for i in range(layers))
        self._ctx.options = {
            **self._ctx.options,
            "ts-parameters": f"ts_number_layers={layers}:ts_target_bitrate={rates}:ts_rate_decimator={decimators}"
            f":ts_layering_mode={mode}",
        }
        self._ctx.gop_size = 1 << 30  # no keyframe but forced ones: they restart the pattern
        self.tids: dict[bytes, tuple[int, bool]] = {}
        self._marks: dict[int, tuple[int, bool]] = {}
        self._position = 0

    def _encode(self) -> Iterator[av.Packet]:
        for packet in super()._encode():
            if packet.is_keyframe:
                self._position = 0
            slot = self._position % len(self._tids)
            tid = self._tids[slot]
            self._marks[int(packet.pts or 0)] = (tid, self._syncs[slot])
            self.tids[frame_key(self.mime_type, bytes(packet))] = (tid, self._syncs[slot])
            self._position += 1
            yield packet

    def packer(self) -> _TemporalPacker:
        """What packetizes this track's frames with their temporal fields (one per RTP stream)."""
        return _TemporalPacker(self._marks)

    def attach(self, sender: RTCRtpSender) -> None:
        super().attach(sender)
        # The sender packs pre-encoded packets with the encoder it creates
        # only if it has none.
        sender._RTCRtpSender__encoder = self.packer()  # type: ignore[attr-defined]


class _TemporalPacker:
    """What aiortc's sender calls to packetize a pre-encoded VP8 frame."""

    def __init__(self, marks: dict[int, tuple[int, bool]]) -> None:
        self._marks = marks
        self._picture_id = random.randrange(1 << 15)
        self._tl0picidx = random.randrange(256)

    def pack(self, packet: av.Packet) -> tuple[list[bytes], int]:
        tid, sync = self._marks.pop(int(packet.pts or 0), (0, False))
        if tid == 0:
            self._tl0picidx = (self._tl0picidx + 1) % 256
        descriptor = VpxPayloadDescriptor(
            partition_start=1,
            partition_id=0,
            picture_id=self._picture_id,
            tl0picidx=self._tl0picidx,
            tid=(tid, int(sync)),
        )
        self._picture_id = (self._picture_id + 1) % (1 << 15)
        data, payloads, pos = bytes(packet), [], 0
        while pos < len(data):
            head = bytes(descriptor)
            size = min(len(data) - pos, PACKET_MAX - len(head))
            payloads.append(head + data[pos : pos + size])
            descriptor.partition_start = 0
            pos += size
        return payloads, convert_timebase(packet.pts, packet.time_base, VIDEO_TIME_BASE)
