"""The compiled receive path (hub/media/_fastrecv.c): an SRTP packet
unprotected and parsed in C gives the packet pylibsrtp and aiortc's parse
give, attribute for attribute, and drops what they refuse.

Real SRTP sessions (pylibsrtp, one key for both ends), RTP packets as aiortc
serializes them, header extensions with the ids a session negotiated.
"""

from __future__ import annotations

import dataclasses
import os
from types import SimpleNamespace
from typing import Any

import pylibsrtp
import pytest
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import HeaderExtensionsMap, RtpPacket

from hub.media import door


def sessions() -> tuple[pylibsrtp.Session, pylibsrtp.Session, pylibsrtp.Session]:
    """A sender's session and two receivers' (one per path: each keeps its own replay window)."""
    key = os.urandom(30)
    policy = pylibsrtp.Policy
    make = lambda kind: pylibsrtp.Session(policy(key=key, ssrc_type=kind))  # noqa: E731
    return make(policy.SSRC_ANY_OUTBOUND), make(policy.SSRC_ANY_INBOUND), make(policy.SSRC_ANY_INBOUND)


def extensions_map() -> HeaderExtensionsMap:
    uris = [
        "urn:ietf:params:rtp-hdrext:sdes:mid",
        "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
        "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id",
        "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
        "urn:ietf:params:rtp-hdrext:ssrc-audio-level",
    ]
    extensions = HeaderExtensionsMap()
    extensions.configure(
        RTCRtpParameters(headerExtensions=[RTCRtpHeaderExtensionParameters(id=i, uri=u) for i, u in enumerate(uris, 1)])
    )
    return extensions


def transport(rx: pylibsrtp.Session, extensions: HeaderExtensionsMap) -> Any:
    """What `door._unprotected` reads of an RTCDtlsTransport once SRTP is keyed."""
    dtls = SimpleNamespace(_rx_srtp=rx, _rtp_header_extensions_map=extensions)
    setattr(dtls, door._RX_CONTEXT, (rx, int(door._srtp_ffi.cast("uintptr_t", rx._srtp[0]))))
    return dtls


def fields(packet: RtpPacket | None) -> dict[str, Any] | None:
    if packet is None:
        return None
    values = dict(vars(packet))
    values["extensions"] = dataclasses.asdict(packet.extensions)
    return values


def packets(extensions: HeaderExtensionsMap) -> list[bytes]:
    """Plain RTP: a keyframe-sized packet, a marker, CSRCs, padding, every extension, an empty payload."""
    made = []
    for seq in range(40):
        packet = RtpPacket(
            payload_type=96 + seq % 3,
            marker=seq % 2,
            sequence_number=(65530 + seq) & 0xFFFF,
            timestamp=(0xFFFFF000 + 3000 * seq) & 0xFFFFFFFF,
            ssrc=0xF00D0000 + seq % 2,
            payload=os.urandom(1100 if seq % 5 else 0 if seq == 5 else 40),
        )
        if seq % 4 == 1:
            packet.csrc = [0x01020304, 0xFFFFFFFE][: seq % 3]
        if seq % 7 == 3:
            packet.padding_size = 1 + seq % 13
        if seq % 3 == 2:
            packet.extensions.mid = "0"
            packet.extensions.rtp_stream_id = "h"
            packet.extensions.abs_send_time = 0x123456
            packet.extensions.audio_level = (True, 42)
        made.append(packet.serialize(extensions))
    return made


def test_compiled_receive_gives_aiortcs_packet_and_drops_what_it_drops(monkeypatch: pytest.MonkeyPatch) -> None:
    assert door._fastrecv is not None, "hub.media._fastrecv is not built"
    door.install()
    tx, rx_c, rx_python = sessions()
    extensions = extensions_map()
    compiled, python = transport(rx_c, extensions), transport(rx_python, extensions)
    datagrams = [tx.protect(data) for data in packets(extensions)]
    tampered = bytearray(tx.protect(RtpPacket(payload_type=96, sequence_number=7, payload=bytes(300)).serialize()))
    tampered[100] ^= 1
    datagrams += [bytes(tampered), datagrams[0]]  # SRTP refuses both: a bad tag, a replay
    datagrams.append(tx.protect(bytes([0x40]) + bytes(40)))  # authentic, but not RTP version 2
    datagrams.append(os.urandom(5000))  # too large for the compiled path: Python's takes it (and drops it)

    def through(dtls: Any, module: Any) -> list[dict[str, Any] | None]:
        monkeypatch.setattr(door, "_fastrecv", module)
        return [fields(door._unprotected(dtls, datagram)) for datagram in datagrams]

    got, expected = through(compiled, door._fastrecv), through(python, None)
    assert got == expected
    assert sum(f is not None for f in got) == 40
    assert [f is None for f in got[40:]] == [True] * 4
    with_extensions = [f for f in got if f and f["extensions"]["mid"] == "0"]
    assert with_extensions and all(f["extensions"]["audio_level"] == (True, 42) for f in with_extensions)
    assert any(f and f["padding_size"] for f in got) and any(f and f["csrc"] for f in got)
