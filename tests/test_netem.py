"""The emulated-network harness itself: what it promises (rate, loss, delay, isolation, cleanup) holds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .netem import Network, leftovers

# A UDP probe run inside a namespace: sends COUNT datagrams of SIZE bytes to an echo server, paced
# at RATE per second, and prints how many came back and their round-trip times.
PROBE = """
import json, socket, sys, time
host, port, count, size, rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect((host, port)); s.settimeout(0)
sent, rtts, start = {}, [], time.monotonic()
for i in range(count):
    while time.monotonic() < start + i / rate:
        try:
            data = s.recv(65535); rtts.append(time.monotonic() - sent[int(data[:8])])
        except BlockingIOError:
            time.sleep(0.0005)
    sent[i] = time.monotonic(); s.send(b"%08d" % i + bytes(size - 8))
end = time.monotonic() + 1.0
while time.monotonic() < end:
    try:
        data = s.recv(65535); rtts.append(time.monotonic() - sent[int(data[:8])])
    except BlockingIOError:
        time.sleep(0.0005)
print(json.dumps({"received": len(rtts), "rtts": sorted(rtts)}))
"""
ECHO = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
while True:
    data, peer = s.recvfrom(65535); s.sendto(data, peer)
"""


def _probe(net: Network, delay: float | None, count: int, size: int, rate: float,
           loss: int = 0, kbit: int | None = None) -> dict:  # fmt: skip
    a, b = net.namespace(), net.namespace()
    link = net.delayed(a, b, delay) if delay is not None else net.link(a, b)
    if loss:
        link.b.lose(loss)
    if kbit:
        link.a.rate_limit(kbit)
    echo = b.python("-c", ECHO, link.b.address, "9000", stdout=subprocess.PIPE)
    assert echo.stdout is not None and echo.stdout.readline().strip() == b"ready"
    out = a.run(sys.executable, "-c", PROBE, link.b.address, "9000", str(count), str(size), str(rate), check=False,
                timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_delay_bridge_adds_its_delay_each_way_and_loss_drops_its_share(network: Network):
    result = _probe(network, 0.05, count=400, size=200, rate=200, loss=10)
    rtts = result["rtts"]
    # 10 % loss one way: about 360 of 400 come back (binomial, sd 6).
    assert 320 <= result["received"] <= 390
    assert rtts[len(rtts) // 2] >= 0.1  # 2 x 50 ms, never less
    assert rtts[len(rtts) // 2] < 0.3


def test_rate_limit_caps_throughput(network: Network):
    # 1,000 datagrams of 1,000 bytes in one second (8 Mbit/s) into a 1 Mbit/s limit with a 100 ms
    # queue: about 1 s x 1 Mbit/s + the queue gets through, the rest is dropped.
    result = _probe(network, None, count=1000, size=1000, rate=1000, kbit=1000)
    assert 60 <= result["received"] <= 250


def test_namespaces_are_isolated_and_removed(network: Network):
    a, b, c = network.namespace(), network.namespace(), network.namespace()
    network.link(a, b)
    bc = network.link(b, c)
    # No route from a to c unless b routes and a and c know the way.
    probe = f"import socket; socket.create_connection(({bc.b.address!r}, 9), timeout=1)"
    assert "unreachable" in a.run(sys.executable, "-c", probe, check=False).stderr.lower()
    assert set(leftovers()) >= {a.name, b.name, c.name}
    network.close()
    assert leftovers() == []


def test_delay_bridge_carries_tcp(network: Network, tmp_path: Path):
    # GSO super-packets and unfilled checksums would stall TCP through the bridge: a 200 kB
    # download shows neither happens.
    (tmp_path / "blob").write_bytes(bytes(range(256)) * 800)
    a, b = network.namespace(), network.namespace()
    link = network.delayed(a, b, 0.03)
    server = b.python("-m", "http.server", "--bind", link.b.address, "8000", cwd=tmp_path, stderr=subprocess.DEVNULL)
    b.wait_for_port(link.b.address, 8000, server)
    fetch = f"import urllib.request; print(len(urllib.request.urlopen('http://{link.b.address}:8000/blob').read()))"
    assert a.run(sys.executable, "-c", fetch, timeout=60).stdout.strip() == str(256 * 800)
