"""Publish H.264 + Opus with FFmpeg's own WHIP muxer (bundled in PyAV).

Run as its own process: PyAV holds the interpreter during the muxer's WHIP
handshake, so a hub in the same process would deadlock.

    python tests/ffmpeg_whip.py URL TOKEN SECONDS [CERT KEY]
"""

from __future__ import annotations

import fractions
import sys

import av
import numpy as np

from client.bot import pattern_image


def main() -> None:
    url, token, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    options = {"authorization": token}
    if len(sys.argv) > 5:
        options |= {"cert_file": sys.argv[4], "key_file": sys.argv[5]}
    out = av.open(url, "w", format="whip", options=options)
    video = out.add_stream(
        "libx264",
        rate=30,
        options={"preset": "ultrafast", "tune": "zerolatency", "bf": "0", "g": "30", "profile": "baseline"},
    )
    video.width, video.height, video.pix_fmt = 320, 240, "yuv420p"
    audio = out.add_stream("libopus", rate=48000, layout="stereo")
    samples = 960
    for i in range(int(seconds * 30)):
        frame = av.VideoFrame.from_ndarray(pattern_image(320, 240, i), format="rgb24").reformat(format="yuv420p")
        frame.pts, frame.time_base = i, fractions.Fraction(1, 30)
        out.mux(video.encode(frame))
        for j in range(5 * i // 3, 5 * (i + 1) // 3):  # 50 audio frames a second against 30 video frames
            tone = (np.sin(2 * np.pi * 440 * (np.arange(samples) + j * samples) / 48000) * 8000).astype(np.int16)
            aframe = av.AudioFrame.from_ndarray(np.repeat(tone, 2)[None, :], format="s16", layout="stereo")
            aframe.sample_rate, aframe.pts, aframe.time_base = 48000, j * samples, fractions.Fraction(1, 48000)
            out.mux(audio.encode(aframe))
    out.close()


if __name__ == "__main__":
    main()
