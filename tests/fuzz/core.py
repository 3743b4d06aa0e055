"""The target registry and the runner the tests and bench/fuzz.py share."""

from __future__ import annotations

import functools
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, Phase, settings


class StateChanged(AssertionError):
    """A refused input changed what the hub lists."""


@dataclass
class Target:
    name: str
    #: The hypothesis-decorated property; called as test(context).
    test: Callable[..., None]
    #: Inputs in the CI run (profile "ci"); bench/fuzz.py multiplies it.
    ci_examples: int
    #: Needs a hub process (a `live.LiveHub` context) rather than none.
    live: bool = False
    tried: int = 0
    #: The arguments of the last input that failed (hypothesis re-runs the minimal one last),
    #: and of the first: against a live hub, an input can break what every later one meets.
    failing: str = ""
    first_failing: str = ""


TARGETS: dict[str, Target] = {}


def target(ci_examples: int, live: bool = False) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Register a hypothesis property as a fuzz target; it counts the inputs it is given."""

    def register(test: Callable[..., None]) -> Callable[..., None]:
        name = test.__name__.removeprefix("fuzz_")
        entry = TARGETS[name] = Target(name, test, ci_examples, live)
        inner = test.hypothesis.inner_test  # type: ignore[attr-defined]

        @functools.wraps(inner)  # failing inputs are printed with the target's own argument names
        def counted(*args: Any, **kwargs: Any) -> None:
            entry.tried += 1
            try:
                inner(*args, **kwargs)
            except BaseException:
                entry.failing = ", ".join(f"{k}={v!r}" for k, v in kwargs.items() if k != "live")
                entry.first_failing = entry.first_failing or entry.failing
                raise

        test.hypothesis.inner_test = counted  # type: ignore[attr-defined]
        return test

    return register


@dataclass
class Outcome:
    name: str
    tried: int
    seconds: float
    #: (kind, minimal failing input and the error) for each failure found.
    failures: list[tuple[str, str]] = field(default_factory=list)


#: Profile "ci": the same inputs on every run (derandomized); "long": new ones each run.
_COMMON: dict[str, Any] = {
    "deadline": None,
    "database": None,  # no example files left in the work tree
    "phases": (Phase.generate, Phase.target, Phase.shrink, Phase.explain),
    "suppress_health_check": list(HealthCheck),  # live targets are slow by nature
    "report_multiple_bugs": True,
    "print_blob": False,
}
settings.register_profile("ci", derandomize=True, **_COMMON)
settings.register_profile("long", derandomize=False, **_COMMON)


def run(entry: Target, context: object, examples: int, profile: str = "ci", seed: int | None = None) -> Outcome:
    """Run one target for up to `examples` inputs. Failures are shrunk to a
    minimal input and returned, not raised."""
    # given() fixed the settings when the target was defined; each run sets its own.
    entry.test._hypothesis_internal_use_settings = settings(  # type: ignore[attr-defined]
        settings.get_profile(profile), max_examples=examples
    )
    entry.test._hypothesis_internal_use_seed = seed  # type: ignore[attr-defined]
    entry.tried, entry.failing, entry.first_failing = 0, "", ""
    started = time.monotonic()
    failures: list[tuple[str, str]] = []
    try:
        entry.test(context)
    except BaseExceptionGroup as group:
        failures = [_describe(exc, entry) for exc in group.exceptions]
    except Exception as exc:
        failures = [_describe(exc, entry)]
    return Outcome(entry.name, entry.tried, time.monotonic() - started, failures)


def _describe(exc: BaseException, entry: Target) -> tuple[str, str]:
    kind = "state change" if isinstance(exc, StateChanged) else "crash"
    where = traceback.extract_tb(exc.__traceback__)[-1]
    text = f"{type(exc).__name__}: {exc}\n  at {where.filename}:{where.lineno}\n  input: {entry.failing}"
    if entry.first_failing != entry.failing:
        text += f"\n  first failing input: {entry.first_failing}"
    return kind, text
