"""One-file export: a background job renders a recorded session into a
single MP4 — a grid with one cell per stream, each under its participant's
name, the site and the session's start and running time drawn with a CJK
font through Pillow, the streams' audio mixed — decoding only here, after
the session, never in the packet path."""

from __future__ import annotations

import fractions
import logging
import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .manifest import read_manifest

log = logging.getLogger(__name__)

FPS = 15
RATE = 48000
OUTPUT = "export.mp4"

#: Fonts with Chinese glyphs that Debian installs, tried in this order when
#: HUB_EXPORT_FONT is unset.
FONT_CANDIDATES = (
    Path("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc"),  # fonts-wqy-microhei
    Path("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc"),  # fonts-noto-cjk
    Path("/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc"),  # fonts-wqy-zenhei
    Path("/usr/share/fonts/truetype/arphic/uming.ttc"),  # fonts-arphic-uming
)
#: Grey of the plate under the white text: opaque, so a name stays readable
#: over any picture.
PLATE = 16


class FontMissing(RuntimeError):
    pass


def find_font(configured: Path | None = None) -> Path:
    """The font file exports draw with: `configured` (HUB_EXPORT_FONT) or the
    first of FONT_CANDIDATES that is installed."""
    if configured is not None:
        if not configured.is_file():
            raise FontMissing(f"HUB_EXPORT_FONT={configured} is not a file")
        return configured
    for path in FONT_CANDIDATES:
        if path.is_file():
            return path
    raise FontMissing(
        "no font with Chinese glyphs for exports: install Debian's fonts-wqy-microhei "
        "(or fonts-noto-cjk), or set HUB_EXPORT_FONT to a .ttf/.ttc/.otf file that has them"
    )


def load_font(path: Path, px: int) -> ImageFont.FreeTypeFont:
    """The face of `path` for simplified Chinese: a collection such as Noto
    Sans CJK holds Japanese, Korean and traditional forms too, and its first
    face is not always the Chinese one."""
    faces: list[ImageFont.FreeTypeFont] = []
    for index in range(16):
        try:
            faces.append(ImageFont.truetype(str(path), px, index=index))
        except OSError:
            break  # past the collection's last face
    if not faces:
        raise FontMissing(f"{path} is not a font FreeType can read")
    return next((f for f in faces if " SC" in (f.getname()[0] or "")), faces[0])


def font_px(cell_height: int) -> int:
    """Text height for a cell: about a 24th of it, never under 14 px."""
    return max(14, cell_height // 24)


def missing_glyphs(font: ImageFont.FreeTypeFont, text: str) -> str:
    """Characters of `text` the font draws as its 'no glyph' box (as it draws
    a code point no font has)."""

    def ink(ch: str) -> bytes:
        img = Image.new("L", (2 * font.size, 2 * font.size), 0)
        ImageDraw.Draw(img).text((0, 0), ch, font=font, fill=255)
        return img.tobytes()

    notdef = ink("\U0010fffd")
    return "".join(ch for ch in dict.fromkeys(text) if not ch.isspace() and ink(ch) == notdef)


def plate(font: ImageFont.FreeTypeFont, text: str) -> np.ndarray:
    """`text` in white on a dark plate, BGR, as tall as any line of this font
    so that stacked lines stay aligned; drawn once and copied into frames."""
    pad = max(2, font.size // 6)
    ascent, descent = font.getmetrics()
    width = math.ceil(font.getlength(text)) + 2 * pad
    mask = Image.new("L", (width, ascent + descent + 2 * pad), 0)
    ImageDraw.Draw(mask).text((pad, pad), text, font=font, fill=255)
    ink = np.asarray(mask, dtype=np.uint16)
    grey = (PLATE + ink * (255 - PLATE) // 255).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


def _paste(canvas: np.ndarray, picture: np.ndarray, x: int, y: int, right: int) -> None:
    """Copy `picture` with its top-left at (x, y), cut at column `right` and the canvas edge."""
    h = min(picture.shape[0], canvas.shape[0] - y)
    w = min(picture.shape[1], right - x)
    if h <= 0 or w <= 0:
        return  # a picture too small for all the lines
    canvas[y : y + h, x : x + w] = picture[:h, :w]


def _even(n: int) -> int:
    return max(2, n + (n & 1))


def _label(stream: dict[str, Any]) -> str:
    return stream.get("name") or stream.get("user") or stream["id"]


def wall_clock(at: float) -> tuple[str, str]:
    """("YYYY-MM-DD HH:MM:SS", "UTC+08:00") of `at` in the hub's time zone (TZ)."""
    local = time.localtime(at)
    zone = time.strftime("%z", local)
    return time.strftime("%Y-%m-%d %H:%M:%S", local), f"UTC{zone[:3]}:{zone[3:]}"


def elapsed(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"+{hours}:{minutes:02d}:{secs:02d}" if hours else f"+{minutes:02d}:{secs:02d}"


def session_span(manifest: dict[str, Any]) -> tuple[float, float]:
    """Start and end of the recorded media, seconds from the session start."""
    starts, ends = [], []
    for s in manifest["streams"]:
        if s["segments"] and s["offset"] is not None:
            starts.append(s["offset"])
            last = s["segments"][-1]
            ends.append(s["offset"] + last["start"] + last["duration"])
    return (min(starts), max(ends)) if starts else (0.0, 0.0)


def _video_frames(folder: Path, stream: dict[str, Any], size: tuple[int, int]) -> Iterator[tuple[float, np.ndarray]]:
    """(seconds from session start, BGR picture scaled to the cell) of every frame."""
    for seg in stream["segments"]:
        try:
            with av.open(str(folder / seg["path"])) as container:
                if not container.streams.video:
                    return
                for frame in container.decode(video=0):
                    if frame.pts is None:
                        continue
                    at = stream["offset"] + seg["start"] + float(frame.pts * frame.time_base)
                    yield at, cv2.resize(frame.to_ndarray(format="bgr24"), size)
        except av.error.FFmpegError:
            log.warning("export: %s is damaged; using what decoded", seg["path"])


def _mix_audio(folder: Path, manifest: dict[str, Any], start: float, seconds: float) -> np.ndarray:
    mix = np.zeros(int(seconds * RATE) + RATE, dtype=np.int32)
    for stream in manifest["streams"]:
        if "audio" not in stream["codecs"]:
            continue
        for seg in stream["segments"]:
            resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
            try:
                with av.open(str(folder / seg["path"])) as container:
                    if not container.streams.audio:
                        break
                    for frame in container.decode(audio=0):
                        if frame.pts is None:
                            continue
                        at = stream["offset"] + seg["start"] + float(frame.pts * frame.time_base) - start
                        for out in resampler.resample(frame):
                            samples = out.to_ndarray().reshape(-1).astype(np.int32)
                            pos = int(at * RATE)
                            if pos < 0 or pos >= len(mix):
                                continue
                            end = min(len(mix), pos + len(samples))
                            mix[pos:end] += samples[: end - pos]
            except av.error.FFmpegError:
                log.warning("export: audio of %s is damaged; using what decoded", seg["path"])
    return np.clip(mix[: int(seconds * RATE)], -32768, 32767).astype(np.int16)


class Labels:
    """The plates drawn over an export: one per stream, the header's site and
    start time, and the running clock, redrawn only when its second changes."""

    def __init__(
        self, font: ImageFont.FreeTypeFont, names: list[np.ndarray], header: list[np.ndarray], session_start: float
    ) -> None:
        self.font = font
        self.names = names
        self.header = header
        self._session_start = session_start
        self._clock_text = ""
        self._clock = np.zeros((0, 0, 3), dtype=np.uint8)

    def clock(self, t: float) -> np.ndarray:
        """The wall-clock time and time into the session at `t` seconds from its start."""
        text = f"{time.strftime('%H:%M:%S', time.localtime(self._session_start + t))}  {elapsed(t)}"
        if text != self._clock_text:
            self._clock_text, self._clock = text, plate(self.font, text)
        return self._clock


class ExportJob:
    def __init__(self, folder: Path, font: Path | None = None) -> None:
        self.folder = folder
        self.font = font
        self.output = folder / OUTPUT
        self.state = "running"
        self.progress = 0.0
        self.error = ""
        self.info: dict[str, Any] = {}
        self.started_at = time.time()
        self.finished_at: float | None = None
        self._thread = threading.Thread(target=self._run, name=f"export-{folder.name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "progress": round(self.progress, 3),
            "error": self.error,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
        } | self.info

    def _run(self) -> None:
        try:
            self._render()
            self.state = "done"
            self.progress = 1.0
        except Exception as exc:  # reported through the API, the hub goes on
            log.exception("export of %s failed", self.folder.name)
            self.state, self.error = "failed", str(exc)
        self.finished_at = time.time()

    def _render(self) -> None:
        manifest = read_manifest(self.folder)
        font_path = find_font(self.font)
        streams = [s for s in manifest["streams"] if "video" in s["codecs"] and s["segments"] and s["width"]]
        if not streams:
            raise ValueError("the recording has no video")
        start, end = session_span(manifest)
        seconds = end - start
        cols = math.ceil(math.sqrt(len(streams)))
        rows = math.ceil(len(streams) / cols)
        cell = (_even(max(s["width"] for s in streams)), _even(max(s["height"] for s in streams)))
        width, height = cell[0] * cols, cell[1] * rows
        self.info = {"participants": len(streams), "width": width, "height": height, "duration": round(seconds, 3)}
        font = load_font(font_path, font_px(cell[1]))
        names = [_label(s) for s in streams]
        site = manifest.get("site_name") or manifest["site_id"]
        title = manifest.get("title") or ""
        heading = f"{site}  {title}" if title and title != site else site
        for text in [*names, heading]:
            if missing := missing_glyphs(font, text):
                log.warning("export of %s: %s has no glyph for %r in %r", self.folder.name, font_path, missing, text)
        started, zone = wall_clock(manifest["started_at"])
        labels = Labels(
            font,
            names=[plate(font, name) for name in names],
            header=[plate(font, heading), plate(font, f"{started} {zone}")],
            session_start=manifest["started_at"],
        )

        audio = _mix_audio(self.folder, manifest, start, seconds)
        self.progress = 0.1
        tmp = self.output.with_suffix(".part.mp4")
        with av.open(str(tmp), "w", format="mp4") as out:
            out.metadata["title"] = manifest.get("title") or manifest["room_id"]
            out.metadata["comment"] = f"recording={manifest['id']} participants={len(streams)}"
            video = out.add_stream("libx264", rate=FPS)
            video.width, video.height, video.pix_fmt = width, height, "yuv420p"
            video.options = {"preset": "veryfast", "crf": "26"}
            sound = out.add_stream("aac", rate=RATE)
            sound.layout = "mono"
            self._encode_video(out, video, streams, labels, cell, cols, start, seconds)
            self._encode_audio(out, sound, audio)
        tmp.replace(self.output)

    def _encode_video(
        self,
        out: av.container.OutputContainer,
        video: av.VideoStream,
        streams: list[dict[str, Any]],
        labels: Labels,
        cell: tuple[int, int],
        cols: int,
        start: float,
        seconds: float,
    ) -> None:
        sources = [_video_frames(self.folder, s, cell) for s in streams]
        pending: list[tuple[float, np.ndarray] | None] = [next(it, None) for it in sources]
        current: list[np.ndarray | None] = [None] * len(streams)
        canvas = np.zeros((video.height, video.width, 3), dtype=np.uint8)
        total = max(1, round(seconds * FPS))
        for n in range(total):
            t = start + n / FPS
            canvas[:] = 32
            for i, it in enumerate(sources):
                while pending[i] is not None and pending[i][0] <= t + 0.5 / FPS:  # type: ignore[index]
                    current[i] = pending[i][1]  # type: ignore[index]
                    pending[i] = next(it, None)
                x, y = (i % cols) * cell[0], (i // cols) * cell[1]
                if current[i] is not None:
                    canvas[y : y + cell[1], x : x + cell[0]] = current[i]
                name = labels.names[i]
                _paste(canvas, name, x, y + cell[1] - name.shape[0], x + cell[0])
            top = 0
            for line in [*labels.header, labels.clock(t)]:
                _paste(canvas, line, 0, top, video.width)
                top += line.shape[0]
            frame = av.VideoFrame.from_ndarray(canvas, format="bgr24")
            frame.pts = n
            frame.time_base = fractions.Fraction(1, FPS)
            out.mux(video.encode(frame))
            self.progress = 0.1 + 0.85 * (n + 1) / total
        out.mux(video.encode(None))

    def _encode_audio(self, out: av.container.OutputContainer, sound: av.AudioStream, audio: np.ndarray) -> None:
        chunk = 1024
        for pos in range(0, len(audio), chunk):
            samples = audio[pos : pos + chunk]
            frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = RATE
            frame.pts = pos
            frame.time_base = fractions.Fraction(1, RATE)
            out.mux(sound.encode(frame))
        out.mux(sound.encode(None))


class Exports:
    """Export jobs by recording folder; one at a time per recording."""

    def __init__(self, font: Path | None = None) -> None:
        self._jobs: dict[Path, ExportJob] = {}
        self._font = font
        try:
            log.info("exports draw text with %s", find_font(font))
        except FontMissing as exc:
            # Said at start, not first when a court's copy is asked for;
            # each export looks again, so installing the font needs no restart.
            log.warning("exports will fail: %s", exc)

    def start(self, folder: Path) -> ExportJob:
        job = self._jobs.get(folder)
        if job is None or job.state == "failed" or (job.state == "done" and not job.output.is_file()):
            job = self._jobs[folder] = ExportJob(folder, self._font)
            job.start()
        return job

    def get(self, folder: Path) -> ExportJob | None:
        job = self._jobs.get(folder)
        if job is None and (folder / OUTPUT).is_file():
            # Rendered by an earlier process: the file is the result.
            job = self._jobs[folder] = ExportJob(folder)
            job.state, job.progress, job.finished_at = "done", 1.0, (folder / OUTPUT).stat().st_mtime
        return job
