"""The media door: which UDP datagrams reach aiortc's DTLS and SRTP.

aiortc 1.16 (with aioice 0.13) trusts every datagram on a peer connection's
ICE ports. `RTCDtlsTransport._recv_next` reads `data[0]`, so one empty
datagram raises IndexError and ends the session - a viewer's, or a
publisher's and with it the stream for every viewer - and nothing compares
a datagram's source with the candidate pair ICE selected. Anyone who can
reach the port can end or feed a session without a token.

This module is the one place that changes that, by wrapping two methods
process-wide (`install`, which the Router calls):

* `StunProtocol.datagram_received` (aioice; one per local candidate
  socket) refuses, before DTLS/SRTP, a datagram that is empty or shorter
  than any header of its kind (RFC 7983's first-byte demultiplexing: STUN,
  DTLS, RTP/RTCP), of no such kind, malformed STUN, or - once ICE selected
  a pair - DTLS or RTP/RTCP that did not come from that pair's remote
  address to that pair's socket. STUN from anywhere still goes to aioice:
  connectivity checks and consent from the peer, and checks from addresses
  not yet known (peer-reflexive candidates); aioice authenticates those.
  (Another pair's remote address on the same socket is the peer's too: a
  browser may send from there, see `_from_peer`.)
  DTLS and RTP/RTCP go to aioice's data queue directly (aioice would first
  try to parse each as STUN, whatever its first byte).
* `RTCDtlsTransport._recv_next` (aiortc) contains any exception raised
  while handling one datagram to dropping that datagram; only a closed
  connection (ConnectionError) ends the receive loop, as before.

`install` also puts aioice's consent checks on the process's shared tick
and makes its STUN address packing cheap (`hub.media.ice.install`), before
any connection starts.

The door is also where an SRTP packet for the hub's own receivers (a
publisher's or a relay's pull, see `take_rtp`) skips aiortc's receive
plumbing: instead of aioice's asyncio queue, a wake-up of the DTLS
transport's task and four coroutine layers per datagram, it is unprotected,
parsed and routed right in `datagram_received` and handed to the
receiver's synchronous handler. SRTCP (above all the viewers' receiver
reports, REMB, NACK and PLI, a few datagrams a second per viewer) skips the
same plumbing (`_received_rtcp`): unprotected, parsed and routed in
`datagram_received`, each packet handed to its sender's or receiver's own
aiortc handler at once. Everything else (DTLS, RTP for a plain aiortc
receiver, anything before DTLS-SRTP is up, TURN-relayed datagrams) still
takes the queue.

Each refusal counts in `COUNTERS.datagrams_refused`; none is fatal.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pylibsrtp
from aioice import stun
from aioice.ice import CandidatePair, StunProtocol
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcdtlstransport import State as DtlsState
from aiortc.rtcrtpreceiver import RTCRtpReceiver
from aiortc.rtcrtpsender import RTCRtpSender
from aiortc.rtp import RTCP_PSFB_APP, HeaderExtensions, RtcpPacket, RtcpPsfbPacket, RtpPacket, is_rtcp, unpack_remb_fci
from pylibsrtp._binding import ffi as _srtp_ffi
from pylibsrtp._binding import lib as _srtp_lib

from hub.media import ice
from hub.media.counters import COUNTERS

try:
    from hub.media import _fastrecv
except ImportError:  # not built (setup.py marks it optional): pylibsrtp and aiortc's parse
    _fastrecv = None

log = logging.getLogger(__name__)

# RFC 7983 section 7: the first byte tells what a datagram on the port is.
# The shortest header of each kind: STUN 20 bytes, a DTLS record 13, RTP 12
# (RTCP's 8 plus SRTCP's index and tag make more).
_STUN_HEADER = 20
_DTLS_RECORD_HEADER = 13
_RTP_HEADER = 12

_installed = False

#: Set on an `RTCRtpReceiver` by `take_rtp`: its packets' synchronous handler.
_HANDLER = "_hub_take_rtp"
#: Set on an aioice Connection once its DTLS transport has SRTP keys.
_DTLS = "_hub_dtls"
#: Set on an `RTCRtpSender` by `on_remb`: who takes its viewer's estimates.
_REMB = "_hub_on_remb"
#: Set on that DTLS transport with it: its receiving SRTP session and the
#: address of that session's libsrtp context, for `_fastrecv`.
_RX_CONTEXT = "_hub_rx_context"

#: Set on an `RTCRtpReceiver` by `take_rtp`: what its lane routes need.
_EXPRESS = "_hub_express"
#: Set on a StunProtocol by `lane`.
_LANE = "_hub_lane"

RtpHandler = Callable[[RtpPacket, int], None]
#: ssrc -> (source, stats, nack or None, payload_type, codec, forward, outgoing_class)
#: for `_fastrecv.Lane` (see there), or None.
Express = Callable[[int], tuple[Any, ...] | None]
#: HeaderExtensions' fields, in the order `_fastrecv.Lane.arm` takes their ids.
_EXTENSION_FIELDS = (
    "mid",
    "repaired_rtp_stream_id",
    "rtp_stream_id",
    "abs_send_time",
    "transmission_offset",
    "audio_level",
    "transport_sequence_number",
)

#: Seconds from the NTP epoch (1900) to the Unix epoch: arrival times are
#: aiortc's `clock.current_ms()`, which builds two datetimes to get them
#: (2 µs a packet, a tenth of the whole direct path).
_NTP_TO_UNIX = 2_208_988_800


def take_rtp(receiver: RTCRtpReceiver, handler: RtpHandler, express: Express | None = None) -> None:
    """Hand the receiver's RTP packets to `handler(packet, arrival_time_ms)`
    as they arrive, instead of to its `_handle_rtp_packet` coroutine.

    `handler` runs inside the socket's `datagram_received`: it must not
    block. A peer connection takes this path only when every RTP receiver
    it has is taken (a plain aiortc receiver beside one keeps the queue).
    `express(ssrc)` says what a socket's express lane (`lane`) needs to do
    the handler's work itself for that stream, or None if it cannot.
    """
    setattr(receiver, _HANDLER, handler)
    setattr(receiver, _EXPRESS, express)


def lane(protocol: StunProtocol) -> Any:
    """What is to take `protocol`'s datagrams instead of it: its express lane
    (`_fastrecv.Lane`), or the protocol itself where that is not built.

    For a socket read by hub.media.reader's thread (a relay's pull): each of
    its packets arrives alone, on a process just woken for it, where the
    Python of this module, aiortc's routing and the receiver's handler run
    cold. The lane does all of that in C for the common packet - the next
    of a stream the door has already routed once through Python (`_arm`) -
    and hands it every other datagram untouched.
    """
    if _fastrecv is None:
        return protocol
    express = _fastrecv.Lane(protocol, _received_plain_rtp, RtpPacket, HeaderExtensions, COUNTERS)
    setattr(protocol, _LANE, express)
    return express


def on_remb(sender: RTCRtpSender, callback: Callable[[int], None]) -> None:
    """Hand the REMB estimates (bits/s) a viewer sends for `sender` to
    `callback` straight from the socket callback (`_received_rtcp`).

    For such a sender aiortc's own REMB handling has nothing to do (it logs
    the figure and sets an encoder's bitrate; the hub's senders forward,
    they have no encoder), so the door skips aiortc's routing and handler
    chain for it. The sender's `_handle_rtcp_packet` must pass a REMB
    reaching it otherwise (through aiortc's queue) to `callback` too.
    """
    callbacks: list[Callable[[int], None]] | None = getattr(sender, _REMB, None)
    if callbacks is None:
        callbacks = []
        setattr(sender, _REMB, callbacks)
    callbacks.append(callback)


def install() -> None:
    """Guard every peer connection in this process; calling again does nothing."""
    global _installed
    if _installed:
        return
    _installed = True
    if _fastrecv is not None:
        _fastrecv.bind(srtp_function("srtp_unprotect"))
    StunProtocol.datagram_received = _guarded_datagram_received  # type: ignore[method-assign]
    RTCDtlsTransport._recv_next = _contained_recv_next(RTCDtlsTransport._recv_next)  # type: ignore[method-assign]
    ice.install()


def srtp_context(session: Any) -> int:
    """The address of a pylibsrtp session's libsrtp context (its srtp_t),
    for the compiled send and receive paths."""
    return int(_srtp_ffi.cast("uintptr_t", session._srtp[0]))


def srtp_function(name: str) -> int:
    """The address of a function of pylibsrtp's own libsrtp: the contexts are
    its, so only its functions may read them."""
    return int(_srtp_ffi.cast("uintptr_t", _srtp_ffi.addressof(_srtp_lib, name)))


def refuse(reason: str, addr: object, exc_info: bool = False) -> None:
    COUNTERS.datagrams_refused += 1
    log.debug("refused a datagram from %s: %s", addr, reason, exc_info=exc_info)


def _stun_received(protocol: StunProtocol, message: stun.Message, addr: tuple[str, int]) -> None:
    """What aioice's `StunProtocol.datagram_received` does with a STUN message,
    given the message the door parsed (a second parse cost ~22 µs of the
    ~100 µs a consent check cost to answer)."""
    if message.message_class in (stun.Class.RESPONSE, stun.Class.ERROR):
        transaction = protocol.transactions.get(message.transaction_id)
        if transaction is not None:
            transaction.response_received(message, addr)
    elif message.message_class == stun.Class.REQUEST:
        protocol.receiver.request_received(message, addr, protocol)


def _guarded_datagram_received(self: StunProtocol, data: bytes, addr: tuple[Any, ...]) -> None:
    size = len(data)
    if not size:
        refuse("empty", addr)
        return
    first = data[0]
    if first < 4:  # STUN
        if size < _STUN_HEADER:
            refuse("truncated STUN", addr)
            return
        try:
            message = stun.parse_message(data)
        except Exception:  # aioice raises ValueError, struct.error, UnicodeDecodeError... on junk
            refuse("malformed STUN", addr)
            return
        try:
            _stun_received(self, message, (addr[0], addr[1]))
        except Exception:  # one message aioice cannot handle is that message's problem
            refuse("STUN not handled", addr, exc_info=True)
        return
    if 19 < first < 64:
        if size < _DTLS_RECORD_HEADER:
            refuse("truncated DTLS", addr)
            return
    elif 127 < first < 192:
        if size < _RTP_HEADER:
            refuse("truncated RTP/RTCP", addr)
            return
    else:
        refuse(f"first byte {first} is no STUN, DTLS or RTP", addr)
        return
    candidate = getattr(self, "local_candidate", None)  # set once the socket is a candidate
    if candidate is None:
        refuse("data before the socket is a candidate", addr)
        return
    pair = self.receiver._nominated.get(candidate.component)
    if pair is not None and not _from_peer(self, pair, (addr[0], addr[1])):
        refuse("not from the peer's candidate pairs", addr)
        return
    if pair is not None and first > 127:
        dtls = getattr(self.receiver, _DTLS, None)
        if dtls is not None and dtls._state is DtlsState.CONNECTED:
            if is_rtcp(data):
                if _received_rtcp(dtls, data, addr):
                    return
            elif _received_rtp(self, dtls, data, addr):
                return
    # What aioice does with data, without first trying to parse it as
    # STUN: that costs a raised exception per media packet.
    self.receiver.data_received(data, candidate.component)


def _from_peer(protocol: StunProtocol, nominated: CandidatePair, source: tuple[str, int]) -> bool:
    """Whether a datagram from `source` to `protocol`'s socket is the peer's.

    The nominated pair's, or another pair's of this socket: Chromium, the
    controlling agent, may move media to another pair it finds writable
    before aioice has taken that pair's nomination (its check still in
    flight), and it sends DTLS from there too - refused, the handshake never
    ended. A pair's remote address is the peer's: signalled in its
    (authenticated) offer, or learnt from a STUN check carrying the ICE
    password.
    """
    if nominated.protocol is protocol and nominated.remote_addr == source:
        return True
    return any(p.protocol is protocol and p.remote_addr == source for p in protocol.receiver._check_list)


def _count_received(dtls: RTCDtlsTransport, data: bytes) -> None:
    """aiortc's receive counters (getStats), as `_recv_next` keeps them."""
    dtls._RTCDtlsTransport__rx_bytes += len(data)  # type: ignore[attr-defined]
    dtls._RTCDtlsTransport__rx_packets += 1  # type: ignore[attr-defined]


def _received_rtp(protocol: StunProtocol, dtls: RTCDtlsTransport, data: bytes, addr: tuple[Any, ...]) -> bool:
    """What `RTCDtlsTransport._recv_next` does with an SRTP packet (SRTP is
    up), done now; False (nothing done) when it must take aiortc's queue."""
    router = dtls._rtp_router
    if not router.receivers or not all(hasattr(r, _HANDLER) for r in router.receivers):
        return False
    _count_received(dtls, data)
    packet = _unprotected(dtls, data)
    if packet is None:  # aiortc drops these too, quietly
        return True
    receiver = _routed(dtls, packet, addr)
    lane = getattr(protocol, _LANE, None)
    if receiver is not None and lane is not None:
        _arm(lane, dtls, receiver, packet.ssrc, addr)
    return True


def _routed(dtls: RTCDtlsTransport, packet: RtpPacket, addr: object) -> RTCRtpReceiver | None:
    """Hand a received RTP packet to its receiver's handler; which receiver that was."""
    arrival_time_ms = int((time.time() + _NTP_TO_UNIX) * 1000)
    receiver = dtls._rtp_router.route_rtp(packet)
    if receiver is not None:
        try:
            getattr(receiver, _HANDLER)(packet, arrival_time_ms)
        except Exception:
            refuse("failed in RTP handling", addr, exc_info=True)
    return receiver


def _received_plain_rtp(dtls: RTCDtlsTransport, plain: bytes, addr: object) -> None:
    """A packet a lane unprotected (and counted) but leaves to Python: parsed and routed here."""
    try:
        packet = RtpPacket.parse(plain, dtls._rtp_header_extensions_map)
    except ValueError:
        return
    _routed(dtls, packet, addr)


def _arm(lane: Any, dtls: RTCDtlsTransport, receiver: RTCRtpReceiver, ssrc: int, peer: tuple[Any, ...]) -> None:
    """Let `lane` take the next packets of `ssrc` from `peer`, if the receiver's handler says how."""
    session, context = getattr(dtls, _RX_CONTEXT)
    if session is not dtls._rx_srtp:
        return
    if not lane.armed(peer, dtls, session):
        ids = dtls._rtp_header_extensions_map._HeaderExtensionsMap__ids  # type: ignore[attr-defined]
        numbers = tuple(getattr(ids, field) or 0 for field in _EXTENSION_FIELDS)
        lane.arm(peer, dtls, session, context, DtlsState.CONNECTED, numbers)
    if ssrc in lane.routes:
        return
    express: Express | None = getattr(receiver, _EXPRESS, None)
    route = express(ssrc) if express is not None else None
    lane.routes[ssrc] = None if route is None else (receiver, getattr(receiver, _HANDLER), *route)


def _unprotected(dtls: RTCDtlsTransport, data: bytes) -> RtpPacket | None:
    """The RTP packet an SRTP datagram carries, as aiortc's parse makes it;
    None if SRTP refuses it or it is no valid RTP."""
    extensions = dtls._rtp_header_extensions_map
    try:
        session, context = getattr(dtls, _RX_CONTEXT)
        # The context is the session's while that session is the transport's
        # (anything that replaced it, the compiled path must not outlive).
        if _fastrecv is not None and session is dtls._rx_srtp:
            got = _fastrecv.receive(context, data, RtpPacket, HeaderExtensions)
            if type(got) is tuple:  # with header extensions: their ids are the session's, aiortc reads them
                packet, profile, value = got
                packet.extensions = extensions.get(profile, value)
                return packet
            if got is not NotImplemented:
                return got
        return RtpPacket.parse(dtls._rx_srtp.unprotect(data), extensions)
    except (pylibsrtp.Error, ValueError):
        return None


def _received_rtcp(dtls: RTCDtlsTransport, data: bytes, addr: object) -> bool:
    """What `RTCDtlsTransport._recv_next` does with an SRTCP packet (SRTP is
    up), done now; True: nothing is left for aiortc's queue."""
    _count_received(dtls, data)
    try:
        packets = RtcpPacket.parse(dtls._rx_srtp.unprotect_rtcp(data))
    except (pylibsrtp.Error, ValueError):  # aiortc drops these too, quietly
        return True
    for packet in packets:
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP and _received_remb(dtls, packet):
            continue
        for recipient in dtls._rtp_router.route_rtcp(packet):
            # aiortc's own handlers (and the hub's wrappers of them: a sink's
            # NACK answers and keyframe requests, a layer switch's REMB and
            # loss), in aiortc's order; they are coroutines that, for RTCP,
            # finish without waiting for anything.
            _run_eagerly(recipient._handle_rtcp_packet(packet), addr)
    return True


def _received_remb(dtls: RTCDtlsTransport, packet: RtcpPsfbPacket) -> bool:
    """A REMB (two a second from an aiortc viewer) to senders that all take
    it through `on_remb`: their callbacks, and nothing else (a fifth of the
    RTCP handling's cost: aiortc's routing, its handler and the hub's
    wrapper each unpacked the estimate, in two coroutines). False: aiortc's
    routing and handlers take it."""
    try:
        bitrate, ssrcs = unpack_remb_fci(packet.fci)
    except ValueError:
        return False  # aiortc's handlers ignore it as they do
    senders = dtls._rtp_router.senders
    recipients = {senders.get(ssrc) for ssrc in ssrcs}
    if not recipients or not all(hasattr(r, _REMB) for r in recipients):
        return False
    for sender in recipients:
        for callback in getattr(sender, _REMB):
            callback(bitrate)
    return True


def _run_eagerly(handler: Coroutine[Any, Any, None], addr: object) -> None:
    """Run a coroutine up to its end or its first wait, now; a task finishes
    one that waits (what Python 3.12's eager tasks do): no event-loop round
    trip for a handler that never waits."""
    try:
        awaiting = handler.send(None)
    except StopIteration:
        return
    except Exception:
        refuse("failed in RTCP handling", addr, exc_info=True)
        return
    task = asyncio.ensure_future(_finish(handler, awaiting, addr))
    _finishing.add(task)
    task.add_done_callback(_finishing.discard)


#: Handlers `_run_eagerly` left waiting: held until they end.
_finishing: set[asyncio.Task[None]] = set()


async def _finish(handler: Coroutine[Any, Any, None], awaiting: Any, addr: object) -> None:
    # The coroutine yielded what it awaits (a future, or None: asyncio.sleep(0)
    # asks for one turn of the loop); resume it once that is done, as its
    # task would have. The future's outcome is the handler's to see.
    try:
        while True:
            await (asyncio.sleep(0) if awaiting is None else asyncio.wait((awaiting,)))
            awaiting = handler.send(None)
    except StopIteration:
        pass
    except Exception:
        refuse("failed in RTCP handling", addr, exc_info=True)
    finally:
        handler.close()


def _contained_recv_next(
    recv_next: Callable[[RTCDtlsTransport], Awaitable[None]],
) -> Callable[[RTCDtlsTransport], Awaitable[None]]:
    async def _recv_next(self: RTCDtlsTransport) -> None:
        if self._rx_srtp is not None and not hasattr(self, _RX_CONTEXT):  # keyed: from now on SRTP may skip the queue
            setattr(self, _RX_CONTEXT, (self._rx_srtp, srtp_context(self._rx_srtp)))
            setattr(self.transport._connection, _DTLS, self)
        try:
            await recv_next(self)
        except ConnectionError:
            raise  # the ICE connection closed: the end of this transport
        except Exception:
            refuse("failed in DTLS/SRTP handling", "the selected pair", exc_info=True)

    return _recv_next
