"""Which addresses media uses (ICE host candidates and an announced address), and when ICE checks consent."""

from __future__ import annotations

import logging
import random
import re
import socket
import struct
from collections.abc import Callable

import aioice.ice
import aioice.stun

from hub.media.upkeep import ticker

log = logging.getLogger(__name__)

_default_host_addresses = aioice.ice.get_host_addresses


def use_addresses(addresses: list[str]) -> None:
    """Gather ICE host candidates on exactly these local addresses.

    aioice reads its addresses from one module-level function and leaves out
    loopback; replacing it is how a hub (or a test) keeps media on chosen
    interfaces, 127.0.0.1 included. An empty list restores aioice's choice.
    """
    if not addresses:
        aioice.ice.get_host_addresses = _default_host_addresses
        return
    chosen = list(addresses)

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in chosen if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

    aioice.ice.get_host_addresses = get_host_addresses


_HOST_CANDIDATE = re.compile(r"^(a=candidate:\S+ \d+ udp \d+ )(\S+)( \d+ typ host.*)$", re.IGNORECASE)


def announce(sdp: str, public_ip: str | None) -> str:
    """Rewrite host candidates to a public address, for a hub behind 1:1 NAT.

    The port stays: the NAT must forward the same UDP ports to the hub.
    """
    if not public_ip:
        return sdp
    lines = []
    for line in sdp.split("\r\n"):
        match = _HOST_CANDIDATE.match(line)
        if match:
            line = f"{match.group(1)}{public_ip}{match.group(3)}"
        elif line.startswith("c=IN IP4 "):
            line = f"c=IN IP4 {public_ip}"
        lines.append(line)
    return "\r\n".join(lines)


async def query_consent(self: aioice.ice.Connection) -> None:
    """aioice's consent freshness loop (RFC 7675), its randomized 4-6 s waits
    ended at the shared tick (hub.media.upkeep): one wake-up checks every
    connection due by then, instead of one wake-up per connection. The rest
    is aioice 0.13's: one check per nominated pair, no retransmission, the
    connection closed after CONSENT_FAILURES checks in a row unanswered."""
    assert self.remote_password is not None  # consent checks start once connect() has it
    failures = 0
    tick = ticker()
    while True:
        await tick.sleep(aioice.ice.CONSENT_INTERVAL * (0.8 + 0.4 * random.random()))
        for pair in self._nominated.values():
            request = self.build_request(pair, nominate=False)
            try:
                await pair.protocol.request(
                    request, pair.remote_addr, integrity_key=self.remote_password.encode("utf8"), retransmissions=0
                )
                failures = 0
            except aioice.stun.TransactionError:
                failures += 1
            if failures >= aioice.ice.CONSENT_FAILURES:
                log.info("ICE consent to send expired")
                self._query_consent_task = None
                return await self.close()


_aioice_pack_address = aioice.stun.pack_address
_aioice_xor_data = aioice.stun.xor_data
_XOR_PAD = struct.pack("!HI", aioice.stun.COOKIE >> 16, aioice.stun.COOKIE)


def _same(data: bytes) -> bytes:
    return data


def xor_data(data: bytes, transaction_id: bytes) -> bytes:
    """aioice's `stun.xor_data` (an XOR-MAPPED-ADDRESS's port and address
    XORed with the magic cookie and transaction id), in one integer XOR
    instead of a byte at a time (3 µs)."""
    pad = _XOR_PAD + transaction_id
    size = len(data)
    if size > len(pad):
        return _aioice_xor_data(data, transaction_id)  # its error, for what no address is
    return (int.from_bytes(data, "big") ^ int.from_bytes(pad[:size], "big")).to_bytes(size, "big")


def pack_address(value: tuple[str, int], xor: Callable[[bytes], bytes] = _same) -> bytes:
    """aioice's `stun.pack_address` with `inet_pton` instead of `ipaddress`
    (10 µs with the XOR, three times per response: the integrity, the
    fingerprint and the datagram each serialize the message)."""
    host, port = value[0], value[1]
    try:
        packed, family = socket.inet_pton(socket.AF_INET, host), aioice.stun.IPV4_PROTOCOL
    except OSError:
        try:
            packed, family = socket.inet_pton(socket.AF_INET6, host.split("%", 1)[0]), aioice.stun.IPV6_PROTOCOL
        except OSError:
            return _aioice_pack_address(value, xor)  # its error, for what no address is
    return bytes((0, family)) + xor(port.to_bytes(2, "big") + packed)


def install() -> None:
    """Run every connection's consent checks on the shared tick
    (`query_consent`), and make STUN's address packing cheap: a consent
    check answered cost the hub ~100 µs, a check of its own ~23 µs."""
    aioice.ice.Connection.query_consent = query_consent  # type: ignore[method-assign]
    # Module globals that aioice's XOR-MAPPED-ADDRESS packing looks up per call.
    aioice.stun.pack_address = pack_address
    aioice.stun.xor_data = xor_data
