"""Which addresses media uses: ICE host candidates and an announced address."""

from __future__ import annotations

import re

import aioice.ice

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
