"""The forwarding module's own rules, on real aiortc objects and real encoders."""

from __future__ import annotations

import asyncio
import fractions
import logging
import os
import socket
import types

import av
import numpy as np
import pytest
from aioice.ice import StunProtocol
from aiortc import RTCCertificate, RTCDtlsTransport, RTCIceGatherer, RTCIceTransport, RTCRtpReceiver, RTCRtpSender
from aiortc.codecs import get_encoder
from aiortc.rtcdtlstransport import SRTP_PROFILES
from aiortc.rtcdtlstransport import State as DtlsState
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket
from pylibsrtp import Policy, Session

from client.bot import pattern_image
from hub.media import forward, layers
from hub.media.forward import TrackSink, TrackSource, _compiled_route, is_keyframe_start
from hub.media.layers import LayerSwitch, SimulcastOffer, SimulcastSource

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


KEYFRAME = b"\x10" + b"\x00" * 20  # VP8: S=1, partition 0, P=0
DELTA = b"\x10\x01" + b"\x00" * 20  # P=1
CONTINUATION = b"\x00\x01" + b"\x00" * 20
#: What aiortc negotiates between two of its own peers.
SRTP = SRTP_PROFILES[0]


class RecordingSink(TrackSink):
    """A sink whose route is a real one - its own SRTP session, an aioice
    socket, a loopback receiver - with a settable backlog: the rules above
    the socket are under test, on whichever send path is on. `sent` is what
    reached the receiver, decrypted; `datagrams` as it was on the wire."""

    backlog = 0

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self._key = os.urandom(SRTP.key_length + SRTP.salt_length)
        tx = Policy(key=self._key, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=SRTP.libsrtp_profile)
        tx.allow_repeat_tx = True
        self._srtp = Session(tx)
        self._receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._receiver.bind(("127.0.0.1", 0))
        self._receiver.setblocking(False)
        self._protocol: StunProtocol | None = None
        self._datagrams: list[bytes] = []

    async def open(self) -> None:
        _, protocol = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: StunProtocol(None),
            local_addr=("127.0.0.1", 0),  # type: ignore[arg-type]
        )
        self._protocol = protocol
        # The transport's own answer, which both paths ask.
        protocol.transport.get_write_buffer_size = lambda: self.backlog  # type: ignore[method-assign]
        addr = self._receiver.getsockname()
        self._fixed_route = (self._srtp, protocol, addr, _compiled_route(self._srtp, protocol, addr))

    def _route(self):  # type: ignore[no-untyped-def]
        return self._fixed_route

    @property
    def datagrams(self) -> list[bytes]:
        while True:
            try:
                self._datagrams.append(self._receiver.recv(2048))
            except BlockingIOError:
                return self._datagrams

    @property
    def sent(self) -> list[bytes]:
        # A session per datagram: a retransmission is a replay to one session.
        rx = Policy(key=self._key, ssrc_type=Policy.SSRC_ANY_INBOUND, srtp_profile=SRTP.libsrtp_profile)
        return [Session(rx).unprotect(d) for d in self.datagrams]

    def close(self) -> None:
        super().close()
        if self._protocol is not None:
            self._protocol.transport.close()
        self._receiver.close()


@pytest.fixture
async def transport() -> RTCDtlsTransport:
    return RTCDtlsTransport(RTCIceTransport(RTCIceGatherer()), [RTCCertificate.generateCertificate()])


async def started_sink(source: TrackSource, transport: RTCDtlsTransport, payload_type: int = 100) -> RecordingSink:
    sink = RecordingSink(source, RTCRtpSender("video", transport), max_backlog=1000)
    await sink.open()
    task = asyncio.ensure_future(
        sink._run_rtp(RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=payload_type))
    )
    await asyncio.sleep(0)
    sink.task = task  # type: ignore[attr-defined]
    return sink


async def test_packets_are_rewritten_for_the_viewer_and_nothing_else(transport: RTCDtlsTransport, forward_path: str):
    source = TrackSource(RTCRtpReceiver("video", transport), "video", keyframe_interval=0)
    source.codec = VP8
    sink = await started_sink(source, transport, payload_type=120)
    assert (sink._route()[3] is not None) == (forward_path == "c")  # the path under test is the one taken
    packets = [rtp(1000, KEYFRAME), rtp(1001, CONTINUATION), rtp(1002, DELTA)]
    packets[0].marker = 1
    for packet in packets:
        source.forward(packet)
    out = [RtpPacket.parse(data) for data in sink.sent]
    assert [p.payload for p in out] == [p.payload for p in packets]
    assert {p.payload_type for p in out} == {120}
    assert {p.ssrc for p in out} == {sink._sender._ssrc}
    assert [p.marker for p in out] == [1, 0, 0]
    assert [(p.sequence_number - out[0].sequence_number) & 0xFFFF for p in out] == [0, 1, 2]
    assert [(p.timestamp - out[0].timestamp) & 0xFFFFFFFF for p in out] == [0, 3000, 6000]
    # A NACK for the second packet resends exactly it.
    await sink._retransmit(out[1].sequence_number)
    assert sink.sent[-1] == sink.sent[1]
    # Byte for byte on the wire too: the retransmission (always through
    # Python) was protected by the very SRTP stream state the first send used.
    assert sink.datagrams[-1] == sink.datagrams[1]
    sink.close()
    await sink.task  # type: ignore[attr-defined]


@pytest.mark.usefixtures("forward_path")
async def test_slow_viewer_drops_its_own_packets_and_waits_for_a_keyframe(transport: RTCDtlsTransport):
    source = TrackSource(RTCRtpReceiver("video", transport), "video", keyframe_interval=0)
    source.codec = VP8
    source._media_ssrc = 1
    slow = await started_sink(source, transport)
    other = await started_sink(source, transport)
    packets = [rtp(0, KEYFRAME)] + [rtp(i, CONTINUATION if i % 3 else DELTA) for i in range(1, 12)]
    requests = source.keyframe_requests
    for i, packet in enumerate(packets):
        slow.backlog = 5000 if i == 6 else 0  # its socket backs up once
        source.forward(packet)

    assert len(other.sent) == 12
    assert len(slow.sent) == 6  # everything after the backlog waits for a keyframe
    assert slow.stats.keyframe_waits == 1
    assert source.keyframe_requests == requests + 1
    source.forward(rtp(12, DELTA))
    assert len(slow.sent) == 6
    source.forward(rtp(13, KEYFRAME))
    assert len(slow.sent) == 7


@pytest.mark.usefixtures("forward_path")
async def test_new_video_viewer_starts_at_a_keyframe(transport: RTCDtlsTransport):
    source = TrackSource(RTCRtpReceiver("video", transport), "video", keyframe_interval=10)
    source.codec = VP8
    sink = await started_sink(source, transport)
    source.forward(rtp(1, DELTA))
    assert not sink.sent
    source.forward(rtp(2, KEYFRAME))
    assert len(sink.sent) == 1


@pytest.mark.usefixtures("forward_path")
async def test_a_viewer_still_waiting_for_its_keyframe_asks_again(
    transport: RTCDtlsTransport, monkeypatch: pytest.MonkeyPatch
):
    """On a lossy link the hub's keyframe request, or the keyframe's first packet, can be lost: the
    waiting viewer, sent nothing, has no gap to complain of, so the hub asks again for it."""
    monkeypatch.setattr(forward, "KEYFRAME_PATIENCE", 0.05)
    source = TrackSource(RTCRtpReceiver("video", transport), "video", keyframe_interval=0)
    source.codec = VP8
    source._media_ssrc = 1
    requests = source.keyframe_requests
    sink = await started_sink(source, transport)
    assert source.keyframe_requests == requests + 1  # on joining
    source.forward(rtp(1, DELTA))
    assert source.keyframe_requests == requests + 1  # not yet: the keyframe may be on its way
    await asyncio.sleep(0.06)
    source.forward(rtp(2, DELTA))
    assert source.keyframe_requests == requests + 2
    source.forward(rtp(3, KEYFRAME))
    await asyncio.sleep(0.06)
    source.forward(rtp(4, DELTA))
    assert source.keyframe_requests == requests + 2  # it has its keyframe
    assert len(sink.sent) == 2
    sink.close()
    await sink.task  # type: ignore[attr-defined]


def test_pattern_has_frame_number():
    img = pattern_image(320, 240, 5)
    block = 10
    bits = [int(img[0, b * block + 1, 0] == 255) for b in range(16)]
    assert sum(bit << i for i, bit in enumerate(bits)) == 5
    assert np.mean(img) > 20


@pytest.mark.usefixtures("forward_path")
async def test_viewer_that_skipped_packets_gets_a_contiguous_sequence(transport: RTCDtlsTransport):
    source = TrackSource(RTCRtpReceiver("video", transport), "video", keyframe_interval=0)
    source.codec = VP8
    source._media_ssrc = 1
    sink = await started_sink(source, transport)
    frames = [KEYFRAME, CONTINUATION, DELTA, DELTA, DELTA, KEYFRAME, DELTA]
    for i, payload in enumerate(frames):
        sink.backlog = 5000 if i == 2 else 0  # 2, 3, 4 are skipped: full socket, then the keyframe wait
        source.forward(rtp(i, payload))
    out = [RtpPacket.parse(data) for data in sink.sent]
    assert [p.payload for p in out] == [frames[i] for i in (0, 1, 5, 6)]
    first = out[0].sequence_number
    assert [(p.sequence_number - first) & 0xFFFF for p in out] == [0, 1, 2, 3]
    # The timestamps keep the publisher's clock: the skipped frames' time passed.
    assert [(p.timestamp - out[0].timestamp) & 0xFFFFFFFF for p in out] == [0, 3000, 15000, 18000]

    # The publisher retransmits a packet this viewer got, and one it skipped.
    source.forward(rtp(1, CONTINUATION))
    source.forward(rtp(3, DELTA))
    assert len(sink.sent) == 5
    assert sink.sent[-1] == sink.sent[1]
    # A NACK names the viewer's numbers, and is answered from its history.
    await sink._retransmit((first + 2) & 0xFFFF)
    assert sink.sent[-1] == sink.sent[2]
    sink.close()
    await sink.task  # type: ignore[attr-defined]


@pytest.mark.usefixtures("forward_path")
async def test_a_layer_whose_stream_restarts_goes_on_in_a_run_of_its_own(transport: RTCDtlsTransport):
    """A relay pulled anew from another hub (or a publisher's new SSRC) restarts a layer's
    stream: new SSRC, new numbers, new clock. A viewer on that layer, after a switch, got none of
    it: the packets went out in the old run, where their numbers were old (a killed middle relay
    left a simulcast viewer frozen). It goes on from the new stream's first keyframe, its numbers
    and clock continuous."""
    source = SimulcastSource(None, SimulcastOffer(("q", "f"), 10, None), 0.3)  # type: ignore[arg-type]
    q, f = source.layer("q"), source.layer("f")
    assert q is not None and f is not None

    def send(layer: layers.Layer, ssrc: int, seq: int, payload: bytes) -> None:
        packet = RtpPacket(payload_type=96, sequence_number=seq & 0xFFFF, timestamp=(seq * 3000) & 0xFFFFFFFF,
                           ssrc=ssrc, payload=payload)  # fmt: skip
        source._take(layer, packet, VP8)

    send(q, 1000, 10, KEYFRAME)
    send(f, 1001, 500, KEYFRAME)
    switch = LayerSwitch(source, audio=False)
    sink = await started_sink(switch, transport)  # type: ignore[arg-type]
    switch._retarget(q)
    send(q, 1000, 11, KEYFRAME)
    send(q, 1000, 12, DELTA)
    switch._retarget(f)  # a switch: from here on the viewer's packets are a run of the switch's own
    send(f, 1001, 501, KEYFRAME)
    send(f, 1001, 502, CONTINUATION)
    before = len(sink.sent)
    # f's stream restarts, its numbers behind the old ones: nothing until its first keyframe.
    send(f, 2001, 30, DELTA)
    assert len(sink.sent) == before
    send(f, 2001, 31, KEYFRAME)
    send(f, 2001, 32, DELTA)
    out = [RtpPacket.parse(data) for data in sink.sent]
    assert [p.payload for p in out] == [KEYFRAME, DELTA, KEYFRAME, CONTINUATION, KEYFRAME, DELTA]
    first = out[0].sequence_number
    assert [(p.sequence_number - first) & 0xFFFF for p in out] == [0, 1, 2, 3, 4, 5]
    step = (out[4].timestamp - out[3].timestamp) & 0xFFFFFFFF
    assert 0 < step < 90000  # the time that passed, not the new stream's own clock
    assert (out[5].timestamp - out[4].timestamp) & 0xFFFFFFFF == 3000
    assert switch.switches == 1  # a restart is no change of layer
    switch.close()
    await sink.task  # type: ignore[attr-defined]


@pytest.mark.usefixtures("forward_path")
async def test_packets_lost_next_to_where_a_viewer_starts_or_skips_are_not_sent_late(transport: RTCDtlsTransport):
    """The publisher's retransmission of a packet it lost (RTX, unwrapped) goes out under the number
    kept for it - except when the loss lies just before a packet this viewer skipped or the
    keyframe it starts (again) at: sent late, it would reach the viewer before its first keyframe
    (aiortc's jitter buffer starts at the first packet it gets, and made frames of such strays)."""
    source = TrackSource(RTCRtpReceiver("video", transport), "video", keyframe_interval=0)
    source.codec = VP8
    source._media_ssrc = 1
    sink = await started_sink(source, transport)

    def forward(*packets: tuple[int, bytes]) -> None:
        for seq, payload in packets:
            source.forward(rtp(seq, payload + bytes((seq,))))

    # The viewer joins at 2 and waits for a keyframe; 3 and 5 are lost upstream, 6 starts a keyframe.
    forward((2, CONTINUATION), (4, DELTA), (6, KEYFRAME), (7, CONTINUATION))
    # Then its socket backs up at 10 (9 lost): it skips to the keyframe at 12 (11 lost).
    forward((8, DELTA))
    sink.backlog = 5000
    forward((10, DELTA))
    sink.backlog = 0
    forward((12, KEYFRAME), (13, CONTINUATION), (15, DELTA))
    # The publisher's retransmissions: only 14's loss lies between two packets the viewer got.
    forward((3, CONTINUATION), (5, CONTINUATION), (9, DELTA), (11, CONTINUATION), (14, CONTINUATION))
    out = [RtpPacket.parse(data) for data in sink.sent]
    assert [p.payload[-1] for p in out] == [6, 7, 8, 12, 13, 15, 14]
    first = out[0].sequence_number
    assert [(p.sequence_number - first) & 0xFFFF for p in out] == [0, 1, 2, 3, 4, 6, 5]
    sink.close()
    await sink.task  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "layout",
    [((1, b"0"), 2, 3), ((1, b"m" * 20), 2, 3), ((15, b"0"), 4, 0), ((0, b""), 0, 0)],
    ids=["one-byte", "two-byte-long-mid", "two-byte-high-id", "none"],
)
async def test_both_paths_send_the_same_bytes_and_report_the_same_figures(
    transport: RTCDtlsTransport, layout: tuple[tuple[int, bytes], int, int]
):
    """One source, one viewer on each path, with the same stream numbers:
    the compiled path's header, extension block (RFC 8285's one- and
    two-byte forms, abs-send-time, audio level), sequence decisions
    (reordered, retransmitted, lost upstream), history and sender-report
    figures are the Python path's, byte for byte."""
    previous = forward.current_path()
    sinks: dict[str, RecordingSink] = {}
    source = TrackSource(RTCRtpReceiver("audio", transport), "audio", keyframe_interval=0)
    source.codec = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111)
    try:
        for path in ("python", "c"):
            forward.use_path(path)
            sink = sinks[path] = RecordingSink(source, RTCRtpSender("audio", transport), max_backlog=1000)
            await sink.open()
            sink._ssrc = 0x1234ABCD
            sink._start(111, layout)
        python, compiled = sinks["python"], sinks["c"]
        python._seqs, python._ts_offset = forward.SeqMap(65530), 0xFFFFFF00  # both wrap below
        compiled._ts_offset = 0xFFFFFF00  # for the packet it decides in Python
        (mid_id, mid), abs_id, level_id = layout
        compiled._viewer.start(
            65530, 0x1234ABCD, 111, 0xFFFFFF00, True, mid_id, mid, abs_id, level_id,
            compiled._history, compiled._sender,
        )  # fmt: skip
        decided = {path: 0 for path in sinks}
        for path, sink in sinks.items():

            def count(packet: RtpPacket, shared: forward.Outgoing, path: str = path, sink: TrackSink = sink) -> None:
                decided[path] += 1
                TrackSink._decide(sink, packet, shared)

            sink._decide = count  # type: ignore[method-assign]
        numbers = [100, 101, 102, 104, 105, 103, 101, 106, 110, 107, 111]  # lost 108-109, late 103 and 107, RTX 101
        for i, number in enumerate(numbers):
            packet = RtpPacket(111, marker=i == 0, sequence_number=number, timestamp=number * 960, ssrc=7)
            # (One not bytes: the Python path takes any buffer, so must the compiled one.)
            packet.payload = (bytearray if i == 4 else bytes)([i]) * (20 + i)  # type: ignore[assignment]
            if i % 3:
                packet.extensions.audio_level = (i % 2 == 0, 30 + i)
            source.forward(packet)
        await python._retransmit(python._seqs.late(104))
        await compiled._retransmit(compiled._seqs.late(104))

        assert decided == {"python": len(numbers), "c": 1}  # the c path decided in C after its first packet
        assert compiled.sent == python.sent
        assert len(python.sent) == len(numbers) + 1
        assert compiled._history == python._history
        for name in ("ntp_timestamp", "rtp_timestamp", "octet_count", "packet_count"):
            attr = f"_RTCRtpSender__{name}"
            assert getattr(compiled._sender, attr) == getattr(python._sender, attr), name
        assert (compiled.stats.packets, compiled.stats.octets) == (python.stats.packets, python.stats.octets)
    finally:
        forward.use_path(previous)
        for sink in sinks.values():
            sink.close()


async def test_a_viewer_whose_srtp_context_refuses_a_packet_is_dropped_alone(
    transport: RTCDtlsTransport, forward_path: str, caplog: pytest.LogCaptureFixture
):
    source = TrackSource(RTCRtpReceiver("audio", transport), "audio", keyframe_interval=0)
    source.codec = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111)
    strict, other = (RecordingSink(source, RTCRtpSender("audio", transport), max_backlog=1000) for _ in range(2))
    # Without allow_repeat_tx (aiortc sets it) libsrtp refuses to protect an index twice.
    policy = Policy(key=strict._key, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=SRTP.libsrtp_profile)
    strict._srtp = Session(policy)
    for sink in (strict, other):
        await sink.open()
        sink._start(111, ((0, b""), 0, 0))
    with caplog.at_level(logging.ERROR, logger="hub.media.forward"):
        for number in (1, 2, 3, 2):  # the publisher's retransmission of 2 goes out under 2's number again
            source.forward(RtpPacket(111, sequence_number=number, timestamp=number * 960, ssrc=7, payload=b"a"))
            if number == 3:
                assert len(strict.sent) == 3
    assert source.sinks == {other}
    assert strict._payload_type is None  # closed
    assert len(other.sent) == 4
    assert any("dropping a viewer whose send failed" in r.getMessage() for r in caplog.records)
    other.close()


async def test_the_compiled_path_leaves_a_stale_route_to_python(transport: RTCDtlsTransport, forward_path: str):
    """Once ICE nominates another pair or DTLS leaves the connected state,
    the compiled path stops using the route it was given: `_decide` takes
    the packet (and finds the new route or none)."""
    source = TrackSource(RTCRtpReceiver("audio", transport), "audio", keyframe_interval=0)
    source.codec = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111)
    sink = RecordingSink(source, RTCRtpSender("audio", transport), max_backlog=1000)
    await sink.open()
    sink._start(111, ((0, b""), 0, 0))
    pair, dtls = object(), types.SimpleNamespace(_state=DtlsState.CONNECTED)
    nominated = {1: pair}
    sink._cached_guard = (nominated, pair, dtls, DtlsState.CONNECTED)
    decided = []

    def decide(packet: RtpPacket, shared: forward.Outgoing) -> None:
        decided.append(packet.sequence_number)
        TrackSink._decide(sink, packet, shared)

    sink._decide = decide  # type: ignore[method-assign]
    for number in range(1, 8):
        if number == 3:
            nominated[1] = object()  # ICE moved to another pair
        if number == 4:
            nominated[1] = pair
        if number == 6:
            dtls._state = DtlsState.CLOSED
        source.forward(RtpPacket(111, sequence_number=number, timestamp=number * 960, ssrc=7, payload=b"a"))
    assert decided == ([1, 3, 6, 7] if forward_path == "c" else list(range(1, 8)))
    assert len(sink.sent) == 7  # the fixed route still delivers whatever decides
    sink.close()


def test_compiled_path_falls_back_to_python_with_one_log_line(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    previous = forward.current_path()
    monkeypatch.setattr(forward, "_fastsend", None)  # as where setup.py could not compile it
    try:
        with caplog.at_level(logging.WARNING, logger="hub.media.forward"):
            assert forward.use_path("c") == "python"
        assert forward.current_path() == "python"
        assert [r.getMessage() for r in caplog.records] == [
            "hub.media._fastsend is not built: forwarding through Python"
        ]
        with pytest.raises(ValueError, match="forward path must be one of"):
            forward.use_path("rust")
    finally:
        monkeypatch.undo()
        forward.use_path(previous)
