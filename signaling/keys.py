"""Typed keys for what the application holds."""

from aiohttp import web

from hub.config import Settings
from hub.core.bus import EventIndex
from hub.core.lag import LagProbe
from hub.core.rooms import Rooms
from hub.core.store import Database

ROOMS = web.AppKey("rooms", Rooms)
EVENT_INDEX = web.AppKey("event_index", EventIndex)
SECRET = web.AppKey("secret", str)
SETTINGS = web.AppKey("settings", Settings)
DATABASE = web.AppKey("database", Database)
LAG = web.AppKey("lag", LagProbe)
