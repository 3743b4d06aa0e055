"""The browser app's pages: static files under web/, each served at its route."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

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
