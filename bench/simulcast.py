"""Simulcast layers over emulated links: 16 viewers of one simulcast publisher, each behind its
own link (unconstrained, 1 Mbit/s, or 300 kbit/s with 3 % loss), then the same viewers of a
single-layer stream, in the same run.

Everything runs in network namespaces (tests/netem.py; root needed), each viewer in its own, with
its own link to a router; the hub and the publisher hang off the same router, unconstrained. The
clients are tests/nsbot.py processes (client/bot.py, client/simulcast.py). Per viewer the table
shows the layer it ended on and the one most of its frames came from, bytes/s and frames/s
received, freezes (gaps of over FREEZE seconds between frames; count and longest), and layer
switches (the hub's count, GET /whep/{stream}/{session}). The hub's CPU per viewer is
(CPU while viewers watch - CPU with the publisher alone) / viewers, for the simulcast stream (a
layer chosen per viewer) and for a single-layer stream (plain forwarding).

    sudo .venv/bin/python -m bench.simulcast            # about 3 minutes
    sudo .venv/bin/python -m bench.simulcast --json out.json

The report (markdown) goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.machine import cpu_seconds, machine  # noqa: E402
from client.simulcast import LAYERS  # noqa: E402
from hub.config import Settings  # noqa: E402
from hub.core.tokens import Claims, issue  # noqa: E402
from tests.netem import Namespace, Network  # noqa: E402
from tests.nsbot import BotProcess  # noqa: E402

HUB_PORT = 8080
ROOM = "site-rianxiuma"
#: The publisher: client/simulcast.py's three layers (q 160x120, h 320x240, f 640x480 at their
#: targets), 10 fps to leave this machine's CPU to the hub; the single-layer stream is f alone.
WIDTH, HEIGHT, FPS = 640, 480, 10
#: (name, rate kbit/s or None, loss %) and how many viewers sit behind each kind of link.
LINKS = (("unconstrained", None, 0, 6), ("1 Mbit/s", 1000, 0, 5), ("300 kbit/s, 3 % loss", 300, 3, 5))
#: A gap between frames longer than this is a freeze.
FREEZE = 0.5
SETTLE, WINDOW, ALONE = 10.0, 25.0, 5.0


@dataclass
class Viewer:
    link: str
    ns: Namespace
    bot: BotProcess | None = None
    session: str = ""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def build(network: Network) -> tuple[Namespace, Namespace, str, list[Viewer]]:
    hub_ns, router, publisher_ns = (network.namespace() for _ in range(3))
    router.forward()
    viewers = []
    for name, _, _, count in LINKS:
        viewers += [Viewer(name, network.namespace()) for _ in range(count)]
    links = [network.link(ns, router) for ns in (hub_ns, publisher_ns, *(v.ns for v in viewers))]
    for link in links:
        network.route(link.a.namespace, link.b.address)
    shape = {name: (rate, loss) for name, rate, loss, _ in LINKS}
    for viewer, link in zip(viewers, links[2:], strict=True):
        rate, loss = shape[viewer.link]
        if rate is not None:
            link.b.rate_limit(rate)  # the router's side: what goes to the viewer
        if loss:
            link.a.lose(loss)
            link.b.lose(loss)
    return hub_ns, publisher_ns, links[0].a.address, viewers


def phase(simulcast: bool, url: str, hub: psutil.Process, publisher_ns: Namespace, hub_ns: Namespace,
          viewers: list[Viewer], data: Path) -> dict[str, Any]:  # fmt: skip
    keys = Settings(data=data).keys()
    token = issue(keys, Claims(user="bench-publisher", site="guomaying", role="mediator"))
    operator = issue(keys, Claims(user="bench-operator", site="guinan", role="operator"))
    args = ["--width", str(WIDTH), "--height", str(HEIGHT), "--fps", str(FPS), "--seconds", "170"]
    if simulcast:
        args += ["--simulcast"]
    else:
        args += ["--bitrate", str(LAYERS[-1].bitrate)]
    publisher = BotProcess(publisher_ns, "publish", url, token, ROOM, *args)
    stream = publisher.next(timeout=60)["connected"]
    time.sleep(2)
    before = cpu_seconds(hub)
    time.sleep(ALONE)
    alone = (cpu_seconds(hub) - before) / ALONE
    log(f"{'simulcast' if simulcast else 'single layer'}: hub alone with its publisher {alone * 100:.1f} % of a core")
    for viewer in viewers:
        viewer.bot = BotProcess(viewer.ns, "view", url, operator, stream, "--tile", str(WIDTH), str(HEIGHT),
                                "--seconds", "170", "--connect-timeout", "60")  # fmt: skip
    for viewer in viewers:
        assert viewer.bot is not None
        viewer.session = viewer.bot.next(timeout=90)["connected"]
    log(f"{len(viewers)} viewers connected; settling {SETTLE:.0f} s")
    watcher = None
    if simulcast:
        paths = ",".join(f"{stream}/{v.session}" for v in viewers)
        watcher = BotProcess(hub_ns, "watch", url, operator, paths, "--every", "1", "--seconds", "170")
    time.sleep(SETTLE)
    start, before = time.monotonic(), cpu_seconds(hub)
    time.sleep(WINDOW)
    end, used = time.monotonic(), cpu_seconds(hub) - before
    polls = []
    if watcher is not None:
        watcher.finish()
        while True:
            try:
                polls.append(watcher.next(timeout=10))
            except (RuntimeError, TimeoutError):
                break
    for viewer in viewers:
        assert viewer.bot is not None
        viewer.bot.finish()
    received = []
    for viewer in viewers:
        assert viewer.bot is not None
        received.append(viewer.bot.next(timeout=60)["received"])
    publisher.finish()
    report = publisher.next(timeout=60)
    sent = report["layers"] if simulcast else {"f": report["sent"]}
    layer_of = {key: rid for rid, frames in sent.items() for key, *_ in frames}
    rows = []
    last = polls[-1]["states"] if polls else {}
    for viewer, frames in zip(viewers, received, strict=True):
        inside = [f for f in frames if start <= f[1] <= end]
        times = [f[1] for f in inside]
        gaps = [b - a for a, b in zip(times, times[1:], strict=False) if b - a > FREEZE]
        counts = collections.Counter(layer_of.get(f[0], "?") for f in inside)
        state = last.get(viewer.session, {})
        rows.append({
            "link": viewer.link,
            "layer": state.get("layer", "f" if not simulcast else None),
            "mostly": counts.most_common(1)[0][0] if counts else None,
            "bytes_per_s": sum(f[3] for f in inside) / WINDOW,
            "frames_per_s": len(inside) / WINDOW,
            "freezes": len(gaps),
            "longest_freeze": max(gaps, default=0.0),
            "switches": state.get("switches", 0),
        })  # fmt: skip
    # The layers' rates as the hub measured them, averaged over the window's polls.
    rates: dict[str, list[int]] = collections.defaultdict(list)
    for poll in polls:
        if start <= poll["at"] <= end:
            for layer in next(iter(poll["states"].values()))["layers"]:
                rates[layer["rid"]].append(layer["bitrate"])
    return {
        "viewers": rows,
        "hub_cpu": used / (end - start),
        "hub_cpu_alone": alone,
        "cpu_per_viewer": (used / (end - start) - alone) / len(viewers),
        "layer_rates": {rid: sum(v) / len(v) for rid, v in rates.items()},
    }


def run(json_path: Path | None) -> int:
    info = machine()
    began = time.monotonic()
    results = {}
    with Network() as network, tempfile.TemporaryDirectory() as tmp:
        hub_ns, publisher_ns, hub_ip, viewers = build(network)
        data = Path(tmp)
        env = os.environ | {"HUB_ICE_ADDRESSES": json.dumps([hub_ip])}
        logfile = (data / "hub.log").open("wb")
        proc = hub_ns.python("-m", "hub", "serve", "--host", hub_ip, "--port", str(HUB_PORT), "--data", str(data),
                             env=env, stdout=logfile, stderr=subprocess.STDOUT)  # fmt: skip
        hub_ns.wait_for_port(hub_ip, HUB_PORT, proc, timeout=60)
        url = f"http://{hub_ip}:{HUB_PORT}"
        hub = psutil.Process(proc.pid)
        for simulcast in (True, False):
            results["simulcast" if simulcast else "single"] = phase(simulcast, url, hub, publisher_ns, hub_ns,
                                                                    viewers, data)  # fmt: skip
            for viewer in viewers:
                viewer.bot = None
            time.sleep(2)  # the sessions' ends reach the hub
    info["seconds"] = round(time.monotonic() - began)
    info["load_average_at_end"] = tuple(round(x, 2) for x in os.getloadavg())
    print(render(info, results))
    if json_path is not None:
        json_path.write_text(json.dumps({"machine": info, "results": results}, indent=2))
    return 0


def render(info: dict[str, Any], results: dict[str, Any]) -> str:
    lines = [f"machine: {json.dumps(info)}", ""]
    for name, title in (("simulcast", "simulcast (q/h/f, a layer per viewer)"), ("single", "single layer (f)")):
        r = results[name]
        lines += [
            f"### {title}: hub CPU {r['hub_cpu'] * 100:.1f} % of a core with {len(r['viewers'])} viewers, "
            f"{r['hub_cpu_alone'] * 100:.1f} % with the publisher alone: "
            f"**{r['cpu_per_viewer'] * 100:.2f} % per viewer**",
            "",
            "| # | link | layer at end | most frames from | kB/s | frames/s | freezes > 0.5 s | longest s | switches |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for i, v in enumerate(r["viewers"], 1):
            lines.append(
                f"| {i} | {v['link']} | {v['layer']} | {v['mostly']} | {v['bytes_per_s'] / 1000:.1f} | "
                f"{v['frames_per_s']:.1f} | {v['freezes']} | {v['longest_freeze']:.1f} | {v['switches']} |"
            )
        lines.append("")
    rates = results["simulcast"]["layer_rates"]
    if rates:
        lines.append("layers' rates at the hub (kbit/s): " + ", ".join(f"{k} {v / 1000:.0f}" for k, v in rates.items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("error: network namespaces need root", file=sys.stderr)
        return 2
    return run(args.json)


if __name__ == "__main__":
    sys.exit(main())
