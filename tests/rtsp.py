"""A real RTSP server for camera tests: Debian's rtsp-server-perl, fed by a
PyAV process that pushes a media file in a loop with FFmpeg's RTSP muxer
(ANNOUNCE/RECORD), as an encoder box pushes to a media server.

`python -m tests.rtsp FILE URL` is the pusher.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import av
import pytest

from .conftest import ROOT, free_port, wait_for_port


@dataclass
class RtspServer:
    """rtsp-server-perl on loopback: sources push to `source_url(path)`,
    cameras are read from `url(path)`."""

    client_port: int
    source_port: int
    proc: subprocess.Popen[bytes]
    pushers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"rtsp://127.0.0.1:{self.client_port}/{path}"

    def source_url(self, path: str) -> str:
        return f"rtsp://127.0.0.1:{self.source_port}/{path}"

    def push(self, media: Path, path: str) -> subprocess.Popen[bytes]:
        pusher = subprocess.Popen(
            [sys.executable, "-m", "tests.rtsp", str(media), self.source_url(path)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.pushers.append(pusher)
        return pusher

    def stop_pushing(self, pusher: subprocess.Popen[bytes]) -> None:
        """End a pusher the way a source goes away: it stops sending and says
        TEARDOWN (rtsp-server-perl keeps a mount whose source was killed
        without one, and would refuse the next pusher)."""
        pusher.terminate()
        pusher.wait(10)

    def stop(self) -> None:
        for proc in (*self.pushers, self.proc):
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def start_rtsp_server() -> RtspServer:
    binary = shutil.which("rtsp-server-perl")
    if binary is None:
        pytest.fail("rtsp-server-perl is not installed (scripts/test.sh installs it)")
    client, source = free_port(), free_port()
    proc = subprocess.Popen(
        [
            binary,
            f"--clientport={client}",
            f"--serverport={source}",
            "--client_listen_address=127.0.0.1",
            "--source_listen_address=127.0.0.1",
            # RTP goes over UDP from this port up; away from other tests' servers.
            f"--rtp_start_port={free_port() // 2 * 2}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port(client, proc)
    wait_for_port(source, proc)
    return RtspServer(client, source, proc)


def push_forever(media: Path, url: str) -> None:
    """Send the file's video packets to `url` in real time, looping, with
    timestamps that keep growing across loops."""
    source = av.open(str(media))
    video = source.streams.video[0]
    out = av.open(url, "w", format="rtsp", options={"rtsp_transport": "udp"})
    # SIGTERM ends the push with a TEARDOWN (closing the muxer): the server
    # frees the mount, so a new pusher may announce it again.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        stream = out.add_stream_from_template(video)
        loop_length = 0
        start = time.monotonic()
        offset = 0
        while True:
            source.seek(0)
            for packet in source.demux(video):
                if packet.size == 0 or packet.pts is None:
                    continue
                pts = packet.pts + offset
                loop_length = max(loop_length, packet.pts + (packet.duration or 0))
                delay = start + float(pts * video.time_base) - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                packet.pts = packet.dts = pts
                packet.stream = stream
                out.mux(packet)
            offset += loop_length
    finally:
        out.close()


if __name__ == "__main__":
    push_forever(Path(sys.argv[1]), sys.argv[2])
