"""`python -m hub bot`: publish or view from the command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import aiohttp

from client import bot
from hub.media.ice import use_addresses


async def _publish(args: argparse.Namespace) -> dict[str, object]:
    if args.file:
        tracks = bot.FileTracks(args.file).tracks
    else:
        tracks = [bot.SyntheticVideo(args.codec, args.width, args.height, args.fps)]
        if args.audio:
            tracks.append(bot.SyntheticAudio())
    async with aiohttp.ClientSession() as http:
        session = await bot.publish(http, args.url, args.token, args.room, tracks, args.kind)
        print(json.dumps({"stream": session.resource_id, "location": session.location}), flush=True)
        try:
            await _run_for(args.seconds, lambda: all(t.readyState == "ended" for t in tracks))
        finally:
            await session.close()
    return {"stream": session.resource_id, "sent": {t.kind: len(t.sent) for t in tracks}}


async def _view(args: argparse.Namespace) -> dict[str, object]:
    async with aiohttp.ClientSession() as http:
        session = await bot.view(http, args.url, args.token, args.stream)
        try:
            await _run_for(args.seconds, lambda: session.pc.connectionState in ("failed", "closed"))
        finally:
            await session.close()
    return {
        kind: {
            "codec": log.mime_type,
            "frames": len(log.frames),
            "keyframes": sum(f.keyframe for f in log.frames),
            "bytes": sum(f.size for f in log.frames),
            "first_keyframe_s": round(log.first_keyframe_at - session.started_at, 3) if log.first_keyframe_at else None,
            # time.monotonic(): on Linux one clock for every process of the machine.
            "last_frame_at": log.frames[-1].received_at if log.frames else None,
        }
        for kind, log in session.logs.items()
    }


async def _run_for(seconds: float | None, done: object) -> None:
    deadline = time.monotonic() + seconds if seconds else None
    while not done() and (deadline is None or time.monotonic() < deadline):  # type: ignore[operator]
        await asyncio.sleep(0.2)


def cmd_bot(args: argparse.Namespace) -> int:
    if args.ice_address:
        use_addresses(args.ice_address)
    run = _publish if args.action == "publish" else _view
    print(json.dumps(asyncio.run(run(args))))
    return 0


def add_bot_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("bot", help="a WHIP/WHEP test client")
    actions = parser.add_subparsers(dest="action", required=True)
    for name in ("publish", "view"):
        p = actions.add_parser(name)
        p.add_argument("--url", default="http://127.0.0.1:8080", help="hub base URL")
        p.add_argument("--token", required=True)
        p.add_argument("--seconds", type=float, help="stop after this long (default: until the media ends)")
        p.add_argument("--ice-address", action="append", help="local ICE address(es), e.g. 127.0.0.1")
        p.set_defaults(func=cmd_bot)
    pub = actions.choices["publish"]
    pub.add_argument("--room", required=True)
    pub.add_argument("--kind", default="camera", choices=("camera", "screen"))
    pub.add_argument("--file", type=Path, help="publish this file's VP8/H.264/Opus packets as stored")
    pub.add_argument("--codec", default="vp8", choices=("vp8", "h264"), help="codec of the synthetic pattern")
    pub.add_argument("--width", type=int, default=640)
    pub.add_argument("--height", type=int, default=480)
    pub.add_argument("--fps", type=int, default=30)
    pub.add_argument("--audio", action="store_true", help="add an Opus tone")
    actions.choices["view"].add_argument("--stream", required=True)
