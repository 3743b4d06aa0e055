"""What this process's media plane has done, for `/metrics`.

Plain integers bumped on the packet path (a dict lookup or a lock would cost
more than the count is worth); readers take them as they are.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class MediaCounters:
    #: RTP packets received from publishers (or fed by the hub's own cameras).
    packets_received: int = 0
    #: Of those, packets of relays' pulls taken by the door's express lane
    #: (hub.media.door.lane): handled in C, no Python run for them.
    packets_express: int = 0
    #: RTP packets and their bytes written to viewers' sockets.
    packets_forwarded: int = 0
    bytes_forwarded: int = 0
    #: Packets a viewer did not get: its backlog was full or it waited for a keyframe.
    packets_dropped: int = 0
    #: Keyframe requests (PLI) sent to publishers, after throttling.
    keyframe_requests: int = 0
    #: Packets resent to viewers that asked for them (NACK).
    retransmissions: int = 0
    #: Datagrams refused at the media door before DTLS/SRTP (empty, truncated, wrong source).
    datagrams_refused: int = 0


COUNTERS = MediaCounters()
