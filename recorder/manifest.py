"""The session manifest: JSON beside the media, rewritten after every
finished segment, with a SHA-256 per segment and a hash chain over them.

The chain links every segment, in the order they were finished, to all
before it: `link = sha256(previous link + path + segment sha256)`, starting
from 64 zeros. Changing, removing or reordering a segment breaks every link
after it; the head of the chain is also kept in the catalogue.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av

MANIFEST = "manifest.json"
GENESIS = "0" * 64


def link(previous: str, path: str, sha256: str) -> str:
    return hashlib.sha256(f"{previous}\n{path}\n{sha256}".encode()).hexdigest()


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    """Replace the manifest atomically: a kill leaves the old one or the new one."""
    tmp = folder / (MANIFEST + ".tmp")
    with tmp.open("w") as f:
        json.dump(manifest, f, ensure_ascii=False, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, folder / MANIFEST)


def read_manifest(folder: Path) -> dict[str, Any]:
    return json.loads((folder / MANIFEST).read_text())


def segments_in_order(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Every segment of every stream, in chain order."""
    return sorted((seg for s in manifest["streams"] for seg in s["segments"]), key=lambda seg: seg["seq"])


@dataclass
class Verdict:
    intact: bool
    segments: int
    changed: list[str]  #: segments whose content no longer matches
    missing: list[str]
    chain_broken: bool
    unplayable: dict[str, str]  #: segment -> why it does not open or decode

    def to_json(self) -> dict[str, Any]:
        return {
            "intact": self.intact,
            "segments": self.segments,
            "changed": self.changed,
            "missing": self.missing,
            "chain_broken": self.chain_broken,
            "unplayable": self.unplayable,
        }


def verify(folder: Path, manifest: dict[str, Any], chain_head: str | None = None) -> Verdict:
    """Recompute every segment's hash and the chain, and open every segment;
    `chain_head` is the catalogue's copy, which catches a manifest rewritten
    to match new media. Matching hashes prove only that a file is what was
    listed: a segment listed while it could not be opened is not intact."""
    changed, missing = [], []
    unplayable: dict[str, str] = {}
    previous = GENESIS
    chain_broken = False
    segments = segments_in_order(manifest)
    for seg in segments:
        path = folder / seg["path"]
        if not path.is_file():
            missing.append(seg["path"])
        elif sha256_file(path) != seg["sha256"]:
            changed.append(seg["path"])
        elif reason := unplayable_reason(path):
            unplayable[seg["path"]] = reason
        previous = link(previous, seg["path"], seg["sha256"])
        chain_broken |= previous != seg["link"]
    chain_broken |= previous != manifest.get("chain_head", GENESIS)
    if chain_head is not None:
        chain_broken |= previous != chain_head
    intact = not (changed or missing or chain_broken or unplayable)
    return Verdict(intact, len(segments), changed, missing, chain_broken, unplayable)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def unplayable_reason(path: Path) -> str | None:
    """Why a segment would not play, or None: it must open, and the first
    packet of each of its tracks must decode. Reading stops there, so a
    recovered segment cut off inside a cluster still counts as playable."""
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as err:
        return f"does not open: {err.strerror or err}"
    with container:
        pending = {s.index for s in container.streams if s.type in ("video", "audio")}
        decoded = 0
        try:
            for packet in container.demux():
                if packet.stream.index not in pending or not packet.size:
                    continue
                pending.discard(packet.stream.index)
                # A decoder may hold its first frame back until it is flushed.
                if not (packet.decode() or packet.stream.codec_context.decode(None)):
                    return f"its first {packet.stream.type} packet decodes to nothing"
                decoded += 1
                if not pending:
                    break
        except av.error.FFmpegError as err:
            if not decoded:
                return f"does not decode: {err.strerror or err}"
    return None if decoded else "holds no audio or video"


def playable_seconds(path: Path) -> float:
    """How much of a (possibly truncated) segment decodes: last frame's time."""
    end = 0.0
    try:
        with av.open(str(path)) as container:
            for packet in container.demux():
                if packet.pts is not None and packet.time_base is not None and packet.size:
                    end = max(end, float((packet.pts + (packet.duration or 0)) * packet.time_base))
    except (av.error.FFmpegError, OSError):
        pass  # a cut-off file ends where its last readable packet ends
    return end


def recover(folder: Path) -> dict[str, Any]:
    """Finish the manifest of a session whose process died: add the segments
    it was still writing, marked `recovered`, hashed as they are now.

    A segment killed before its first cluster reached the disk holds only a
    header (or less) and does not open: it is listed under `discarded`, not
    among the segments, and stays on disk. A stream left without a segment is
    dropped, as a stopped session drops one."""
    manifest = read_manifest(folder)
    listed = {seg["path"] for s in manifest["streams"] for seg in s["segments"]}
    seq = max((seg["seq"] for seg in segments_in_order(manifest)), default=-1)
    head = manifest.get("chain_head", GENESIS)
    end = 0.0
    discarded: list[dict[str, Any]] = []
    for stream in manifest["streams"]:
        for path in sorted(p for p in (folder / stream["folder"]).iterdir() if p.suffix in (".webm", ".mkv")):
            rel = f"{stream['folder']}/{path.name}"
            if rel in listed:
                continue
            if reason := unplayable_reason(path):
                discarded.append({"path": rel, "bytes": path.stat().st_size, "reason": reason})
                continue
            start = stream["segments"][-1]["start"] + stream["segments"][-1]["duration"] if stream["segments"] else 0.0
            seq += 1
            sha = sha256_file(path)
            head = link(head, rel, sha)
            stream["segments"].append(
                {
                    "path": rel,
                    "start": round(start, 3),
                    "duration": round(playable_seconds(path), 3),
                    "sha256": sha,
                    "bytes": path.stat().st_size,
                    "seq": seq,
                    "link": head,
                    "recovered": True,
                }
            )
        if stream["segments"]:
            last = stream["segments"][-1]
            end = max(end, stream["offset"] + last["start"] + last["duration"])
    manifest["streams"] = [s for s in manifest["streams"] if s["segments"]]
    if discarded:
        manifest["discarded"] = discarded
    manifest["chain_head"] = head
    manifest["status"] = "interrupted"
    manifest["ended_at"] = manifest["started_at"] + end
    for participant in manifest["participants"]:
        participant.setdefault("left_at", None)
        if participant["left_at"] is None:
            participant["left_at"] = manifest["ended_at"]
    write_manifest(folder, manifest)
    return manifest
