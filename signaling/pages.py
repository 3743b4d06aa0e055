"""The browser app's pages: static files under web/, each served at its route."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from hub.core.rooms import NotFound

from .doors import Answer, door

WEB_ROOT = Path(__file__).resolve().parent.parent / "web"


def page(name: str, summary: str) -> Callable[[web.Request], Awaitable[web.FileResponse]]:
    """A handler serving web/<name>. Pages check their token, jurisdiction
    and the things they show themselves, through the API."""
    path = WEB_ROOT / name

    @door(summary, Answer(200, "HTML", media="text/html"), public=True)
    async def serve(request: web.Request) -> web.FileResponse:
        return web.FileResponse(path)

    return serve


@door(
    "The web app's files (scripts, styles)",
    Answer(200, "The file", media="application/octet-stream"),
    public=True,
    problems=(404,),
)
async def web_file(request: web.Request) -> web.FileResponse:
    """A file under web/. aiohttp's own static route answers a missing file
    with an empty 404 after the middleware has run; this one is a problem."""
    raw = request.match_info["path"]
    path = (WEB_ROOT / raw).resolve()  # "..", and links that lead out, end outside WEB_ROOT
    if not path.is_relative_to(WEB_ROOT) or not path.is_file():
        raise NotFound(f"no file /web/{raw}")
    return web.FileResponse(path)
