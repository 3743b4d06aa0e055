"""The layer choice of hub.media.layers.LayerSwitch on its own: tile sizes, congestion, probes
before a climb, growing holds. The layers are real `Layer`s of a `SimulcastSource` with no receiver;
time is passed in, so that the hysteresis is checked without waiting for it."""

from __future__ import annotations

from hub.media import layers
from hub.media.layers import LayerSwitch, SimulcastOffer, SimulcastSource, Tile

SIZES = {"q": (160, 120, 100_000), "h": (320, 240, 300_000), "f": (640, 480, 900_000)}


def source_sending(names: tuple[str, ...]) -> SimulcastSource:
    """Three layers offered, of which the publisher's packets have shown `names`."""
    source = SimulcastSource(None, SimulcastOffer(("q", "h", "f"), 10, None), 0.3)  # type: ignore[arg-type]
    for ssrc, name in enumerate(names, start=1000):
        layer = source.layer(name)
        assert layer is not None
        layer.ssrc = ssrc
        layer.width, layer.height, layer.bitrate = SIZES[name]
    source._sort()
    return source


async def switch_on(rid: str) -> LayerSwitch:
    source = source_sending(("q", "h", "f"))
    switch = LayerSwitch(source, audio=True)
    switch.current = source.layer(rid)
    switch.target = None
    return switch


def rid(layer: layers.Layer | None) -> str | None:
    return layer.rid if layer is not None else None


def congested_then_calm(switch: LayerSwitch, tile: Tile, now: float = 100.0) -> float:
    """Congestion takes the switch down to q, then the link is calm again: when the probe that
    comes after the hold starts."""
    switch.tile = tile
    switch.estimate, switch.loss = 200_000, 0.05
    assert rid(switch._choose(now)) == "q"
    switch.current, switch._switched_at = switch.source.layer("q"), now
    switch.estimate, switch.loss = 2_000_000, 0.0
    probed = now + layers.UP_HOLD + 0.1
    switch._choose(probed)
    assert switch.probe is not None
    return probed


async def test_the_tile_size_picks_the_smallest_layer_that_fills_it() -> None:
    switch = await switch_on("f")
    try:
        assert rid(switch._choose(100.0)) == "f"  # no size stated yet
        # A layer fills a tile up to 8/7 of its size (scaled up by an eighth at most).
        cases = {(150, 110): "q", (182, 137): "q", (184, 138): "h", (300, 225): "h", (400, 300): "f"}
        for (width, height), expected in cases.items():
            switch.tile = Tile(width, height)
            assert rid(switch._choose(100.0)) == expected, (width, height)
        switch.tile = Tile(0, 0)
        assert switch._choose(100.0) is None
    finally:
        switch.close()


async def test_congestion_lowers_the_layer_and_a_climb_waits_for_a_probe() -> None:
    switch = await switch_on("f")
    try:
        switch.tile = Tile(640, 480)
        now = 100.0
        # A low estimate without loss is not believed (a busy machine's delay-based estimate).
        switch.estimate, switch.loss = 200_000, 0.0
        assert rid(switch._choose(now)) == "f"
        # With some loss it is: the highest layer under 85 % of the estimate less the audio's share.
        switch.loss = 0.05
        assert rid(switch._choose(now)) == "q"  # (200k - 48k) * 0.85 = 129k
        switch.current, switch._switched_at = switch.source.layer("q"), now
        switch.estimate, switch.loss = 2_000_000, 0.0
        # Calm again: after the hold a probe of the layers up to the wanted one, one step each.
        assert rid(switch._choose(now + layers.UP_HOLD - 0.5)) == "q"
        assert switch.probe is None
        probed = now + layers.UP_HOLD + 0.1
        assert rid(switch._choose(probed)) == "q"
        assert switch.probe is not None and [layer.rid for layer in switch.probe.layers] == ["h", "f"]
        assert rid(switch._choose(probed + layers.PROBE_STEP)) == "q"  # h held; f is tried
        assert rid(switch._choose(probed + 2 * layers.PROBE_STEP)) == "f"  # both held: straight up
        assert switch.probe is None
    finally:
        switch.close()


async def test_a_probe_the_viewer_reports_lost_keeps_the_layer_and_waits_longer() -> None:
    switch = await switch_on("f")
    try:
        probed = congested_then_calm(switch, Tile(640, 480))
        probe = switch.probe
        assert probe is not None
        # NACKs for more than LOSSY of the step's packets: the link does not carry h.
        probe.sent = 50
        switch._on_nack(list(range(1000, 1004)))
        assert not probe.failed
        switch._on_nack(list(range(1002, 1008)))
        assert probe.failed
        assert rid(switch._choose(probed + 0.5)) == "q"
        assert switch.probe is None and switch.switches == 0
        assert switch._holds["h"] == 2 * layers.UP_HOLD  # (capped at PROBE_HOLD)
        # The next probe waits the longer hold; one whose second step fails climbs to the first's layer.
        assert switch._choose(probed + 0.5 + layers.UP_HOLD) is not None and switch.probe is None
        again = probed + 0.6 + 2 * layers.UP_HOLD
        switch._choose(again)
        assert switch.probe is not None
        assert rid(switch._choose(again + layers.PROBE_STEP)) == "q"  # h held
        switch._on_loss(0.3)  # a receiver report during the f step
        assert rid(switch._choose(again + layers.PROBE_STEP + 0.5)) == "h"
        assert switch._holds["f"] == 2 * layers.UP_HOLD
    finally:
        switch.close()


async def test_the_cap_names_a_layer_not_a_position_among_those_sending() -> None:
    """Capped at h, the viewer stays on h when q pauses (Chromium pauses layers its estimate cannot
    carry): a cap kept as a position (1) named f among the two layers still sending."""
    switch = await switch_on("f")
    try:
        switch.tile = Tile(640, 480)
        now = 100.0
        for layer in switch.source.layers:
            layer.last_at = now
        switch.estimate, switch.loss = 450_000, 0.05
        assert rid(switch._choose(now)) == "h"  # (450k - 48k) * 0.85 = 342k
        switch.current, switch._switched_at = switch.source.layer("h"), now
        q = switch.source.layer("q")
        assert q is not None
        for layer in switch.source.layers:
            layer.last_at = now + 1.5
        q.last_at = now  # silent for more than SILENT seconds
        assert rid(switch._choose(now + 1.5)) == "h"
    finally:
        switch.close()


async def test_a_publisher_that_stalls_as_a_whole_pauses_no_layer() -> None:
    """After a stall of every layer, the layer that comes back first is not the only choice."""
    switch = await switch_on("h")
    try:
        switch.tile = Tile(320, 240)
        now = 100.0
        for layer in switch.source.layers:
            layer.last_at = now
        assert rid(switch._choose(now)) == "h"
        # 1.8 s later q comes back, h and f not yet: h stays.
        stalled = now + 1.8
        q = switch.source.layer("q")
        assert q is not None
        q.last_at = switch.source.resumed_at = stalled
        assert rid(switch._choose(stalled + 0.5)) == "h"
        # Still silent a second after the stream came back (q sending all the while): paused.
        q.last_at = stalled + layers.SILENT
        assert rid(switch._choose(stalled + layers.SILENT + 0.1)) == "q"
    finally:
        switch.close()


async def test_a_layer_offered_but_never_sent_is_not_chosen() -> None:
    """Chromium offers three layers and drops the top one while its bandwidth estimate (or its
    camera) is small: viewers and the top-layer sinks get the highest layer that does come."""
    source = source_sending(("q", "h"))
    switch = LayerSwitch(source, audio=True)
    try:
        assert [layer.rid for layer in source.layers] == ["q", "h"]
        assert rid(switch._choose(100.0)) == "h"
    finally:
        switch.close()


async def test_a_layer_silent_while_others_send_is_paused_but_a_stall_pauses_none() -> None:
    switch = await switch_on("q")
    try:
        switch.tile = Tile(160, 120)
        q, h, f = switch.source.layers
        q.last_at, h.last_at, f.last_at = 100.0, 101.2, 101.4  # q paused, h and f sending
        assert rid(switch._choose(101.5)) == "h"
        # Nothing for a while (a stalled publisher or hub), the low layer's last packet a little older.
        q.last_at, h.last_at, f.last_at = 102.3, 102.5, 102.6
        assert rid(switch._choose(103.4)) == "q"
    finally:
        switch.close()


async def test_a_climb_that_meets_heavy_loss_goes_back_at_once() -> None:
    switch = await switch_on("h")
    try:
        probed = congested_then_calm(switch, Tile(320, 240))
        assert rid(switch._choose(probed + layers.PROBE_STEP)) == "h"
        climbed = probed + layers.PROBE_STEP + 0.5
        switch.current, switch._switched_at = switch.source.layer("h"), climbed
        # The first receiver report after the climb shows heavy loss: down before SETTLE is out.
        switch.loss = 0.2
        assert rid(switch._choose(climbed + 0.5)) == "q"
        assert switch._holds["h"] == 2 * layers.UP_HOLD
        # Loss within SETTLE after a fall (no climb) still waits: the estimator may lag the switch.
        switch.current, switch._switched_at = switch.source.layer("q"), climbed + 1
        switch._cap, switch.loss = switch.source.layer("q"), 0.5
        assert switch._choose(climbed + 1.5) is switch.source.layer("q")
    finally:
        switch.close()
