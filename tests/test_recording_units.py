"""Recorder pieces on their own: frame assembly, hash chain, retention;
and a mediation room that records itself from its first participant."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from client import bot
from hub.core.store import SQLiteDatabase
from hub.media.frames import FrameAssembler, RtpIn
from recorder.catalogue import Catalogue
from recorder.manifest import GENESIS, link, verify
from recorder.retention import DAY, expire
from recorder.segments import SegmentWriter, TrackSpec

from .conftest import ROOT, start_hub
from .recording_helpers import auth

VP8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
KEY = bytes([0x00, 0x00, 0x00, 0x9D, 0x01, 0x2A, 0x40, 0x01, 0xF0, 0x00])  # P bit 0: keyframe, 320x240
DELTA = bytes([0x01, 0x00, 0x00, 0x11, 0x22])


def packets(seq: int, ts: int, frame: bytes, parts: int = 3) -> list[RtpIn]:
    arrival = ts / 15000  # 0.2 s apart: a hole waits up to 0.3 s for its retransmission
    """A VP8 frame split into RTP payloads: S bit on the first descriptor, marker on the last."""
    size = -(-len(frame) // parts)
    chunks = [frame[i : i + size] for i in range(0, len(frame), size)]
    return [
        RtpIn((seq + i) & 0xFFFF, ts, i == len(chunks) - 1, bytes([0x10 if i == 0 else 0x00]) + chunk, arrival)
        for i, chunk in enumerate(chunks)
    ]


def test_frames_are_whole_and_resume_at_a_keyframe_after_a_loss():
    assembler = FrameAssembler(VP8)
    out = []
    stream = [packets(65534, 1000, KEY), packets(1, 4000, DELTA + b"a" * 20)]  # sequence numbers wrap
    lossy = packets(4, 7000, DELTA + b"b" * 20)
    del lossy[1]
    stream += [lossy, packets(6, 10000, DELTA + b"c" * 20), packets(9, 13000, KEY + b"d" * 20)]
    for frame_packets in stream:
        for p in frame_packets:
            out += assembler.add(p)
    assert [f.data for f in out] == [KEY, DELTA + b"a" * 20, KEY + b"d" * 20]
    assert [f.keyframe for f in out] == [True, False, True]
    assert [f.timestamp for f in out] == [1000, 4000, 13000]
    assert assembler.dropped_frames >= 2  # the damaged frame and the one that depended on it


#: Writes `frames` VP8 frames into a segment, then kills its own process before closing it, as a killed hub would.
KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
from client.bot import SyntheticVideo
from recorder.segments import SegmentWriter, TrackSpec
frames = int(sys.argv[2])
writer = SegmentWriter(Path(sys.argv[1]), [TrackSpec("video", "video/vp8", 160, 120)])
for i, packet in enumerate(SyntheticVideo("vp8", 160, 120, 30, frames=frames)._packets):
    writer.write("video", bytes(packet), i * 3000, bool(packet.is_keyframe), 3000)
os.kill(os.getpid(), signal.SIGKILL)
"""


def write_segment(path: Path, frames: int, killed: bool = False) -> None:
    """A real VP8 segment; `killed`: its writer process was killed before closing it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if killed:
        proc = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(path), str(frames)], cwd=ROOT, timeout=60)
        assert proc.returncode == -signal.SIGKILL
        return
    writer = SegmentWriter(path, [TrackSpec("video", "video/vp8", 160, 120)])
    for i, packet in enumerate(bot.SyntheticVideo("vp8", 160, 120, 30, frames=frames)._packets):
        writer.write("video", bytes(packet), i * 3000, bool(packet.is_keyframe), 3000)
    writer.close()


def chained(folder: Path, paths: list[str]) -> dict:
    """A manifest listing the files at `paths` (relative to `folder`) in one hash chain."""
    segments = []
    head = GENESIS
    for n, rel in enumerate(paths):
        sha = hashlib.sha256((folder / rel).read_bytes()).hexdigest()
        head = link(head, rel, sha)
        segments.append({"path": rel, "sha256": sha, "seq": n, "link": head})
    return {"streams": [{"segments": segments}], "chain_head": head}


def test_hash_chain_detects_a_reordered_manifest(tmp_path: Path):
    for n in range(3):
        write_segment(tmp_path / f"s1/{n:05d}.webm", 3)
    manifest = chained(tmp_path, [f"s1/{n:05d}.webm" for n in range(3)])
    segments = manifest["streams"][0]["segments"]
    assert verify(tmp_path, manifest).intact
    swapped = [dict(s) for s in segments]
    swapped[0]["seq"], swapped[1]["seq"] = 1, 0
    verdict = verify(tmp_path, {"streams": [{"segments": swapped}], "chain_head": manifest["chain_head"]})
    assert verdict.chain_broken and not verdict.intact and verdict.changed == []
    assert not verify(tmp_path, manifest, chain_head=GENESIS).intact  # the catalogue's head disagrees


def test_verify_opens_every_segment(tmp_path: Path):
    """A segment whose writer was killed before its first cluster reached the disk holds only a
    header: its hash matches what is listed, yet it does not open, so the recording is not intact."""
    write_segment(tmp_path / "s1/00001.webm", 10)
    write_segment(tmp_path / "s1/00002.webm", 10, killed=True)  # 1/3 s: no cluster closed yet
    assert 0 < (tmp_path / "s1/00002.webm").stat().st_size < 1000
    assert verify(tmp_path, chained(tmp_path, ["s1/00001.webm"])).intact
    verdict = verify(tmp_path, chained(tmp_path, ["s1/00001.webm", "s1/00002.webm"]))
    assert not verdict.intact
    assert (verdict.changed, verdict.missing, verdict.chain_broken) == ([], [], False)
    assert list(verdict.unplayable) == ["s1/00002.webm"]
    assert "does not open" in verdict.unplayable["s1/00002.webm"]

    # Killed after its first cluster: it plays up to there, so it counts as playable.
    write_segment(tmp_path / "s1/00003.webm", 45, killed=True)
    assert verify(tmp_path, chained(tmp_path, ["s1/00001.webm", "s1/00003.webm"])).intact


async def test_retention_deletes_old_recordings_and_logs(tmp_path: Path, caplog):
    db = SQLiteDatabase(tmp_path / "hub.sqlite3")
    catalogue = Catalogue(db)
    await catalogue.open()
    now = time.time()
    for rid, age in [("rec-old", 40), ("rec-new", 5)]:
        (tmp_path / rid).mkdir()
        (tmp_path / rid / "manifest.json").write_text("{}")
        await catalogue.add(
            {"id": rid, "room_id": "site-x", "site_id": "x", "kind": "standing", "started_at": now - age * DAY}
            | {"ended_at": now - age * DAY + 60, "status": "complete", "title": "", "chain_head": ""}
        )
    with caplog.at_level(logging.INFO, logger="recorder.retention"):
        assert await expire(catalogue, tmp_path, days=30, now=now) == ["rec-old"]
    assert "rec-old" in caplog.text
    assert not (tmp_path / "rec-old").exists() and (tmp_path / "rec-new").exists()
    assert await catalogue.get("rec-old") is None and await catalogue.get("rec-new") is not None
    await db.close()


async def test_retention_leaves_recordings_another_machine_holds(tmp_path: Path):
    """An old recording made on another machine (its files there, not here) keeps its
    catalogue row: that machine deletes it with its files. One recorded here whose
    folder is already gone loses its row."""
    db = SQLiteDatabase(tmp_path / "hub.sqlite3")
    catalogue = Catalogue(db)
    await catalogue.open()
    now = time.time()
    here, there = "http://10.0.0.1:8080", "http://10.0.0.2:8080"
    for rid, node_url in [("rec-there", there), ("rec-here-gone", here)]:
        await catalogue.add(
            {"id": rid, "room_id": "site-x", "site_id": "x", "kind": "standing", "started_at": now - 40 * DAY}
            | {
                "ended_at": now - 40 * DAY + 60,
                "status": "complete",
                "title": "",
                "chain_head": "",
                "node_url": node_url,
            }
        )
    assert await expire(catalogue, tmp_path, days=30, now=now, node_url=here) == ["rec-here-gone"]
    assert await catalogue.get("rec-there") is not None
    await db.close()


async def test_mediation_room_records_from_its_first_participant(tmp_path: Path):
    hub = start_hub(tmp_path / "hub", env={"HUB_RECORD_MEDIATION_ROOMS": "true"})
    try:
        token = hub.token("mediator-m", "guomaying", "mediator")
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            body = {"site_id": "rianxiuma", "kind": "mediation", "title": "土地纠纷"}
            async with http.post(f"{hub.url}/api/rooms", json=body, headers=auth(token)) as r:
                room = (await r.json())["id"]
            async with http.ws_connect(f"{hub.url}/ws?token={token}") as ws:
                assert (await ws.receive_json(timeout=5))["type"] == "hello"
                await ws.send_json({"type": "join", "room": room})
                seen = []
                while not any(e["type"] == "recording-started" for e in seen):
                    seen.append(await ws.receive_json(timeout=5))
                async with http.get(f"{hub.url}/api/rooms/{room}/recording", headers=auth(token)) as r:
                    state = await r.json()
                assert state["on"] is True
                async with http.post(
                    f"{hub.url}/api/rooms/{room}/recording", json={"on": False}, headers=auth(token)
                ) as r:
                    assert r.status == 200
                while not any(e["type"] == "recording-stopped" for e in seen):
                    seen.append(await ws.receive_json(timeout=5))
            async with http.get(f"{hub.url}/api/recordings", params={"q": "土地"}, headers=auth(token)) as r:
                [found] = await r.json()
            # Recorded again from the next first participant, until the last one leaves.
            async with http.ws_connect(f"{hub.url}/ws?token={token}") as ws:
                assert (await ws.receive_json(timeout=5))["type"] == "hello"
                await ws.send_json({"type": "join", "room": room})
                while (await ws.receive_json(timeout=5))["type"] != "recording-started":
                    pass
            for _ in range(50):
                async with http.get(f"{hub.url}/api/rooms/{room}/recording", headers=auth(token)) as r:
                    if not (await r.json())["on"]:
                        break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the recording did not stop when the last participant left")
            guest = hub.token("guest-1", "rianxiuma", "guest", room=room)
            async with http.post(f"{hub.url}/api/rooms/{room}/recording", json={"on": True}, headers=auth(guest)) as r:
                assert r.status == 403  # a party to the mediation cannot switch recording
        assert found["id"] == state["recording"]["id"] and found["kind"] == "mediation"
        assert found["status"] == "complete"
    finally:
        hub.stop()
