"""Emulated networks for tests: network namespaces joined by veth pairs, with rate limits, random loss
and added delay, all on private addresses that exist only inside the namespaces a test creates.

The kernels here have no netem qdisc, so each impairment is built from what they do have:
- rate: `tc qdisc ... tbf` on an interface's egress;
- loss: an nftables rule `numgen random mod 100 < N drop` on an interface's ingress (netdev family);
- delay: a bridge process of our own (`Network.delayed`), in a namespace of its own between the two
  ends, that reads every Ethernet frame from one side with an AF_PACKET socket and writes it to the
  other side after the delay. Being below IP, it carries ICE, DTLS, RTP and TCP alike, and the two
  ends see each other's real addresses (no relay candidates to announce).

Everything a `Network` creates — namespaces, the processes started in them, and with the namespaces
their interfaces, qdiscs and nftables rules — is removed by `close()`, which the `network` fixture
(tests/conftest.py) calls even when a test fails. Namespaces left by a killed test run (its process
gone) are swept when the next `Network` starts.

Run as a script, this module is the delay bridge: `python tests/netem.py bridge IF_A IF_B DELAY_S`.
"""

from __future__ import annotations

import heapq
import itertools
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

#: Every namespace a test creates is named PREFIX<pid>-<n>, so that a later run can tell its own
#: from those of a test process that died without cleaning up.
PREFIX = "hubt"
_NAME = re.compile(rf"^{PREFIX}(\d+)-\d+$")
_counter = itertools.count(1)
ROOT = Path(__file__).resolve().parent.parent


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def _namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], check=True, capture_output=True, text=True, timeout=30).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale() -> list[str]:
    """Delete namespaces created by test processes that no longer exist; returns their names."""
    stale = [n for n in _namespaces() if (m := _NAME.match(n)) and not _alive(int(m.group(1)))]
    for name in stale:
        subprocess.run(["ip", "netns", "delete", name], capture_output=True, timeout=30)
    return stale


@dataclass
class Namespace:
    name: str
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def command(self, args: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *args]

    def run(self, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run a command inside the namespace and wait for it."""
        return subprocess.run(self.command(args), check=check, capture_output=True, text=True, timeout=timeout)

    def popen(self, args: Sequence[str], **kwargs: object) -> subprocess.Popen[bytes]:
        """Start a process inside the namespace; `Network.close()` ends it. `ip netns exec` execs
        the command in place, so the Popen's pid is the command's own."""
        proc = subprocess.Popen(self.command(args), **kwargs)  # type: ignore[call-overload]
        self.processes.append(proc)
        return proc

    def python(self, *args: str, **kwargs: object) -> subprocess.Popen[bytes]:
        """This test run's Python in the namespace, by default in the project's root (so that
        `-m hub` works)."""
        kwargs.setdefault("cwd", ROOT)
        return self.popen([sys.executable, *args], **kwargs)

    def wait_for_port(self, host: str, port: int, proc: subprocess.Popen[bytes] | None = None,
                      timeout: float = 30) -> None:  # fmt: skip
        """Wait until something inside the namespace accepts TCP connections on host:port."""
        probe = f"import socket; socket.create_connection(({host!r}, {port}), timeout=1).close()"
        deadline = time.monotonic() + timeout
        while True:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"process exited with {proc.returncode} before listening on {host}:{port}")
            if self.run(sys.executable, "-c", probe, check=False).returncode == 0:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listening on {host}:{port} in {self.name}")
            time.sleep(0.2)

    def forward(self, enabled: bool = True) -> None:
        """Route between this namespace's interfaces (a router namespace)."""
        self.run("sysctl", "-q", "-w", f"net.ipv4.ip_forward={int(enabled)}")

    def nft(self, script: str) -> None:
        done = subprocess.run(self.command(["nft", "-f", "-"]), input=script, text=True, capture_output=True,
                              timeout=30)  # fmt: skip
        if done.returncode:
            raise RuntimeError(f"nft in {self.name}: {done.stderr}")

    def stop_processes(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.processes:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


@dataclass
class End:
    """One end of a veth pair: the interface, the namespace that owns it, its address."""

    namespace: Namespace
    interface: str
    address: str

    def rate_limit(self, kbit: int, queue_ms: int = 100) -> None:
        """Limit what leaves through this interface to `kbit` kbit/s (tbf); packets that would wait
        longer than `queue_ms` in its queue are dropped, as at a real bottleneck."""
        burst = max(3000, kbit * 1000 // 8 // 50)  # 20 ms of traffic, and at least two full frames
        self.namespace.run("tc", "qdisc", "replace", "dev", self.interface, "root", "tbf", "rate", f"{kbit}kbit",
                           "burst", str(burst), "latency", f"{queue_ms}ms")  # fmt: skip

    def unlimit(self) -> None:
        self.namespace.run("tc", "qdisc", "del", "dev", self.interface, "root", check=False)

    def lose(self, percent: int, protocol: str = "udp") -> None:
        """Drop `percent` % of the IPv4 `protocol` packets ARRIVING at this interface, at random
        (0 removes the rule): `link.b.lose(3)` makes the way from a to b lose 3 %. Dropped on
        arrival (netdev ingress), not on the way out, because a locally sent packet dropped by an
        output rule fails its send() with EPERM, which no real lossy link does."""
        table = f"loss_{self.interface}"
        self.namespace.nft(f"table netdev {table}\ndelete table netdev {table}\n")
        if percent <= 0:
            return
        self.namespace.nft(
            f"table netdev {table} {{\n"
            f'  chain arriving {{ type filter hook ingress device "{self.interface}" priority 0;\n'
            f"    ip protocol {protocol} numgen random mod 100 < {percent} drop; }}\n"
            "}\n"
        )


@dataclass
class Link:
    a: End
    b: End


class Network:
    """The namespaces, links and processes of one test; `close()` removes them all."""

    def __init__(self) -> None:
        sweep_stale()
        self._id = next(_counter)
        self._names = itertools.count(1)
        self._subnets = itertools.count(1)
        self.namespaces: list[Namespace] = []

    def namespace(self) -> Namespace:
        name = f"{PREFIX}{os.getpid()}-{self._id * 1000 + next(self._names)}"
        _ip("netns", "add", name)
        ns = Namespace(name)
        self.namespaces.append(ns)
        ns.run("ip", "link", "set", "lo", "up")
        return ns

    def _veth(self, a: Namespace, b: Namespace, address_a: str | None, address_b: str | None,
              prefix: int = 24) -> tuple[End, End]:  # fmt: skip
        n = next(self._names)
        # Created directly inside their namespaces: no name ever exists in the root namespace.
        name_a, name_b = f"v{n}a", f"v{n}b"
        _ip("link", "add", name_a, "netns", a.name, "type", "veth", "peer", "name", name_b, "netns", b.name)
        ends = []
        for ns, name, address in ((a, name_a, address_a), (b, name_b, address_b)):
            # One MTU-sized packet per segment: the delay bridge cannot forward GSO super-packets.
            ns.run("ip", "link", "set", name, "gso_max_segs", "1", "gso_max_size", "1500")
            if address:
                ns.run("ip", "addr", "add", f"{address}/{prefix}", "dev", name)
            ns.run("ip", "link", "set", name, "up")
            ends.append(End(ns, name, address or ""))
        return ends[0], ends[1]

    def _subnet(self) -> str:
        """A /24 no other link of this network uses (10.77.N.0). Namespaces are isolated, so other
        tests' networks may reuse the same numbers."""
        n = next(self._subnets)
        if n > 254:
            raise RuntimeError("more than 254 links in one test network")
        return f"10.77.{n}"

    def link(self, a: Namespace, b: Namespace) -> Link:
        """A veth pair between two namespaces: 10.77.N.1 in `a`, 10.77.N.2 in `b`."""
        net = self._subnet()
        end_a, end_b = self._veth(a, b, f"{net}.1", f"{net}.2")
        return Link(end_a, end_b)

    def delayed(self, a: Namespace, b: Namespace, delay: float) -> Link:
        """A link from `a` (10.77.N.1) to `b` (10.77.N.2) through a bridge that holds every frame
        `delay` seconds in each direction (so the round trip gains 2 x delay)."""
        net = self._subnet()
        middle = self.namespace()
        end_a, mid_a = self._veth(a, middle, f"{net}.1", None)
        mid_b, end_b = self._veth(middle, b, None, f"{net}.2")
        for end in (end_a, end_b):
            end.namespace.run(sys.executable, "-c", _NO_TX_CHECKSUM, end.interface)
        proc = middle.python(__file__, "bridge", mid_a.interface, mid_b.interface, str(delay),
                             stdout=subprocess.PIPE)  # fmt: skip
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"ready":  # its sockets are bound: frames are not lost
            raise RuntimeError(f"delay bridge failed to start ({proc.wait(10)})")
        return Link(end_a, end_b)

    def route(self, ns: Namespace, via: str) -> None:
        """Send everything `ns` has no direct route for to `via` (a router namespace's address)."""
        ns.run("ip", "route", "add", "default", "via", via)

    def close(self) -> None:
        for ns in self.namespaces:
            ns.stop_processes()
        for ns in self.namespaces:
            subprocess.run(["ip", "netns", "delete", ns.name], capture_output=True, timeout=30)
        self.namespaces.clear()

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def leftovers() -> list[str]:
    """Namespaces of this test process still present (a test asserts none are left)."""
    return [n for n in _namespaces() if n.startswith(f"{PREFIX}{os.getpid()}-")]


#: veth leaves UDP and TCP checksums for "the hardware" to fill in; frames copied by the delay bridge
#: would reach the far end with them unfilled and be dropped. There is no ethtool here: this is
#: `ethtool -K IF tx off` as its ioctl (SIOCETHTOOL, ETHTOOL_STXCSUM), run inside the namespace.
_NO_TX_CHECKSUM = """
import ctypes, fcntl, socket, struct, sys
value = ctypes.create_string_buffer(struct.pack("II", 0x17, 0), 8)
request = struct.pack("16sP", sys.argv[1].encode(), ctypes.addressof(value))
fcntl.ioctl(socket.socket(), 0x8946, request)
"""


# -- the delay bridge (runs as its own process inside the middle namespace) ---------------------

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4


def bridge(a: str, b: str, delay: float) -> None:
    """Copy every frame between interfaces a and b, each `delay` seconds after it arrived."""
    socks = {}
    for name in (a, b):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.bind((name, 0))
        s.setblocking(False)
        socks[name] = s
    other = {socks[a]: socks[b], socks[b]: socks[a]}
    pending: list[tuple[float, int, socket.socket, bytes]] = []
    order = itertools.count()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("ready", flush=True)
    poll = select.poll()
    for s in other:
        poll.register(s, select.POLLIN)
    by_fd = {s.fileno(): s for s in other}
    while True:
        now = time.monotonic()
        while pending and pending[0][0] <= now:
            _, _, out, frame = heapq.heappop(pending)
            try:
                out.send(frame)
            except OSError:
                pass  # a full queue on the far side: the frame is lost, as on a real link
        timeout = max(0.0, pending[0][0] - now) * 1000 if pending else 1000
        for fd, _ in poll.poll(timeout):
            s = by_fd[fd]
            while True:
                try:
                    frame, address = s.recvfrom(65535)
                except BlockingIOError:
                    break
                if address[2] == PACKET_OUTGOING:  # our own send, seen on the way out
                    continue
                heapq.heappush(pending, (time.monotonic() + delay, next(order), other[s], frame))


if __name__ == "__main__":
    if len(sys.argv) != 5 or sys.argv[1] != "bridge":
        sys.exit("usage: netem.py bridge IF_A IF_B DELAY_SECONDS")
    bridge(sys.argv[2], sys.argv[3], float(sys.argv[4]))
