"""The fuzz targets against a live hub process (tests/fuzz/live.py), in their CI size.

One hub of their own: accepted inputs open rooms and cases, which other tests
sharing the session's hub must not see.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .conftest import start_hub
from .fuzz import live as live_targets
from .fuzz.core import TARGETS, run


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[live_targets.LiveHub]:
    hub = start_hub(tmp_path_factory.mktemp("fuzz-hub"))
    context = live_targets.LiveHub(hub)
    try:
        yield context
    finally:
        context.close()
        hub.stop()


def _fuzz(live: live_targets.LiveHub, name: str) -> None:
    entry = TARGETS[name]
    outcome = run(entry, live, entry.ci_examples)
    assert not outcome.failures, "\n\n".join(f"{kind}: {text}" for kind, text in outcome.failures)
    assert outcome.tried >= entry.ci_examples // 2, "hypothesis ran far fewer inputs than asked"
    live.alive()


# Seen twice after the quotas work, not reproduced alone: an event socket that neither
# answered a ping nor closed within 30 s (README, Fuzzing). Kept running, reported, not gating.
STALL = pytest.mark.xfail(reason="an event socket stalled 30 s (open)", strict=False)


@pytest.mark.parametrize(
    "name", ["live_whip", "live_whep", "live_json_bodies", "live_query", pytest.param("live_events", marks=STALL)]
)
def test_fuzz(live: live_targets.LiveHub, name: str) -> None:
    _fuzz(live, name)


# Last: should a datagram end the session (as an empty one did on aiortc 1.16 before
# hub/media/door.py), the stream the other targets view goes with it.
def test_fuzz_media_door(live: live_targets.LiveHub) -> None:
    _fuzz(live, "live_media_door")
