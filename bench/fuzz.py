"""The fuzz targets of tests/fuzz at length: new random inputs each run (hypothesis
profile "long"), against the parsers in process and a hub process of its own.

Prints, per target, the inputs tried, the crashes and state changes found
(each with its minimal failing input), and the machine. Budget: each target
runs `--scale` times its CI size (`--live-scale` for the live ones).

    .venv/bin/python -m bench.fuzz                 # ~10^5 inputs in all
    .venv/bin/python -m bench.fuzz --scale 2 --live-scale 1 --only tokens,live_events

Bugs already known in aiortc 1.16 (tests/fuzz/known.py) are stepped around and
counted, so that the budget looks for others; --strict stops at them instead.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

from bench.machine import machine
from tests.conftest import start_hub
from tests.fuzz import known, live, parsers, sdp  # noqa: F401 (importing registers the targets)
from tests.fuzz.core import TARGETS, Outcome, run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=35, help="in-process inputs per target, times its CI size")
    parser.add_argument("--live-scale", type=int, default=4, help="live-hub inputs per target, times its CI size")
    parser.add_argument("--seed", type=int, default=None, help="hypothesis seed (default: a random one, printed)")
    parser.add_argument("--only", default="", help="comma-separated target names")
    parser.add_argument("--strict", action="store_true", help="fail on the bugs known in aiortc instead")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    known.tolerate = not args.strict
    names = [n for n in TARGETS if not args.only or n in args.only.split(",")]

    print("machine:", machine())
    print(f"seed {seed}; --scale {args.scale}, --live-scale {args.live_scale}; known aiortc bugs stepped around: "
          f"{known.tolerate}")  # fmt: skip
    outcomes: list[Outcome] = []
    context: live.LiveHub | None = None
    started = time.monotonic()
    try:
        for name in names:
            entry = TARGETS[name]
            if entry.live and context is None:
                hub = start_hub(Path(tempfile.mkdtemp(prefix="fuzz-bench-")))
                context = live.LiveHub(hub)
            examples = entry.ci_examples * (args.live_scale if entry.live else args.scale)
            outcome = run(entry, context if entry.live else None, examples, profile="long", seed=seed)
            outcomes.append(outcome)
            print(f"{name:32} {outcome.tried:7d} inputs {outcome.seconds:7.1f} s  failures {len(outcome.failures)}",
                  flush=True)  # fmt: skip
            if entry.live:
                context.alive()  # type: ignore[union-attr]
    finally:
        if context is not None:
            context.close()
            context.hub.stop()

    print()
    print("| target | inputs tried | seconds | inputs/s | crashes | state changes |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for o in outcomes:
        crashes = sum(kind == "crash" for kind, _ in o.failures)
        changes = len(o.failures) - crashes
        print(f"| {o.name} | {o.tried} | {o.seconds:.1f} | {o.tried / o.seconds:.0f} | {crashes} | {changes} |")
    total = sum(o.tried for o in outcomes)
    failures = [(o.name, kind, text) for o in outcomes for kind, text in o.failures]
    print(f"| **all** | **{total}** | {time.monotonic() - started:.0f} | | "
          f"{sum(k == 'crash' for _, k, _ in failures)} | {sum(k != 'crash' for _, k, _ in failures)} |")  # fmt: skip
    for name, kind, text in failures:
        print(f"\n{name}: {kind}\n{text}")
    for bug, count in known.hits.items():
        print(f"\nknown, stepped around: {bug}: {count} inputs")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
