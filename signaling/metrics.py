"""GET /metrics: this process's figures in the Prometheus text format.

Every figure is read when scraped (a custom collector), never kept twice:
the media plane's counters (hub/media/counters.py), the streams and
subscriptions hosted here, the recorder's sessions, the open event sockets and the
event-loop lag probe. Each application has its own registry, so several
apps in one process (tests) do not collide in prometheus_client's global one.

Who may scrape: a scraper has no user's token. With `HUB_METRICS_TOKEN` set,
a request must carry it as `Authorization: Bearer <token>`. Unset, only
requests made directly on loopback are answered: one that a reverse proxy
forwarded (it carries X-Forwarded-For, Forwarded or X-Real-IP) is refused
even though it arrives from 127.0.0.1.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable, Iterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, GCCollector, PlatformCollector, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from hub.media.counters import COUNTERS

from .doors import Answer, door
from .keys import EVENT_SOCKETS, LAG, ROOMS, SETTINGS
from .problems import Problem
from .recordings import RECORDER

REGISTRY = web.AppKey("metrics_registry", CollectorRegistry)

#: hub/media/counters.py field -> (metric name, help). Counters only grow while the process runs.
MEDIA_COUNTERS = {
    "packets_received": ("hub_packets_received", "RTP packets received from publishers and pulled cameras"),
    "packets_express": ("hub_packets_express", "Pulled RTP packets the express lane handled in C, of those received"),
    "packets_forwarded": ("hub_packets_forwarded", "RTP packets written to viewers' sockets"),
    "bytes_forwarded": ("hub_bytes_forwarded", "Bytes of the RTP packets written to viewers' sockets"),
    "packets_dropped": ("hub_packets_dropped", "Packets a viewer did not get: backlog full or waiting for a keyframe"),
    "keyframe_requests": ("hub_keyframe_requests", "Keyframe requests (PLI) sent to publishers, after throttling"),
    "retransmissions": ("hub_retransmissions", "Packets resent to viewers that asked for them (NACK)"),
    "datagrams_refused": ("hub_datagrams_refused", "Datagrams refused at the media door before DTLS/SRTP"),
}
FORWARDED_HEADERS = ("X-Forwarded-For", "Forwarded", "X-Real-IP")


class HubCollector(Collector):
    def __init__(self, app: web.Application) -> None:
        self._app = app

    def collect(self) -> Iterator[Metric]:
        for field, (name, documentation) in MEDIA_COUNTERS.items():
            yield CounterMetricFamily(name, documentation, value=getattr(COUNTERS, field))
        counts = self._app[ROOMS].media_counts()
        yield GaugeMetricFamily(
            "hub_streams", "Streams published on this process (WHIP and pulled cameras)", value=counts["streams"]
        )
        yield GaugeMetricFamily(
            "hub_subscriptions", "WHEP viewers served by this process", value=counts["subscriptions"]
        )
        yield GaugeMetricFamily(
            "hub_relays", "Streams this process pulls from another hub process, one pull each", value=counts["relays"]
        )
        yield GaugeMetricFamily(
            "hub_reader_sockets",
            "Sockets of relays' pulls read by the thread beside the event loop",
            value=counts["reader_sockets"],
        )
        yield from self._layers()
        recorder = self._app.get(RECORDER)
        yield GaugeMetricFamily(
            "hub_recordings", "Recordings in progress on this process", value=len(recorder.sessions) if recorder else 0
        )
        yield GaugeMetricFamily("hub_event_sockets", "Event WebSockets open", value=len(self._app[EVENT_SOCKETS]))
        if (lag := self._app.get(LAG)) is not None:
            yield GaugeMetricFamily(
                "hub_event_loop_lag_seconds",
                "How late the event loop's latest probe woke up, less the time it waited for a CPU",
                value=lag.last_ms / 1000,
            )
            yield GaugeMetricFamily(
                "hub_event_loop_lag_max_seconds",
                "Worst event-loop lag since the process started, less the time it waited for a CPU",
                value=lag.max_ms / 1000,
            )
            yield GaugeMetricFamily(
                "hub_event_loop_lag_wall_max_seconds",
                "Worst event-loop lag since the process started as a clock sees it (the machine's load included)",
                value=lag.wall_max_ms / 1000,
            )

    def _layers(self) -> Iterator[Metric]:
        states = self._app[ROOMS].layer_states()
        layer = GaugeMetricFamily(
            "hub_subscription_layer",
            "The simulcast layer a subscription receives: its index, 0 the lowest; -1 none (hidden, starting)",
            labels=["subscription", "stream", "layer"],
        )
        switches = CounterMetricFamily(
            "hub_subscription_layer_switches", "Layer changes of a simulcast subscription", labels=["subscription"]
        )
        temporal = GaugeMetricFamily(
            "hub_subscription_temporal_layer",
            "The highest VP8 temporal layer (TID) a subscription receives, of a stream with temporal layers",
            labels=["subscription", "stream"],
        )
        for subscription, (stream, state) in states.items():
            if state.temporal is not None:
                temporal.add_metric([subscription, stream], state.temporal)
            if not state.layers:
                continue  # temporal layers only
            rids = [rid for rid, *_ in state.layers]
            index = rids.index(state.layer) if state.layer in rids else -1
            layer.add_metric([subscription, stream, state.layer or ""], index)
            switches.add_metric([subscription], state.switches)
        yield layer
        yield switches
        yield temporal


def registry_for(app: web.Application) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(HubCollector(app))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def check_scraper(request: web.Request) -> None:
    """Raise a problem unless the request may read the metrics (see the module's docstring)."""
    expected = request.app[SETTINGS].metrics_token
    if expected:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected.encode()):
            raise Problem(401, "Unauthorized", "send HUB_METRICS_TOKEN as 'Authorization: Bearer <token>'")
        return
    if not is_direct_loopback(request.remote, request.headers.keys()):
        raise Problem(403, "Forbidden", "without HUB_METRICS_TOKEN, metrics are served on loopback only")


def is_direct_loopback(remote: str | None, headers: Iterable[str]) -> bool:
    """A peer on loopback that is not a reverse proxy passing a request on."""
    try:
        address = ipaddress.ip_address(remote or "")
    except ValueError:
        return False
    # A dual-stack socket reports an IPv4 peer as ::ffff:127.0.0.1, which is_loopback does not count.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    names = {h.lower() for h in headers}
    return address.is_loopback and not any(h.lower() in names for h in FORWARDED_HEADERS)


@door(
    "This process's figures in the Prometheus text format (docs/operate.md#metrics)",
    Answer(200, "Prometheus text format", media="text/plain"),
    public=True,
    problems=(401, 403),
    description="No user token: the bearer HUB_METRICS_TOKEN when it is set, else direct loopback requests only.",
)
async def metrics(request: web.Request) -> web.Response:
    check_scraper(request)
    body = generate_latest(request.app[REGISTRY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def add_routes(app: web.Application) -> None:
    app[REGISTRY] = registry_for(app)
    app.router.add_get("/metrics", metrics)
