"""TURN for real: coturn with time-limited credentials the hub mints, and clients whose only UDP
path to the hub is a TURN relay (network namespaces, tests/netem.py)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from playwright.async_api import Browser

from client import bot
from hub.config import Settings
from hub.media.turn import mint, password

from .conftest import ROOT, HubProcess, free_port, start_hub
from .netem import Namespace, Network
from .nsbot import BotProcess

SECRET = "turn-test-secret-do-not-use"
HUB_PORT = 8080
#: Where the hub and coturn sit inside their namespaces (every test gets namespaces of its own).
HUB_IP, RELAY_IP, TURN_IP = "10.77.1.1", "10.77.1.2", "10.77.0.1"
TURN_URL = f"turn:{TURN_IP}:3478?transport=udp"


@dataclass
class TurnSetup:
    hub: HubProcess
    hub_ns: Namespace
    router: Namespace
    clients: list[Namespace]
    turn_log: Path

    @property
    def url(self) -> str:
        return f"http://{HUB_IP}:{HUB_PORT}"

    def health(self) -> dict[str, object]:
        probe = f"import urllib.request; print(urllib.request.urlopen('{self.url}/healthz', timeout=5).read().decode())"
        return json.loads(self.hub_ns.run("python3", "-c", probe).stdout)


def coturn_config(tmp: Path) -> Path:
    """coturn on the router: clients reach it at TURN_IP, it relays from RELAY_IP (the hub's link)."""
    config = tmp / "turnserver.conf"
    config.write_text(
        "\n".join(
            [
                "listening-port=3478",
                f"listening-ip={TURN_IP}",
                f"relay-ip={RELAY_IP}",
                "min-port=49152",
                "max-port=49999",
                "use-auth-secret",
                f"static-auth-secret={SECRET}",
                "realm=hub.test",
                "fingerprint",
                "no-tls",
                "no-dtls",
                "no-cli",
                "no-software-attribute",
                "log-file=stdout",
                "simple-log",
                "verbose",  # allocations by user, so the test sees whose went through
                f"userdb={tmp / 'turndb'}",  # not the system's /var/lib/turn
                f"pidfile={tmp / 'turnserver.pid'}",
                "",
            ]
        )
    )
    return config


def turn_setup(network: Network, tmp_path: Path, clients: int) -> TurnSetup:
    """The hub's namespace and each client's hang off a router namespace that carries TCP (HTTP
    signalling) between them and drops every routed UDP packet: media can only go through the
    coturn that runs on the router itself."""
    hub_ns, router = network.namespace(), network.namespace()
    hub_link = network.link(hub_ns, router)
    assert (hub_link.a.address, hub_link.b.address) == (HUB_IP, RELAY_IP)
    router.run("ip", "addr", "add", f"{TURN_IP}/32", "dev", "lo")
    router.forward()
    router.nft("table inet no_udp {\n chain routed { type filter hook forward priority 0; meta l4proto udp drop; }\n}")
    network.route(hub_ns, RELAY_IP)
    client_ns = []
    for _ in range(clients):
        ns = network.namespace()
        link = network.link(ns, router)
        network.route(ns, link.b.address)
        client_ns.append(ns)

    turn_log = tmp_path / "turnserver.log"
    turn = router.popen(["turnserver", "-c", str(coturn_config(tmp_path))], stdout=turn_log.open("wb"),
                        stderr=subprocess.STDOUT)  # fmt: skip
    data = tmp_path / "hub"
    data.mkdir()
    log = data / "hub.log"
    env = os.environ | {
        "HUB_ICE_ADDRESSES": json.dumps([HUB_IP]),
        "HUB_TURN_URLS": json.dumps([TURN_URL]),
        "HUB_TURN_SECRET": SECRET,
        "HUB_SESSION_CONNECT_SECONDS": "8",
    }
    proc = hub_ns.python("-m", "hub", "serve", "--host", HUB_IP, "--port", str(HUB_PORT), "--data", str(data),
                         env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)  # fmt: skip
    try:
        hub_ns.wait_for_port(HUB_IP, HUB_PORT, proc)
    except Exception:
        raise RuntimeError(f"hub did not start: {log.read_text()[-2000:]}") from None
    if turn.poll() is not None:
        raise RuntimeError(f"turnserver exited: {turn_log.read_text()[-2000:]}")
    return TurnSetup(HubProcess(f"http://{HUB_IP}:{HUB_PORT}", data, proc, log), hub_ns, router, client_ns, turn_log)


def test_clients_reach_the_hub_only_through_turn_with_minted_credentials(network: Network, tmp_path: Path):
    setup = turn_setup(network, tmp_path, clients=3)
    publisher_ns, viewer_ns, refused_ns = setup.clients
    token = setup.hub.sign("mediator-turn", "guomaying", "mediator")
    publisher = BotProcess(publisher_ns, "publish", setup.url, token, "site-rianxiuma")
    published = publisher.next(timeout=30)
    assert published.get("local") == "relay", published  # no other path: the router drops routed UDP

    viewer_token = setup.hub.sign("operator-turn", "guinan", "operator")
    viewer = BotProcess(viewer_ns, "view", setup.url, viewer_token, published["connected"], "--seconds", "6")
    # Refused by coturn: a credential whose HMAC does not match, and a well-signed one that expired.
    expired = mint(SECRET, [TURN_URL], "operator-expired", int(time.time()) - 60).ice_server()
    forged = dict(expired, username=f"{int(time.time()) + 3600}:operator-forged", credential=password("guess", "x"))
    view_args = ("view", setup.url, viewer_token, published["connected"], "--seconds", "1", "--connect-timeout", "6")
    refused = [BotProcess(refused_ns, *view_args, "--ice-servers", json.dumps([bad])) for bad in (expired, forged)]
    viewed = viewer.next(timeout=30)
    assert viewed.get("local") == "relay", viewed
    received = viewer.next(timeout=30)["received"]
    for refused_bot in refused:
        failure = refused_bot.next(timeout=30)
        assert "not connected" in failure.get("error", ""), failure
        assert refused_bot.proc.wait(10) == 1
    publisher.finish()
    sent = {key: at for key, at, _ in publisher.next(timeout=30)["sent"]}

    # Byte-identical frames through two TURN relays and the hub: every frame received was sent as
    # it is, and of those sent while the viewer watched (from its first frame to its last) it got
    # nearly all.
    assert received and all(key in sent for key, *_ in received)
    assert received[0][2], "the first frame a viewer gets is a keyframe"
    first, last = sent[received[0][0]], sent[received[-1][0]]
    window = {key for key, at in sent.items() if first <= at <= last}
    got = {key for key, *_ in received} & window
    assert len(window) >= 30 and len(got) >= 0.95 * len(window), (len(got), len(window), last - first)
    log = setup.turn_log.read_text()
    # coturn allocated for both users by the names the hub minted, and refused the two bad ones.
    for user in ("mediator-turn", "operator-turn"):
        assert re.search(rf"user <\d+:{user}>: incoming packet ALLOCATE processed, success", log), user
    for bad in (expired, forged):
        assert f"user <{bad['username']}>: incoming packet message processed, error 401" in log, bad
        assert f"user <{bad['username']}>: incoming packet ALLOCATE processed, success" not in log
    # Nothing is left of the failed sessions on the hub.
    assert setup.health()["subscriptions"] == 0


async def test_ice_servers_api_mints_a_credential_per_user(tmp_path: Path, http: aiohttp.ClientSession):
    hub = start_hub(tmp_path, env={"HUB_TURN_URLS": json.dumps([TURN_URL]), "HUB_TURN_SECRET": SECRET,
                                   "HUB_TURN_CREDENTIAL_SECONDS": "600"})  # fmt: skip
    try:
        before = int(time.time())
        async with http.get(f"{hub.url}/api/ice-servers", headers=_auth(hub.sign("m-ice", "guinan", "mediator"))) as r:
            assert r.status == 200
            body = await r.json()
        [server] = body["ice_servers"]
        expiry, user = server["username"].split(":", 1)
        assert user == "m-ice" and int(expiry) == body["expires_at"]
        assert before + 600 <= body["expires_at"] <= int(time.time()) + 600
        assert server["urls"] == [TURN_URL] and server["credential"] == password(SECRET, server["username"])
        async with http.get(f"{hub.url}/api/ice-servers") as r:
            assert r.status == 401
    finally:
        hub.stop()


#: Records the configuration of every RTCPeerConnection the page creates.
RECORD_PC_CONFIG = """
window.pcConfigs = [];
const Native = window.RTCPeerConnection;
window.RTCPeerConnection = function (config) { window.pcConfigs.push(config); return new Native(config); };
window.RTCPeerConnection.prototype = Native.prototype;
"""


async def test_room_page_uses_the_turn_credential_minted_for_its_user(tmp_path: Path, browser: Browser):
    # Media stays on loopback; the TURN URL points at a loopback port nobody listens on, so
    # Chromium's allocation fails at once and the host candidates carry the media.
    turn_url = f"turn:127.0.0.1:{free_port()}?transport=udp"
    hub = start_hub(tmp_path, env={"HUB_TURN_URLS": json.dumps([turn_url]), "HUB_TURN_SECRET": SECRET})
    context = await browser.new_context()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
            camera = await bot.publish(http, hub.url, hub.sign("cam-turn", "rianxiuma", "terminal"), "site-rianxiuma",
                                       [bot.SyntheticVideo("vp8", 160, 120, 15)])  # fmt: skip
            page = await context.new_page()
            await page.add_init_script(RECORD_PC_CONFIG)
            kiosk = hub.sign("kiosk-turn", "rianxiuma", "terminal")
            await page.goto(f"{hub.url}/rooms/site-rianxiuma?token={kiosk}&autojoin=1")
            tile = page.locator(f'.room-tile[data-stream-id="{camera.resource_id}"] video')
            await page.wait_for_function("(v) => v.videoWidth > 0", arg=await tile.element_handle(timeout=20_000))
            configs = await page.evaluate("window.pcConfigs")
            await camera.close()
        assert configs, "the page made no peer connection"
        for config in configs:  # its own camera's WHIP and the WHEP of the bot's stream
            [server] = config["iceServers"]
            assert server["urls"] == [turn_url] and server["username"].endswith(":kiosk-turn")
            assert server["credential"] == password(SECRET, server["username"])
    finally:
        await context.close()
        hub.stop()


async def test_ice_servers_api_without_turn_hands_out_none(hub: HubProcess, http: aiohttp.ClientSession):
    async with http.get(f"{hub.url}/api/ice-servers", headers=_auth(hub.sign("m-ice2", "guinan", "mediator"))) as r:
        assert await r.json() == {"ice_servers": [], "expires_at": None}


def test_turn_urls_without_a_secret_are_refused():
    with pytest.raises(ValueError, match="turn_secret"):
        Settings(turn_urls=[TURN_URL])
    with pytest.raises(ValueError, match="not a turn"):
        Settings(turn_urls=["stun:example.org"], turn_secret="s")


def test_compose_gives_coturn_and_the_hub_one_secret():
    """docker-compose.yml: coturn checks the credentials the hub mints (one TURN_SECRET), at the
    URLs the hub hands out (TURN_HOST)."""
    binary = shutil.which("docker-compose")
    assert binary, "docker-compose is not installed (scripts/test.sh installs it)"
    env = os.environ | {"TURN_SECRET": "s3cret-from-env", "TURN_HOST": "turn.example.org"}
    resolved = subprocess.run([binary, "-f", str(ROOT / "docker-compose.yml"), "config"], env=env,
                              capture_output=True, text=True, timeout=60, check=True).stdout  # fmt: skip
    assert "HUB_TURN_SECRET: s3cret-from-env" in resolved
    assert "- --use-auth-secret" in resolved and "- --static-auth-secret=s3cret-from-env" in resolved
    urls = json.loads(re.search(r"HUB_TURN_URLS: '(.*)'", resolved).group(1))  # type: ignore[union-attr]
    assert urls and all(url.startswith("turn:turn.example.org:3478?transport=") for url in urls)
    Settings(turn_urls=urls, turn_secret="s3cret-from-env")  # the hub accepts them


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
