"""Bugs these targets found in aiortc 1.16, which the hub cannot fix in its own code.

Off (the default, and in CI), a target fails on them. A long run (bench/fuzz.py)
steps around them so that the rest of its budget looks for other bugs, and
counts how many inputs hit each.
"""

from __future__ import annotations

import struct
from collections import Counter

#: Step around the known bugs (bench/fuzz.py turns this on unless --strict).
tolerate = False
hits: Counter[str] = Counter()

#: RtpPacket.parse raises struct.error for a header extension of the wrong length
#: (rtp.py:94, e.g. a 1-byte abs-send-time); RtcpPacket.parse and unpack_remb_fci for
#: counts that overrun the packet (e.g. a REMB listing more SSRCs than it carries).
#: aiortc's DTLS transport catches only ValueError, so on its own the sender's session
#: would end; hub/media/door.py contains any exception per datagram.
PARSE_ERRORS = (ValueError, struct.error)
PARSE = "aiortc 1.16: RTP/RTCP parsing raises struct.error, not ValueError (the media door contains it)"


def parse_errors() -> tuple[type[Exception], ...]:
    return PARSE_ERRORS if tolerate else (ValueError,)


def hit(name: str, exc: BaseException) -> None:
    if not isinstance(exc, ValueError):
        hits[name] += 1
