"""Typed keys for what the application holds."""

from aiohttp import web

from hub.config import Settings
from hub.core.rooms import Rooms

ROOMS = web.AppKey("rooms", Rooms)
SECRET = web.AppKey("secret", str)
SETTINGS = web.AppKey("settings", Settings)
