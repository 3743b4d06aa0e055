"""Typed keys for what the application holds."""

from aiohttp import web

from hub.config import Settings
from hub.core.bus import EventIndex
from hub.core.lag import LagProbe
from hub.core.rooms import Rooms
from hub.core.store import Database
from hub.core.tokens import Keys
from hub.workflows.cases import Cases

from .heartbeat import Heartbeat

ROOMS = web.AppKey("rooms", Rooms)
#: The token signing keys (a key file re-read when it changes, a keyring or one secret).
KEYS = web.AppKey("keys", Keys)  # type: ignore[arg-type]
CASES = web.AppKey("cases", Cases)
EVENT_INDEX = web.AppKey("event_index", EventIndex)
SETTINGS = web.AppKey("settings", Settings)
DATABASE = web.AppKey("database", Database)
LAG = web.AppKey("lag", LagProbe)
#: The event WebSockets open on this process (their count is a metric).
EVENT_SOCKETS = web.AppKey("event_sockets", set[object])
#: Pings the event sockets and drops the dead ones, from one task.
HEARTBEAT = web.AppKey("heartbeat", Heartbeat)
