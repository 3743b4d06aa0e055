"""In-process targets: the hub's own parsers, and aiortc's where the hub relies on them.

Each property states a parser's contract: which exceptions it may raise
(the ones its caller catches), and what it must return for input built to
have a known answer.
"""

from __future__ import annotations

import json
import string
import tempfile
from pathlib import Path

import jwt
from aiortc.codecs import depayload
from aiortc.rtcrtpparameters import RTCRtpCodecParameters, RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import (
    HeaderExtensionsMap,
    RtcpByePacket,
    RtcpPacket,
    RtcpPsfbPacket,
    RtcpReceiverInfo,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSdesPacket,
    RtcpSenderInfo,
    RtcpSrPacket,
    RtpPacket,
    pack_header_extensions,
    pack_remb_fci,
    unpack_remb_fci,
    unwrap_rtx,
)
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from hub.core.sites import SiteTree, SiteTreeError, load_sites_file, sites_from_json
from hub.core.tokens import ROLES, Claims, TokenError, issue, verify
from hub.media.annexb import join_nal_units, split_nal_units
from hub.media.forward import is_keyframe_start
from hub.media.frames import HOLD, FrameAssembler, RtpIn
from hub.monitoring.console import Layouts
from signaling import models
from signaling.events import ClientMessage

from . import known
from .core import target
from .strategies import json_values, mutated_bytes, mutated_text

VP8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
H264 = RTCRtpCodecParameters(mimeType="video/H264", clockRate=90000, payloadType=102)


# --- keyframe detection (hub/media/forward.py) -------------------------------------------------


@st.composite
def vp8_payloads(draw: st.DrawFn) -> tuple[bytes, bool]:
    """A VP8 RTP payload (RFC 7741) built field by field, and whether it starts a keyframe."""
    start = draw(st.booleans())
    partition = draw(st.integers(0, 7))
    ext = draw(st.booleans())
    first = (0x80 if ext else 0) | (0x10 if start else 0) | partition | draw(st.sampled_from([0, 0x20]))
    out = bytes([first])
    if ext:
        has_pid, has_tl0, has_tk = draw(st.booleans()), draw(st.booleans()), draw(st.integers(0, 3))
        out += bytes([(0x80 if has_pid else 0) | (0x40 if has_tl0 else 0) | has_tk << 4])
        if has_pid:
            long_pid = draw(st.booleans())
            pid = draw(st.integers(0, 0x7FFF if long_pid else 0x7F))
            out += (0x8000 | pid).to_bytes(2, "big") if long_pid else bytes([pid])
        if has_tl0:
            out += bytes([draw(st.integers(0, 255))])
        if has_tk:
            out += bytes([draw(st.integers(0, 255))])
    inter = draw(st.booleans())
    header = draw(st.integers(0, 255)) & 0xFE | inter
    out += bytes([header]) + draw(st.binary(max_size=40))
    return out, start and partition == 0 and not inter


@st.composite
def h264_payloads(draw: st.DrawFn) -> tuple[bytes, bool]:
    """An H.264 RTP payload (RFC 6184: single NAL, STAP-A or FU-A), and whether it carries an SPS first."""

    def nal(nal_type: int) -> bytes:
        return bytes([0x60 | nal_type]) + draw(st.binary(max_size=30))

    types = st.sampled_from([1, 5, 6, 7, 8, 9])
    form = draw(st.sampled_from(["single", "stap", "fu"]))
    if form == "single":
        nal_type = draw(types)
        return nal(nal_type), nal_type == 7
    if form == "stap":
        kinds = draw(st.lists(types, min_size=1, max_size=4))
        units = [nal(k) for k in kinds]
        return bytes([0x78]) + b"".join(len(u).to_bytes(2, "big") + u for u in units), 7 in kinds
    nal_type, first = draw(types), draw(st.booleans())
    fu_header = (0x80 if first else 0) | (0 if first else draw(st.sampled_from([0, 0x40]))) | nal_type
    return bytes([0x7C, fu_header]) + draw(st.binary(max_size=30)), first and nal_type == 7


MIME_TYPES = st.sampled_from(["video/vp8", "video/h264", "audio/opus", "audio/pcmu", "video/unknown"])


@target(ci_examples=300)
@given(mime=MIME_TYPES, payload=st.binary(max_size=64))
def fuzz_keyframe_any_bytes(_: object, mime: str, payload: bytes) -> None:
    """Whatever a publisher sends, the keyframe check answers yes or no."""
    assert is_keyframe_start(mime, payload) in (True, False)


@target(ci_examples=200)
@given(vp8=vp8_payloads(), h264=h264_payloads())
def fuzz_keyframe_built(_: object, vp8: tuple[bytes, bool], h264: tuple[bytes, bool]) -> None:
    """Payloads built with a known answer get that answer."""
    assert is_keyframe_start("video/vp8", vp8[0]) is vp8[1], vp8
    assert is_keyframe_start("video/h264", h264[0]) is h264[1], h264


# --- frame assembly (hub/media/frames.py) ------------------------------------------------------


@st.composite
def packet_streams(draw: st.DrawFn) -> tuple[list[list[bytes]], list[tuple[int, int]], int]:
    """VP8 frames cut into packets, then sent in a shuffled, lossy, duplicating order.

    Returns the frames' payloads, the sending order as (frame, packet) and the
    first sequence number (near the wrap-around, sometimes)."""
    frames = []
    for n in range(draw(st.integers(1, 12))):
        keyframe = n == 0 or draw(st.integers(0, 4)) == 0
        count = draw(st.integers(1, 4))
        packets = []
        for i in range(count):
            descriptor = bytes([0x10 if i == 0 else 0x00])  # S bit on the first packet, partition 0
            header = bytes([0x00 if keyframe else 0x01]) if i == 0 else b""
            packets.append(descriptor + header + draw(st.binary(min_size=1, max_size=12)))
        frames.append(packets)
    order = [(f, p) for f, packets in enumerate(frames) for p in range(len(packets))]
    if draw(st.booleans()):
        order = draw(st.permutations(order))
    if draw(st.booleans()):
        order = [o for o in order if draw(st.integers(0, 9)) != 0]  # losses
    if order and draw(st.booleans()):
        order += draw(st.lists(st.sampled_from(order), max_size=4))  # duplicates, retransmissions
    first_seq = draw(st.one_of(st.integers(0, 0xFFFF), st.integers(0xFFF0, 0xFFFF)))
    return frames, order, first_seq


@target(ci_examples=150)
@given(stream=packet_streams(), first_ts=st.integers(0, 0xFFFFFFFF), gaps=st.lists(st.floats(0, 0.2), max_size=60))
def fuzz_frame_assembler(
    _: object, stream: tuple[list[list[bytes]], list[tuple[int, int]], int], first_ts: int, gaps: list[float]
) -> None:
    """Reordered, lost and repeated packets give only whole frames, each once, in order."""
    frames, order, first_seq = stream
    seqs, seq = [], first_seq
    for packets in frames:
        seqs.append([(seq + i) & 0xFFFF for i in range(len(packets))])
        seq += len(packets)
    assembler = FrameAssembler(VP8)
    out = []
    now = 0.0
    for n, (f, p) in enumerate(order):
        now += gaps[n] if n < len(gaps) else 0.001
        packet = RtpIn(seqs[f][p], (first_ts + f * 3000) & 0xFFFFFFFF, p == len(frames[f]) - 1, frames[f][p], now)
        out += assembler.add(packet)
    expected = {
        (first_ts + f * 3000) & 0xFFFFFFFF: b"".join(depayload(VP8, p) for p in packets)
        for f, packets in enumerate(frames)
    }
    timestamps = [frame.timestamp for frame in out]
    assert timestamps == sorted(set(timestamps)), "frames repeated or out of order"
    for frame in out:
        assert frame.data == expected[frame.timestamp & 0xFFFFFFFF], "a frame came out incomplete or mixed"
    assert not out or out[0].keyframe, "the first frame out must be a keyframe"
    in_order_lossless = order == [(f, p) for f, packets in enumerate(frames) for p in range(len(packets))]
    if in_order_lossless and now <= HOLD:  # no frame waited longer than it may
        assert len(out) == len(frames) and assembler.dropped_frames == 0


_KEYFRAME_STARTS = {
    "video/VP8": [b"\x10\x00\x9d\x01\x2a", b"\x90\x80\x01\x00"],
    "video/H264": [b"\x67\x42\x00\x1f", b"\x78\x00\x02\x67\x42\x00\x02\x68\xce", b"\x7c\x87\x00"],
    "audio/opus": [b"\xfc"],
}


@st.composite
def publisher_packets(draw: st.DrawFn) -> tuple[str, list[RtpIn]]:
    """Packets in roughly the order a publisher sends them, with keyframe
    starts and garbage mixed: what a broken or hostile publisher can send."""
    mime = draw(st.sampled_from(sorted(_KEYFRAME_STARTS)))
    seq, ts = draw(st.integers(0, 0xFFFF)), draw(st.integers(0, 0xFFFFFFFF))
    packets = []
    for n in range(draw(st.integers(1, 30))):
        seq = (seq + draw(st.sampled_from([1, 1, 1, 0, 2, -1]))) & 0xFFFF
        ts = (ts + draw(st.sampled_from([0, 0, 3000, -3000]))) & 0xFFFFFFFF
        payload = draw(st.sampled_from(_KEYFRAME_STARTS[mime]) | st.binary(min_size=1, max_size=12))
        packets.append(RtpIn(seq, ts, draw(st.booleans()), payload, n * 0.05))
    return mime, packets


@target(ci_examples=200)
@given(stream=publisher_packets())
def fuzz_frame_assembler_any_packets(_: object, stream: tuple[str, list[RtpIn]]) -> None:
    """Whatever packets a publisher sends, the assembler (recorder, snapshots)
    does not raise, and video frames come out in order."""
    mime, packets = stream
    codec = {"video/VP8": VP8, "video/H264": H264}.get(mime) or RTCRtpCodecParameters(
        mimeType=mime, clockRate=48000, payloadType=111
    )
    assembler = FrameAssembler(codec)
    timestamps = [frame.timestamp for packet in packets for frame in assembler.add(packet)]
    assert timestamps == sorted(set(timestamps)) or not assembler.video


# --- RTP and RTCP as the forwarding path parses them (aiortc) ---------------------------------

_EXTENSIONS = [
    "urn:ietf:params:rtp-hdrext:sdes:mid",
    "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
    "urn:ietf:params:rtp-hdrext:ssrc-audio-level",
    "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
    "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id",
    "urn:ietf:params:rtp-hdrext:toffset",
    "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
]


def _extensions_map() -> HeaderExtensionsMap:
    """The map a peer connection configures from a browser's offer (ids 1-7)."""
    extensions = HeaderExtensionsMap()
    extensions.configure(
        RTCRtpParameters(
            headerExtensions=[RTCRtpHeaderExtensionParameters(id=n + 1, uri=uri) for n, uri in enumerate(_EXTENSIONS)]
        )
    )
    return extensions


EXTENSIONS_MAP = _extensions_map()


@st.composite
def rtp_packets(draw: st.DrawFn) -> bytes:
    packet = RtpPacket(
        payload_type=draw(st.integers(0, 127)),
        marker=draw(st.integers(0, 1)),
        sequence_number=draw(st.integers(0, 0xFFFF)),
        timestamp=draw(st.integers(0, 0xFFFFFFFF)),
        ssrc=draw(st.integers(0, 0xFFFFFFFF)),
        payload=draw(st.binary(max_size=64)),
    )
    packet.csrc = draw(st.lists(st.integers(0, 0xFFFFFFFF), max_size=3))
    packet.padding_size = draw(st.integers(0, 8))
    ext = packet.extensions
    ext.mid = draw(st.none() | st.text(string.ascii_letters + string.digits, min_size=1, max_size=4))
    ext.abs_send_time = draw(st.none() | st.integers(0, 0xFFFFFF))
    ext.audio_level = draw(st.none() | st.tuples(st.booleans(), st.integers(0, 127)))
    ext.rtp_stream_id = draw(st.none() | st.sampled_from(["h", "m", "l"]))
    ext.transport_sequence_number = draw(st.none() | st.integers(0, 0xFFFF))
    data = packet.serialize(EXTENSIONS_MAP)
    if draw(st.booleans()):
        return data
    # Extension elements of any length under the negotiated ids: what a peer's
    # sender may write, well-formed as RFC 8285 framing, wrong in content.
    elements = draw(st.lists(st.tuples(st.integers(1, 14), st.binary(min_size=1, max_size=16)), min_size=1, max_size=4))
    profile, body = pack_header_extensions(elements)
    header = bytes([data[0] & 0xE0 | 0x10, data[1]]) + data[2:12]  # no CSRC, X bit set
    return header + profile.to_bytes(2, "big") + (len(body) // 4).to_bytes(2, "big") + body + packet.payload


def _rtcp_packets() -> st.SearchStrategy[bytes]:
    u32 = st.integers(0, 0xFFFFFFFF)
    report = st.builds(
        RtcpReceiverInfo,
        ssrc=u32,
        fraction_lost=st.integers(0, 255),
        packets_lost=st.integers(-(2**23), 2**23 - 1),
        highest_sequence=u32,
        jitter=u32,
        lsr=u32,
        dlsr=u32,
    )
    reports = st.lists(report, max_size=3)
    sender_info = st.builds(RtcpSenderInfo, ntp_timestamp=st.integers(0, 2**64 - 1), rtp_timestamp=u32,
                            packet_count=u32, octet_count=u32)  # fmt: skip
    one = st.one_of(
        st.builds(RtcpSrPacket, ssrc=u32, sender_info=sender_info, reports=reports),
        st.builds(RtcpRrPacket, ssrc=u32, reports=reports),
        st.builds(RtcpByePacket, sources=st.lists(u32, max_size=3)),
        st.builds(RtcpSdesPacket),
        st.builds(
            RtcpRtpfbPacket,
            fmt=st.just(1),
            ssrc=u32,
            media_ssrc=u32,
            lost=st.sets(st.integers(0, 0xFFFF), max_size=5).map(sorted),
        ),  # fmt: skip
        st.builds(RtcpPsfbPacket, fmt=st.sampled_from([1, 4]), ssrc=u32, media_ssrc=u32),
        st.builds(
            RtcpPsfbPacket,
            fmt=st.just(15),
            ssrc=u32,
            media_ssrc=st.just(0),
            fci=st.builds(pack_remb_fci, st.integers(0, 2**40), st.lists(u32, max_size=3)),
        ),  # fmt: skip
    )
    return st.lists(one, min_size=1, max_size=4).map(lambda packets: b"".join(bytes(p) for p in packets))


@target(ci_examples=300)
@given(data=mutated_bytes(rtp_packets()))
def fuzz_rtp_parse(_: object, data: bytes) -> None:
    """aiortc's DTLS transport drops a datagram whose parse raises ValueError; anything else
    escapes its receive loop and ends the session. What parses, TrackSource can handle."""
    try:
        packet = RtpPacket.parse(data, EXTENSIONS_MAP)
    except known.parse_errors() as exc:
        known.hit(known.PARSE, exc)
        return
    for mime in ("video/vp8", "video/h264", "audio/opus"):
        is_keyframe_start(mime, packet.payload)
    if len(packet.payload) >= 2:  # TrackSource's condition for an RTX packet
        unwrap_rtx(packet, payload_type=96, ssrc=1)


@target(ci_examples=300)
@given(data=mutated_bytes(_rtcp_packets()))
def fuzz_rtcp_parse(_: object, data: bytes) -> None:
    """As for RTP: only ValueError is contained; a REMB's FCI is unpacked the same way."""
    try:
        packets = RtcpPacket.parse(data)
    except known.parse_errors() as exc:
        known.hit(known.PARSE, exc)
        return
    for packet in packets:
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt == 15:
            try:
                unpack_remb_fci(packet.fci)
            except known.parse_errors() as exc:
                known.hit(known.PARSE, exc)


# --- H.264 Annex B (hub/media/annexb.py) -------------------------------------------------------

# NAL units as an encoder writes them: emulation prevention keeps 00 00 out of the payload.
_nal = st.binary(min_size=1, max_size=40).filter(lambda b: b"\x00\x00" not in b and not b.endswith(b"\x00"))


@target(ci_examples=200)
@given(nals=st.lists(_nal, max_size=8), data=st.binary(max_size=200))
def fuzz_annexb(_: object, nals: list[bytes], data: bytes) -> None:
    """Joining then splitting gives the units back; splitting anything is stable under rejoining."""
    assert list(split_nal_units(join_nal_units(nals))) == nals
    three = b"".join(b"\x00\x00\x01" + n for n in nals)
    assert list(split_nal_units(three)) == nals
    once = list(split_nal_units(data))
    assert list(split_nal_units(join_nal_units(once))) == once


# --- event-socket messages and JSON bodies (pydantic models) -----------------------------------

_VALID_MESSAGES = [
    {"type": "join", "room": "site-guinan", "name": "调解员", "watch": False},
    {"type": "leave", "room": "site-guinan"},
    {"type": "ping"},
    {"type": "state", "room": "site-guinan", "audio": True, "video": False},
    {"type": "chat", "room": "site-guinan", "text": "你好"},
    {"type": "hand", "room": "site-guinan", "raised": True},
    {"type": "invite-site", "room": "site-guinan", "site": "hainan"},
    {"type": "record", "room": "site-guinan", "on": True},
    {"type": "monitor", "on": True},
]


def mutated_documents(valid: list[dict[str, object]]) -> st.SearchStrategy[str]:
    """Valid JSON documents with fields dropped, retyped or added; any JSON; any text."""

    @st.composite
    def mutate(draw: st.DrawFn) -> str:
        doc = dict(draw(st.sampled_from(valid)))
        for _ in range(draw(st.integers(0, 3))):
            keys = sorted(doc)
            action = draw(st.sampled_from(["drop", "retype", "add"]))
            if action == "drop" and keys:
                del doc[draw(st.sampled_from(keys))]
            elif action == "retype" and keys:
                doc[draw(st.sampled_from(keys))] = draw(json_values())
            else:
                doc[draw(st.sampled_from([*keys, "extra", "type", "__proto__"]))] = draw(json_values())
        return json.dumps(doc, ensure_ascii=draw(st.booleans()))

    return st.one_of(mutate(), json_values().map(json.dumps), mutated_text(st.just(json.dumps(valid[0]))))


@target(ci_examples=300)
@given(raw=mutated_documents(_VALID_MESSAGES))
def fuzz_event_messages(_: object, raw: str) -> None:
    """The event socket's parser raises only ValidationError (an `error` reply)."""
    try:
        ClientMessage.validate_json(raw)
    except ValidationError:
        pass


_VALID_BODIES: dict[type[BaseModel], list[dict[str, object]]] = {
    Layouts: [{"layouts": [{"name": "墙", "grid": 4, "panes": [{"site_id": "guinan"}, None]}], "current": "墙"}],
    models.NewCase: [{"title": "土地纠纷", "dispute_type": "land", "parties": [{"name": "甲", "phone": "123"}]}],
    models.CaseChange: [{"status": "closed", "outcome": "调解成功"}],
    models.Escalation: [{"note": "升级"}],
    models.NewRoom: [{"site_id": "guomaying", "kind": "mediation", "title": "t"}],
    models.NewTraining: [{"title": "培训", "branch": "guinan"}],
    models.NewConference: [{"title": "会", "sites": ["guomaying"]}],
}
#: Every request-body model the REST doors validate with (signaling/models.py), and the console's.
_BODIES = [Layouts, *models.Body.__subclasses__()]
_QUERIES = models.Query.__subclasses__()


@target(ci_examples=300)
@given(body=st.one_of(*(st.tuples(st.just(cls), mutated_documents(_VALID_BODIES.get(cls, [{}]))) for cls in _BODIES)))
def fuzz_json_bodies(_: object, body: tuple[type[BaseModel], str]) -> None:
    """The request-body models raise only ValidationError (a 400 problem)."""
    cls, raw = body
    try:
        cls.model_validate_json(raw)
    except ValidationError:
        pass
    try:
        document = json.loads(raw)
    except ValueError:
        return
    if isinstance(document, dict):  # how the doors pass it on, after read_json_object
        try:
            cls.model_validate(document)
        except ValidationError:
            pass


@target(ci_examples=200)
@given(
    model=st.sampled_from(_QUERIES),
    query=st.dictionaries(
        st.sampled_from(["site", "from", "to", "kind", "q", "status", "queue", "all", "format", "recording", "x"]),
        st.text(max_size=20) | st.sampled_from(["", "1", "true", "mine", "csv", "2026-12-01", "1e999", "nan", "-1"]),
    ),
)
def fuzz_query_models(_: object, model: type[BaseModel], query: dict[str, str]) -> None:
    """Query parameters (strings, as aiohttp hands them over) raise only ValidationError."""
    try:
        model.model_validate(query)
    except ValidationError:
        pass


# --- site files (hub/core/sites.py) ------------------------------------------------------------

_LEVELS = ["province", "prefecture", "county", "township", "village"]


_SITE_IDS = st.sampled_from(["a", "b", "c", "d", "e", "a b", "", "村-1"])
_SITE = st.fixed_dictionaries(
    {"id": _SITE_IDS | json_values(), "name": st.text(max_size=5), "level": st.sampled_from(_LEVELS) | json_values()},
    optional={"parent": st.none() | _SITE_IDS | json_values(), "name_en": json_values()},
)
#: Sites whose ids, parents and levels come from a few values (so that trees
#: form), with fields retyped, and entries that are not objects at all.
site_lists = st.lists(_SITE | json_values(), max_size=6)


_SITE_FILE = Path(tempfile.mkdtemp(prefix="fuzz-sites-")) / "sites.json"


@target(ci_examples=150)
@given(
    items=site_lists,
    raw=st.one_of(st.binary(max_size=100), json_values().map(lambda v: json.dumps(v).encode())),
)
def fuzz_site_files(_: object, items: list[object], raw: bytes) -> None:
    """A site file either loads as one well-formed tree or is refused with SiteTreeError."""
    for document in (json.dumps(items).encode(), raw):
        _SITE_FILE.write_bytes(document)
        try:
            tree = load_sites_file(_SITE_FILE)
        except SiteTreeError:
            continue
        roots = [s for s in tree if s.parent is None]
        assert len(roots) == 1
        assert {s.id for s in tree.jurisdiction(roots[0].id)} == {s.id for s in tree}, "a site hangs off the tree"
    try:
        SiteTree(sites_from_json(items))  # type: ignore[arg-type]
    except SiteTreeError:
        pass


# --- bearer tokens (hub/core/tokens.py) --------------------------------------------------------

SECRET = "fuzz-secret-" + "x" * 32
_GOOD = issue(SECRET, Claims(user="u1", site="guinan", role="mediator", room="site-guinan", name="名"))


#: Tokens signed with the hub's own secret whose claims are anything: the hub signs
#: only what it issues, so this checks verify's own checks, not an attacker's reach.
signed_payloads = st.fixed_dictionaries(
    {},
    optional={
        "sub": st.text(max_size=5) | json_values(),
        "site": st.text(max_size=5) | json_values(),
        "role": st.sampled_from(ROLES) | json_values(),
        "exp": st.integers(-(2**40), 2**40) | json_values(),
        "room": st.text(max_size=5) | json_values(),
        "name": st.text(max_size=5) | json_values(),
        "iat": json_values(),
        "nbf": json_values(),
    },
).map(lambda payload: jwt.encode(payload, SECRET, algorithm="HS256"))


@target(ci_examples=300)
@given(token=st.one_of(mutated_text(st.just(_GOOD)), st.text(max_size=80), signed_payloads))
def fuzz_tokens(_: object, token: str) -> None:
    """verify raises only TokenError; what it accepts are well-formed claims."""
    try:
        claims = verify(SECRET, token)
    except TokenError:
        return
    assert isinstance(claims.user, str) and isinstance(claims.site, str) and claims.role in ROLES
    assert claims.room is None or isinstance(claims.room, str), claims
    assert claims.name is None or isinstance(claims.name, str), claims
