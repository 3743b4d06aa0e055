"""Video health diagnostics (视频质量诊断) on snapshot pictures, with OpenCV.

Each snapshot is measured once (`measure`); a stream's `Health` compares the
measures with the previous snapshot's and decides which conditions hold:

* black   - no light: the picture is (nearly) all black;
* covered - something sits on the lens: a uniform, textureless picture that is not black;
* frozen  - the picture has not changed since the last snapshot;
* blur    - there is a picture, but no sharp edge in it.

A picture without content (black or covered) cannot be judged frozen or
blurred, so those two are only tested on pictures that have content; black
and covered exclude each other. Frozen and blur may hold together.

A condition must hold for `RAISE_AFTER` successive snapshots before its
alert is raised, and fail for `CLEAR_AFTER` successive snapshots before it
clears: one odd picture (a camera's auto-exposure settling, a keyframe coded
coarsely) neither raises nor clears an alert.

The thresholds were measured on synthetic 640x480 feeds encoded by libvpx
and x264 at 200-400 kbps and decoded from keyframes (see tests/test_health.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

KINDS = ("black", "covered", "frozen", "blur")

#: Mean luma (0-255) below which a picture may be black. Decoded "video black"
#: is 0-16; a night scene with any lit area lies well above.
BLACK_MEAN = 24.0
#: ...and the 99th percentile of luma must stay below this: a black screen
#: with an on-screen clock or caption (under 1 % of the pixels) is still black.
BLACK_BRIGHTEST = 48.0
#: Luma standard deviation below which a picture is uniform (a lens cap, a
#: hand, a cloth over the lens). Any scene with objects in it measures 30+;
#: re-encoding a flat grey leaves it at 0-2.
COVERED_STD = 12.0
#: Variance of the Laplacian (of the 320-pixel-wide grey picture) below which
#: it has no sharp edge. Sharp synthetic scenes measure 300-2000; the same
#: scenes under a Gaussian blur of sigma 6 (at 640x480) 12-45.
BLUR_SHARPNESS = 60.0
#: Frozen pictures are compared at this size: shrinking averages away the
#: requantisation noise of re-encoding one picture as a new keyframe.
FROZEN_SIZE = (160, 120)
#: A pixel (at FROZEN_SIZE) has changed when its luma moved by more than this.
#: Re-encoding the same picture moves pixels by up to ~20 at 160x120.
CHANGE_LEVEL = 24
#: A picture is frozen when fewer than this fraction of its pixels changed
#: (0.1 %: 19 pixels at 160x120). Re-encoded identical pictures change 0-1
#: pixel; a pattern moving a few pixels between snapshots changes 400+.
FROZEN_CHANGED = 0.001

#: Successive snapshots a condition must hold before its alert is raised.
RAISE_AFTER = 2
#: Successive snapshots a condition must fail before its alert clears.
CLEAR_AFTER = 2


@dataclass
class Measures:
    """What the diagnostics need of one picture."""

    mean: float  #: luma mean
    std: float  #: luma standard deviation
    brightest: float  #: 99th percentile of luma
    sharpness: float  #: variance of the Laplacian
    small: np.ndarray = field(repr=False)  #: grey picture at FROZEN_SIZE


def measure(bgr: np.ndarray) -> Measures:
    """Measure a BGR picture (the snapshot thumbnail)."""
    grey = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    mean, std = cv2.meanStdDev(grey)
    histogram = np.cumsum(cv2.calcHist([grey], [0], None, [256], [0, 256]).ravel())
    brightest = float(np.searchsorted(histogram, 0.99 * histogram[-1]))
    return Measures(
        mean=float(mean[0][0]),
        std=float(std[0][0]),
        brightest=brightest,
        sharpness=float(cv2.Laplacian(grey, cv2.CV_64F).var()),
        small=cv2.resize(grey, FROZEN_SIZE, interpolation=cv2.INTER_AREA),
    )


def conditions(current: Measures, previous: Measures | None) -> set[str]:
    """The conditions a picture shows, given the previous snapshot's picture."""
    if current.mean < BLACK_MEAN and current.brightest < BLACK_BRIGHTEST:
        return {"black"}
    if current.std < COVERED_STD:
        return {"covered"}
    found = set()
    if current.sharpness < BLUR_SHARPNESS:
        found.add("blur")
    if previous is not None:
        changed = np.count_nonzero(cv2.absdiff(current.small, previous.small) > CHANGE_LEVEL)
        if changed < FROZEN_CHANGED * current.small.size:
            found.add("frozen")
    return found


class Health:
    """The diagnostics of one stream: which alerts are active, with hysteresis."""

    def __init__(self) -> None:
        #: kind -> time of the first snapshot that showed the active condition
        self.active: dict[str, float] = {}
        self._previous: Measures | None = None
        # kind -> successive snapshots that disagree with the kind's active
        # state, and the time of the first of them
        self._against: dict[str, int] = dict.fromkeys(KINDS, 0)
        self._turned: dict[str, float] = {}

    def update(self, measures: Measures, now: float) -> tuple[dict[str, float], dict[str, float]]:
        """Take a new snapshot's measures (taken at `now`); return the alerts
        raised (kind -> since) and cleared (kind -> until), each dated by the
        first snapshot that showed the change."""
        holding = conditions(measures, self._previous)
        self._previous = measures
        raised, cleared = {}, {}
        for kind in KINDS:
            if (kind in holding) == (kind in self.active):
                self._against[kind] = 0
                continue
            self._against[kind] += 1
            if self._against[kind] == 1:
                self._turned[kind] = now
            if kind in holding and self._against[kind] >= RAISE_AFTER:
                self.active[kind] = raised[kind] = self._turned[kind]
                self._against[kind] = 0
            elif kind not in holding and self._against[kind] >= CLEAR_AFTER:
                del self.active[kind]
                cleared[kind] = self._turned[kind]
                self._against[kind] = 0
        return raised, cleared
