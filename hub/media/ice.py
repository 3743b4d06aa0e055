"""Which addresses media uses (ICE host candidates and an announced address), and when ICE checks consent."""

from __future__ import annotations

import logging
import random
import re

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


def align_consent() -> None:
    """Run every connection's consent checks on the shared tick (`query_consent`)."""
    aioice.ice.Connection.query_consent = query_consent  # type: ignore[method-assign]
