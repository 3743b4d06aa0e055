"""The event WebSocket: join rooms, receive their roster and live events.

Messages are JSON objects with a "type"; `docs/protocol.md` documents them.
Client messages are validated with pydantic: an unknown or malformed
message gets an `error` reply and changes nothing; an oversized one closes
the socket (1009). Each socket's messages are rate-limited (token buckets):
one over the limit is refused, a socket that keeps flooding is closed (1008).
Events reach a socket through hub/core/bus.py's index (by the rooms it joined,
its home site, what it monitors), so an event costs in proportion to its
recipients; each socket then decides with hub/core/access.py. A socket is
closed as too slow (1013) only when its client does not read: a send that
stays blocked on a full buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Annotated, Literal

from aiohttp import WSCloseCode, WSMsgType, web
from pydantic import BaseModel, ConfigDict, Field, StrictBool, TypeAdapter, ValidationError

from hub.config import Settings
from hub.core.access import Forbidden, addressed_to, can_enter_room
from hub.core.bus import MONITOR_ONLY, MONITORED, ROOM_ANNOUNCEMENTS, STATE_NOTICES, STOPPING, EventIndex
from hub.core.livestate import DEGRADED, RESTORED, Record, Unavailable
from hub.core.quotas import TokenBucket
from hub.core.records import Event
from hub.core.rooms import NotFound, Rooms
from hub.core.tasks import cancel_and_wait
from hub.core.tokens import Claims, TokenError
from recorder.service import Recorder

from .auth import claims_of
from .console import PRESENCE
from .keys import EVENT_INDEX, EVENT_SOCKETS, HEARTBEAT, ROOMS, SETTINGS
from .problems import problem_response, validation_detail
from .recordings import RECORDER

log = logging.getLogger(__name__)

#: Events that change a console's status (web/js/livestatus.js).
CONSOLE_EVENTS = frozenset(
    {"presence", "camera-status", "alert-raised", "alert-cleared"} | MONITORED | ROOM_ANNOUNCEMENTS | {"room-updated"}
)
#: A room or site id as a client may send it.
Ident = Annotated[str, Field(min_length=1, max_length=100)]


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Join(_Message):
    type: Literal["join"]
    room: Ident
    name: str | None = Field(default=None, min_length=1, max_length=64)
    #: Receive the room's roster and events without becoming a participant
    #: (an operator looking in is not attending).
    watch: bool = False


class Leave(_Message):
    type: Literal["leave"]
    room: Ident


class Ping(_Message):
    type: Literal["ping"]


class State(_Message):
    """The sender's microphone and camera: on (True) or muted (False)."""

    type: Literal["state"]
    room: Ident
    audio: StrictBool  # "no" or 0 is a mistake, not False
    video: StrictBool


class Chat(_Message):
    type: Literal["chat"]
    room: Ident
    text: str = Field(min_length=1, max_length=1000)


class Hand(_Message):
    type: Literal["hand"]
    room: Ident
    raised: StrictBool


class InviteSite(_Message):
    type: Literal["invite-site"]
    room: Ident
    site: Ident


class InviteDepartment(_Message):
    """Admit a department into an opened room; its people are told live."""

    type: Literal["invite-department"]
    room: Ident
    department: Ident


class Recording(_Message):
    """Start (on) or stop the room's recording; everyone in it is told."""

    type: Literal["record"]
    room: Ident
    on: StrictBool


class Monitor(_Message):
    """Receive the room activity (who joins, leaves, publishes) of every room
    the caller may enter, without joining them: the console's live tree."""

    type: Literal["monitor"]
    on: StrictBool


RoomMessage = State | Chat | Hand | InviteSite | InviteDepartment | Recording
ClientMessage = TypeAdapter(Annotated[Join | Leave | Ping | Monitor | RoomMessage, Field(discriminator="type")])


class Session:
    """One WebSocket: the rooms it joined and the events it forwards."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        rooms: Rooms,
        index: EventIndex,
        claims: Claims,
        recorder: Recorder | None,
        settings: Settings,
        transport: asyncio.Transport | None = None,
    ) -> None:
        self.ws = ws
        self.transport = transport
        #: When (monotonic) the client last sent anything, and when it was last pinged (signaling/heartbeat.py).
        self.heard_at = time.monotonic()
        self.pinged_at: float | None = None
        self.rooms = rooms
        self.recorder = recorder
        self.claims = claims
        self.index = index
        # Registered now, before anything is sent: no event of this socket's is missed.
        self.listener = index.add(claims, settings.ws_queue_events)
        self._send_stall = settings.ws_send_stall_seconds
        self.joined: dict[str, str | None] = {}  # room id -> participant id (None: watching)
        # Events of a room being joined wait until its "joined" reply is out,
        # so a client always sees its roster before changes to it.
        self.pending: dict[str, list[tuple[int, Event]]] = {}
        self.monitoring = False
        self._may_enter: dict[str, bool] = {}  # room id -> may this caller enter it (monitoring)
        self._messages = TokenBucket(settings.ws_messages_per_second, settings.ws_message_burst)
        self._chats = TokenBucket(settings.ws_chats_per_second, settings.ws_chat_burst)
        # Refusals are forgiven at one a second: a burst is refused in part,
        # a flood that goes on is closed.
        self._refusals = TokenBucket(1.0, settings.ws_refusals_before_close)

    async def send(self, message: Record) -> None:
        """Send one message; one that cannot be encoded (a record holding
        something JSON or UTF-8 cannot carry) is logged and skipped, so no
        record can stop the socket's sending."""
        try:
            data = json.dumps(message, ensure_ascii=False).encode("utf-8")
        except (TypeError, ValueError) as exc:  # UnicodeEncodeError is a ValueError
            log.error("cannot send a %r message to %s: %s", message.get("type"), self.claims.user, exc)
            return
        # A send waits only while the client's buffer is full; one that waits
        # too long means the client does not read (TimeoutError: closed as too slow).
        self.listener.blocked_since = time.monotonic()
        try:
            async with asyncio.timeout(self._send_stall):
                await self.ws.send_frame(data, WSMsgType.TEXT)
        finally:
            self.listener.blocked_since = None

    def unsent(self) -> int | None:
        transport = self.transport
        return None if transport is None or transport.is_closing() else transport.get_write_buffer_size()

    async def ping(self) -> None:
        with contextlib.suppress(ConnectionError):
            await self.ws.ping()

    def abort(self, reason: str) -> None:
        log.warning("dropping the event socket of %s: %s", self.claims.user, reason)
        if self.transport is not None:
            self.transport.abort()

    async def error(self, code: str, message: str, **fields: object) -> None:
        await self.send({"type": "error", "code": code, "message": message} | fields)

    async def _refuse(self, bucket: TokenBucket, what: str) -> None:
        if not self._refusals.take():
            log.warning("closing the event socket of %s: it kept sending over its rate limit", self.claims.user)
            await self.ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"message rate limit exceeded")
            return
        wait = round(bucket.wait(), 3)
        limit = f"{bucket.rate:g} per second, {bucket.burst} at once"
        await self.error("rate-limited", f"too many {what} ({limit}); retry in {wait:.1f} s", retry_after=wait)

    async def handle(self, raw: str | bytes) -> None:
        try:
            await self._handle(raw)
        except Unavailable as exc:
            await self.error("unavailable", f"{exc}; retry when told restored")

    async def _handle(self, raw: str | bytes) -> None:
        if not self._messages.take():
            await self._refuse(self._messages, "messages")
            return
        if isinstance(raw, bytes):
            await self.error("bad-message", "messages are JSON text")
            return
        try:
            message = ClientMessage.validate_json(raw)
        except ValidationError as exc:
            await self.error("bad-message", validation_detail(exc))
            return
        if isinstance(message, Chat) and not self._chats.take():
            await self._refuse(self._chats, "chat messages")
            return
        if isinstance(message, Ping):
            await self.send({"type": "pong"})
        elif isinstance(message, Join):
            await self.join(message)
        elif isinstance(message, Leave):
            await self.leave(message.room)
        elif isinstance(message, Monitor):
            self.monitoring = message.on
            self.index.monitor(self.listener, message.on)
            # The sequence number lets a console know whether it missed events (docs/protocol.md).
            await self.send({"type": "ack", "of": "monitor", "seq": self.index.seq, "node": self.rooms.node_id})
        else:
            await self.in_room(message)

    async def in_room(self, message: RoomMessage) -> None:
        """Messages a participant sends into a room it has joined; each is
        acknowledged so replies stay in request order."""
        participant_id = self.joined.get(message.room)
        if participant_id is None:
            await self.error("not-joined", f"not a participant of room {message.room}")
            return
        try:
            if isinstance(message, State):
                changes = {"audio": message.audio, "video": message.video}
                await self.rooms.update_participant(message.room, participant_id, changes)
            elif isinstance(message, Hand):
                await self.rooms.update_participant(message.room, participant_id, {"hand": message.raised})
            elif isinstance(message, Chat):
                await self.rooms.chat(message.room, participant_id, message.text)
            elif isinstance(message, Recording):
                if self.recorder is None:
                    raise NotFound("this hub does not record")
                await self.recorder.set_recording(self.claims, message.room, message.on)
            elif isinstance(message, InviteDepartment):
                await self.rooms.invite_department(self.claims, message.room, participant_id, message.department)
            else:
                await self.rooms.invite_site(self.claims, message.room, participant_id, message.site)
        except NotFound as exc:
            await self.error("not-found", str(exc))
        except Forbidden as exc:
            await self.error("forbidden", str(exc))
        except ValueError as exc:
            await self.error("bad-message", str(exc))
        else:
            await self.send({"type": "ack", "of": message.type, "room_id": message.room})

    async def join(self, message: Join) -> None:
        if message.room in self.joined:
            await self.error("already-joined", f"already in room {message.room}")
            return
        try:
            room = await self.rooms.room(self.claims, message.room)
        except NotFound as exc:
            await self.error("not-found", str(exc))
            return
        except Forbidden as exc:
            await self.error("forbidden", str(exc))
            return
        self.pending[room["id"]] = []
        self.index.join(self.listener, room["id"])
        try:
            participant = None if message.watch else await self.rooms.join(self.claims, room["id"], message.name)
            self.joined[room["id"]] = participant["id"] if participant else None
            detail = await self.rooms.room_detail(self.claims, room["id"])
            await self.send(
                {"type": "joined", "room": room, "participant": participant}
                | {"participants": detail["participants"], "streams": detail["streams"]}
            )
        finally:
            for seq, event in self.pending.pop(room["id"]):
                await self._send_event(seq, event)
            if room["id"] not in self.joined:
                self.index.leave(self.listener, room["id"])

    async def leave(self, room_id: str) -> None:
        if room_id not in self.joined:
            await self.error("not-joined", f"not in room {room_id}")
            return
        participant_id = self.joined.pop(room_id)
        self.index.leave(self.listener, room_id)
        if participant_id is not None:
            await self.rooms.leave(room_id, participant_id)
        await self.send({"type": "left", "room_id": room_id})

    async def forward_events(self) -> None:
        """Send this socket its events until the socket closes. Its queue holds
        only events the index found it a candidate for; the socket is closed,
        saying why, when its client stops reading or forwarding fails."""
        try:
            while (item := await self.listener.get()) is not None:
                try:
                    await self._forward(*item)
                except Unavailable:
                    pass  # an event needing a lookup while Redis is down; the roster after `restored` covers it
            if self.rooms.state.closed or self.listener.dropped == STOPPING:
                await self.ws.close(code=WSCloseCode.GOING_AWAY, message=STOPPING.encode())
                return
            await self.close_slow(self.listener.dropped or "too slow")
        except TimeoutError:
            await self.close_slow(self.stalled)
        except ConnectionError:
            pass  # the client went away: nobody to tell
        except Exception:
            log.exception("event forwarding to %s failed; closing its socket", self.claims.user)
            await self.ws.close(code=WSCloseCode.INTERNAL_ERROR, message=b"event forwarding failed; reconnect")
        finally:
            self.index.remove(self.listener)

    @property
    def stalled(self) -> str:
        """Why a socket whose send timed out is closed."""
        return f"too slow: the client read nothing for {self._send_stall:g} s"

    async def close_slow(self, reason: str) -> None:
        log.warning("closing the event socket of %s: %s", self.claims.user, reason)
        # The close frame queues behind what the client has not read; it is
        # given as long as one event was, then the socket is left to its heartbeat.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._send_stall):
                await self.ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=reason.encode()[:120])

    async def _send_event(self, seq: int, event: Event) -> None:
        if self.monitoring and event["type"] in CONSOLE_EVENTS and (path := self._path(event)):
            # A console of a big tree holds counts per branch: the path tells it which to change.
            site = self.rooms.tree.get(path[0])
            event = event | {"path": path, "level": site.level if site else None}
        await self.send(event | {"seq": seq})

    def _path(self, event: Event) -> list[str]:
        """The site an event is about and its ancestors up to this socket's
        home site, nearest first; [] if it names none (or one outside it)."""
        site_id = event.get("site_id")
        for holder in ("room", "camera", "alert"):
            if site_id is None and isinstance(event.get(holder), dict):
                site_id = event[holder].get("site_id")
        if site_id is None and (room_id := event.get("room_id")):
            site_id = self.index.site_of_room(str(room_id))
        path = self.rooms.tree.ancestors(str(site_id)) if site_id else []
        return path[: path.index(self.claims.site) + 1] if self.claims.site in path else []

    async def _forward(self, seq: int, event: Event) -> None:
        """The final yes/no for an event the index offered this socket (access.py decides)."""
        if event["type"] in STATE_NOTICES:
            await self._send_event(seq, event)
            if event["type"] == RESTORED:
                await self.send_rosters()
            return
        room_id = event.get("room_id")
        if event["type"] == "room-updated":
            self._may_enter.pop(room_id, None)  # its admissions may have changed
        if "to" in event:
            if (self.monitoring or event["type"] not in MONITOR_ONLY) and addressed_to(
                self.rooms.tree, self.claims, event["to"]
            ):
                await self._send_event(seq, event)
        elif room_id in self.pending:
            self.pending[room_id].append((seq, event))
        elif room_id in self.joined or self._announces_room_for_me(event):
            if event["type"] == "room-closed" and self.joined.pop(room_id, False) is not False:
                self.index.leave(self.listener, room_id)  # its participants are gone with it
            await self._send_event(seq, event)
        elif self.monitoring and event["type"] in MONITORED and await self._may_enter_room(room_id):
            await self._send_event(seq, event)

    def _announces_room_for_me(self, event: Event) -> bool:
        """A room opening or closing is announced to everyone who may enter it, joined or not."""
        return event["type"] in ROOM_ANNOUNCEMENTS and can_enter_room(self.rooms.tree, self.claims, event["room"])

    async def _may_enter_room(self, room_id: str) -> bool:
        # Asked once per room, until a room-updated event drops the answer.
        if room_id not in self._may_enter:
            try:
                await self.rooms.room(self.claims, room_id)
                self._may_enter[room_id] = True
            except (NotFound, Forbidden):
                self._may_enter[room_id] = False
        return self._may_enter[room_id]

    async def send_rosters(self) -> None:
        """Each joined room's participants and streams as they are now: events
        published while Redis was down reached no one, so a client replaces
        what it shows with this. Sent after `restored`, once this process's
        event channel is subscribed again, so every later change follows it."""
        for room_id in tuple(self.joined):
            detail = await self.rooms.room_detail(self.claims, room_id)
            await self.send(
                {
                    "type": "roster",
                    "room_id": room_id,
                    "participants": detail["participants"],
                    "streams": detail["streams"],
                }
            )

    async def close(self) -> None:
        for room_id, participant_id in tuple(self.joined.items()):
            if participant_id is not None:
                with contextlib.suppress(Unavailable):  # it is forgotten here; restore() removes its record
                    await self.rooms.leave(room_id, participant_id)
        self.joined.clear()


async def websocket(request: web.Request) -> web.StreamResponse:
    try:
        claims = claims_of(request)
    except TokenError as exc:
        return problem_response(401, "Unauthorized", str(exc), request.path)
    limit = request.app[SETTINGS].max_ws_message_bytes
    # Pings are the shared heartbeat's (signaling/heartbeat.py), so this loop sees them and the pongs.
    ws = web.WebSocketResponse(autoping=False, max_msg_size=limit)
    await ws.prepare(request)
    app = request.app
    session = Session(ws, app[ROOMS], app[EVENT_INDEX], claims, app.get(RECORDER), app[SETTINGS], request.transport)
    sockets = app[EVENT_SOCKETS]
    sockets.add(session)
    heartbeat = app[HEARTBEAT]
    heartbeat.add(session)
    forwarder = asyncio.create_task(session.forward_events())
    presence = request.app.get(PRESENCE)
    connection = await presence.connect(claims) if presence else None
    try:
        await session.send({"type": "hello", "user": claims.user, "role": claims.role, "site": claims.site})
        if not session.rooms.state.available:
            await session.send({"type": DEGRADED, "reason": "shared live state unreachable"})
        async for msg in ws:
            session.heard_at = time.monotonic()
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                await session.handle(msg.data)
            elif msg.type == WSMsgType.PING:
                await ws.pong(msg.data)
    except TimeoutError:  # a reply that could not be sent: the client reads nothing
        await session.close_slow(session.stalled)
    finally:
        sockets.discard(session)
        heartbeat.discard(session)
        await cancel_and_wait(forwarder)
        await session.close()
        if presence:
            await presence.disconnect(connection)
    return ws
