"""Media addresses are configuration: which candidates the hub offers."""

from __future__ import annotations

import re

import aiohttp

from hub.media.ice import announce

from .conftest import HubProcess
from .test_api import auth, offer_sdp

ANSWER = (
    "v=0\r\no=- 1 1 IN IP4 10.0.0.5\r\ns=-\r\nt=0 0\r\nm=video 40000 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 10.0.0.5\r\n"
    "a=candidate:abc 1 udp 2130706431 10.0.0.5 40000 typ host\r\n"
    "a=candidate:def 1 udp 1694498815 1.2.3.4 40000 typ srflx raddr 10.0.0.5 rport 40000\r\n"
)


def test_announced_ip_replaces_host_candidates_only():
    out = announce(ANSWER, "203.0.113.7")
    assert "a=candidate:abc 1 udp 2130706431 203.0.113.7 40000 typ host" in out
    assert "typ srflx raddr 10.0.0.5" in out
    assert "c=IN IP4 203.0.113.7" in out
    assert announce(ANSWER, None) == ANSWER


async def test_hub_offers_only_its_configured_addresses(hub: HubProcess, http: aiohttp.ClientSession):
    token = hub.token("m-hedong", "hedong", "mediator")
    async with http.post(
        f"{hub.url}/whip/site-hedong",
        data=await offer_sdp(("video",)),
        headers=auth(token) | {"Content-Type": "application/sdp"},
    ) as r:
        assert r.status == 201
        answer = await r.text()
        location = r.headers["Location"]
    candidates = re.findall(r"a=candidate:\S+ \d+ udp \d+ (\S+) \d+ typ (\w+)", answer)
    assert candidates and {address for address, _ in candidates} == {"127.0.0.1"}
    async with http.delete(hub.url + location, headers=auth(token)) as r:
        assert r.status == 200
