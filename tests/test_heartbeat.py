"""The event sockets' shared heartbeat (signaling/heartbeat.py): a silent
client is pinged; one that answers no ping is dropped and its site's presence
goes with it; one that answers stays, however long it says nothing else."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from .conftest import EventSocket, start_hub, wait_until


async def test_a_socket_that_answers_no_ping_is_dropped(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    hub = start_hub(tmp_path, env={"HUB_WS_HEARTBEAT_SECONDS": "1", "HUB_SNAPSHOT_SECONDS": "0"})
    try:
        console = await EventSocket.open(http, hub, hub.sign("op-guinan", "guinan", "operator"))
        await console.ws.send_json({"type": "monitor", "on": True})
        await console.wait_for("ack")
        # Reads, so answers pings (aiohttp's client does while it reads), and otherwise says nothing.
        alive = await EventSocket.open(http, hub, hub.sign("med-guomaying", "guomaying", "mediator"))
        # Reads everything, answers nothing: its pings reach this loop instead of a pong.
        mute = await http.ws_connect(
            f"{hub.url}/ws?token={hub.sign('t-rianxiuma', 'rianxiuma', 'terminal')}", autoping=False
        )

        def presence(online: int) -> bool:
            return any(m["site_id"] == "rianxiuma" and m["online"] == online for m in console.of("presence"))

        await wait_until(lambda: presence(1), 15)
        pings = 0
        while (msg := await mute.receive(timeout=10)).type not in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
            pings += msg.type == aiohttp.WSMsgType.PING
        assert pings >= 1
        await wait_until(
            lambda: "dropping the event socket of t-rianxiuma: no answer to a ping" in hub.log.read_text(), 15
        )
        await wait_until(lambda: presence(0), 15)
        # Several heartbeat intervals later the socket that answers is still open and served.
        await asyncio.sleep(3)
        assert not alive.ws.closed
        await alive.settle()
        assert "dropping the event socket of med-guomaying" not in hub.log.read_text()
        await alive.close()
        await console.close()
    finally:
        hub.stop()
