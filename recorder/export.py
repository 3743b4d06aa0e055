"""One-file export: a background job renders a recorded session into a
single MP4 — a grid with one cell per stream, its name and the session time
drawn with OpenCV, the streams' audio mixed — decoding only here, after the
session, never in the packet path."""

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

from .manifest import read_manifest

log = logging.getLogger(__name__)

FPS = 15
RATE = 48000
OUTPUT = "export.mp4"


def _even(n: int) -> int:
    return max(2, n + (n & 1))


def _label(stream: dict[str, Any]) -> str:
    # OpenCV's built-in fonts draw ASCII only: a Chinese display name falls
    # back to the account name.
    name = stream.get("name") or ""
    return name if name.isascii() and name else stream.get("user") or stream["id"]


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


class ExportJob:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
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
        self._session_start: float = manifest["started_at"]
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
            self._encode_video(out, video, streams, cell, cols, start, seconds)
            self._encode_audio(out, sound, audio)
        tmp.replace(self.output)

    def _encode_video(
        self,
        out: av.container.OutputContainer,
        video: av.VideoStream,
        streams: list[dict[str, Any]],
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
                _text(canvas, _label(streams[i]), (x + 8, y + cell[1] - 10))
            clock = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self._session_start + t))
            _text(canvas, f"{clock}  +{t - start:6.1f}s", (8, 22))
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


def _text(img: np.ndarray, text: str, at: tuple[int, int]) -> None:
    # Dark outline under white text stays readable on any picture.
    cv2.putText(img, text, at, cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(img, text, at, cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)


class Exports:
    """Export jobs by recording folder; one at a time per recording."""

    def __init__(self) -> None:
        self._jobs: dict[Path, ExportJob] = {}

    def start(self, folder: Path) -> ExportJob:
        job = self._jobs.get(folder)
        if job is None or job.state == "failed" or (job.state == "done" and not job.output.is_file()):
            job = self._jobs[folder] = ExportJob(folder)
            job.start()
        return job

    def get(self, folder: Path) -> ExportJob | None:
        job = self._jobs.get(folder)
        if job is None and (folder / OUTPUT).is_file():
            # Rendered by an earlier process: the file is the result.
            job = self._jobs[folder] = ExportJob(folder)
            job.state, job.progress, job.finished_at = "done", 1.0, (folder / OUTPUT).stat().st_mtime
        return job
