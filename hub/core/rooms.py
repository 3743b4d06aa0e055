"""Rooms, participants and streams: the domain the signaling plane drives.

Every method takes the caller's claims and checks jurisdiction itself, so no
door into the hub can forget to.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from hub.core.access import Forbidden, can_enter_room, can_reach_site
from hub.core.cluster import Cluster, WhepUpstream
from hub.core.livestate import ActFailed, LiveState, NodeUnreachable, Unavailable
from hub.core.quotas import Limits, QuotaExceeded
from hub.core.records import Event, Participant, Room, RoomDetail, RoomSummary, Stream
from hub.core.sites import Site, SiteTree, standing_room_id
from hub.core.tokens import NODE_ROLE, Claims, pulling_node
from hub.media.forward import Sink, Track
from hub.media.ingest import Feeder
from hub.media.layers import LayerState
from hub.media.relay import RelayError
from hub.media.router import Router

ROOM_KINDS = ("standing", "mediation", "training", "call", "conference")
STREAM_KINDS = ("camera", "screen")
#: Roles that may call a higher-level site into a room.
SITE_INVITER_ROLES = ("admin", "operator", "mediator")
#: Roles that may close any opened room of a site in their jurisdiction.
ROOM_CLOSER_ROLES = ("admin", "operator")

log = logging.getLogger(__name__)


class NotFound(Exception):
    """No such room, stream or session."""


#: Checks whether a caller may publish into a room of one kind (with the
#: participant the stream is attached to, if any); raises Forbidden if not.
PublishGuard = Callable[[Claims, Room, Participant | None], None]


class Elsewhere(Exception):
    """The stream lives on another hub process; `url` is where to ask."""

    def __init__(self, url: str) -> None:
        super().__init__(f"stream is hosted at {url}")
        self.url = url


@dataclass
class HostedStream:
    """A stream whose media this process hosts."""

    stream: Stream
    #: The stream joined its room as its own participant (a WHIP client without one).
    own_participant: bool


def _new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(6)}"


def session_prefix(node_id: str) -> str:
    """What a subscription id made by hub process `node_id` starts with (Router's session_prefix)."""
    return f"{node_id}."


def node_of_session(subscription_id: str) -> str | None:
    """The hub process that made a subscription id (None: not one a hub made)."""
    node, dot, _ = subscription_id.partition(".")
    return node if dot and node else None


class Rooms:
    def __init__(
        self,
        tree: SiteTree,
        state: LiveState,
        router: Router,
        node_id: str,
        node_url: str,
        limits: Limits,
        cluster: Cluster | None = None,
    ) -> None:
        self.tree = tree
        self.limits = limits
        #: Sessions being answered, not yet counted among hosted streams and
        #: subscriptions: ("whip"|"whep", "user"|"room", id) -> how many.
        self._admitting: Counter[tuple[str, str, str]] = Counter()
        #: Opened room id -> when this process first saw it empty (monotonic).
        self._empty_since: dict[str, float] = {}
        self.node_url = node_url
        self.state = state
        self._router = router
        self.node_id = node_id
        self._hosted: dict[str, HostedStream] = {}
        #: Participants this process added (event sockets, WHIP) by id, and the
        #: opened rooms they or hosted streams are in: what it writes back after
        #: shared live state lost them (restore).
        self._members: dict[str, Participant] = {}
        self._opened: dict[str, Room] = {}
        #: How this process pulls streams other processes host; None: it redirects viewers there.
        self.cluster = cluster
        #: Streams this process relays (pulls from another process): id -> record.
        self._relayed: dict[str, Stream] = {}
        #: Processes whose pulls from here outlived their heartbeat at the last sweep.
        self._missing_pullers: set[str] = set()
        #: Upstream hub processes (relays) this process pulls from, missing at the last sweep.
        self._missing_upstreams: set[str] = set()
        #: Room kind -> its publish guard; a feature registers one for its rooms (training).
        self.publish_guards: dict[str, PublishGuard] = {}
        router.on_stream_ended = self._stream_ended
        state.restorers.append(self.restore)
        state.acts.update(
            {
                "end-stream": self._act_end_stream,
                "view": self._act_view,
                "end-view": self._act_end_view,
                "tile": self._act_tile,
                "layer": self._act_layer,
            }
        )

    # -- acts: what another process asks of this one ---------------------------
    # The asking process has decided (who asks, jurisdiction); the owner does it.

    async def ask(self, node: str, act: str, **args: Any) -> dict[str, Any]:
        """Have hub process `node` (this one, or another through live state)
        do `act`; its NotFound, Forbidden and ValueError come back as such."""
        try:
            return await self.state.ask(node, act, args)
        except ActFailed as exc:
            known: dict[str, type[Exception]] = {"NotFound": NotFound, "Forbidden": Forbidden, "ValueError": ValueError}
            if exc.kind in known:
                raise known[exc.kind](exc.detail) from None
            raise

    async def _act_end_stream(self, args: dict[str, Any]) -> dict[str, Any]:
        stream_id = str(args["stream_id"])
        if stream_id not in self._hosted:
            raise NotFound(f"stream {stream_id} has ended")
        await self.unpublish_stream(stream_id)
        return {}

    async def _act_view(self, args: dict[str, Any]) -> dict[str, Any]:
        """Who holds a subscription here, and to which stream of which room."""
        subscription_id = str(args["subscription_id"])
        subscription = self._router.subscription(subscription_id)
        if subscription is None:
            raise NotFound(f"no subscription {subscription_id}")
        # Its stream's record is at hand (hosted or relayed here), also while Redis is down.
        hosted = self._hosted.get(subscription.stream_id)
        stream = hosted.stream if hosted is not None else self._relayed.get(subscription.stream_id)
        if stream is None:
            raise NotFound(f"stream {subscription.stream_id} has ended")
        return {"stream_id": subscription.stream_id, "user": subscription.user, "room_id": stream["room_id"]}

    async def _act_end_view(self, args: dict[str, Any]) -> dict[str, Any]:
        if not await self._router.end_view(str(args["subscription_id"])):
            raise NotFound(f"no subscription {args['subscription_id']}")
        return {}

    async def _act_tile(self, args: dict[str, Any]) -> dict[str, Any]:
        subscription_id = str(args["subscription_id"])
        if self._router.subscription(subscription_id) is None:
            raise NotFound(f"no subscription {subscription_id}")
        state = self._router.set_tile(subscription_id, int(args["width"]), int(args["height"]))
        return {"layer": asdict(state) if state is not None else None}

    async def _act_layer(self, args: dict[str, Any]) -> dict[str, Any]:
        stream_and_state = self._router.layer_states().get(str(args["subscription_id"]))
        state = stream_and_state[1] if stream_and_state is not None else None
        return {"layer": asdict(state) if state is not None else None}

    # -- rooms ---------------------------------------------------------------

    async def room(self, claims: Claims, room_id: str) -> Room:
        room = await self._room(room_id)
        if not can_enter_room(self.tree, claims, room):
            raise Forbidden(f"room {room_id} is outside your jurisdiction")
        return room

    async def _room(self, room_id: str) -> Room:
        site = self.tree.site_of_room(room_id)
        if site is not None:
            return {"id": room_id, "site_id": site.id, "kind": "standing", "title": site.name}
        department = self.tree.department_of_room(room_id)
        if department is not None:
            # Its site_id is the department's: only its own people enter it unasked.
            return {"id": room_id, "site_id": department.id, "kind": "standing", "title": department.name}
        room = await self.state.get_room(room_id)
        if room is None:
            raise NotFound(f"no room {room_id}")
        return room

    async def room_detail(self, claims: Claims, room_id: str) -> RoomDetail:
        room = await self.room(claims, room_id)
        return room | {
            "participants": await self.state.participants(room_id),
            "streams": await self.state.streams(room_id),
        }

    async def open_room(
        self, claims: Claims, site_id: str, kind: str, title: str, admit: list[str] | None = None, **fields: Any
    ) -> Room:
        """Open a room of a site. `admit` lets the people of other sites in
        the caller's jurisdiction (each with everything below it) enter;
        `fields` are extra attributes a feature keeps on the room."""
        if kind not in ROOM_KINDS or kind == "standing":
            raise ValueError(f"kind must be one of {', '.join(ROOM_KINDS[1:])}")
        for site in (site_id, *(admit or ())):
            if self.tree.get(site) is None:
                raise NotFound(f"no site {site}")
            if not can_reach_site(self.tree, claims, site):
                raise Forbidden(f"site {site} is outside your jurisdiction")
        # An emergency call's room is never refused: a site rings one call at a
        # time (hub.workflows.dispatch), and its rooms do not count either.
        opened = [r["id"] for r in await self.state.rooms() if r["site_id"] == site_id and r["kind"] != "call"]
        if kind != "call" and len(opened) >= self.limits.rooms_per_site:
            raise QuotaExceeded(
                f"site {site_id} has {len(opened)} open rooms, the most it may have; close one or wait until one"
                " stands empty long enough to close",
                self._soonest_expiry(opened),
            )
        room = fields | {
            "id": _new_id("room"),
            "site_id": site_id,
            "kind": kind,
            "title": title,
            "created_by": claims.user,
            "created_at": time.time(),
            "admit": sorted(set(admit or ())),
        }
        await self.state.put_room(room)
        await self.state.emit({"type": "room-opened", "room_id": room["id"], "room": room})
        return room

    async def update_room(self, room_id: str, changes: dict[str, Any]) -> Room | None:
        """Change an opened room's record (None if there is none), e.g. whom it
        admits, and say so with `room-updated`: every event socket drops what
        it cached about who may enter the room. The caller checked its right to."""
        room = await self.state.get_room(room_id)
        if room is None:
            return None
        room = room | changes  # type: ignore[assignment]  # a feature's own keys, as in open_room
        await self.state.put_room(room)
        await self.state.emit({"type": "room-updated", "room_id": room_id, "room": room})
        return room

    def _soonest_expiry(self, room_ids: list[str]) -> float:
        """Seconds until the first of these rooms may close for standing empty."""
        now = time.monotonic()
        grace = self.limits.empty_room_seconds
        return min((grace - (now - self._empty_since[r]) for r in room_ids if r in self._empty_since), default=grace)

    async def close_room(self, claims: Claims, room_id: str) -> Room:
        """Close an opened room: its opener may, and an operator or admin
        whose jurisdiction covers the room's site. Ends its streams."""
        room = await self._room(room_id)
        if room["kind"] == "standing":
            raise ValueError(f"{room_id} is a site's standing room: it is never closed")
        opener = room.get("created_by") == claims.user and can_enter_room(self.tree, claims, room)
        covers = claims.role in ROOM_CLOSER_ROLES and can_reach_site(self.tree, claims, room["site_id"])
        if not (opener or covers):
            raise Forbidden(f"only the room's opener or an operator of site {room['site_id']} may close it")
        if not await self._close_room(room, f"closed by {claims.user}"):
            raise NotFound(f"no room {room_id}")
        return room

    async def _close_room(self, room: Room, reason: str) -> bool:
        """Remove the room, its streams and participants; False if another
        call (or hub process) closed it first."""
        room_id = room["id"]
        self._empty_since.pop(room_id, None)
        if await self.state.delete_room(room_id) is None:
            return False
        for stream in await self.state.streams(room_id):
            try:  # its host ends the media and says stream-removed
                await self.ask(stream["node"], "end-stream", stream_id=stream["id"])
                continue
            except (NodeUnreachable, NotFound, ActFailed) as exc:
                log.info("closing room %s: stream %s not ended by its host (%s)", room_id, stream["id"], exc)
            if await self.state.remove_stream(stream["id"]):
                await self.state.emit({"type": "stream-removed", "room_id": room_id, "stream_id": stream["id"]})
        for participant in await self.state.participants(room_id):
            self._members.pop(participant["id"], None)
            if await self.state.remove_participant(room_id, participant["id"]):
                await self.state.emit(
                    {"type": "participant-left", "room_id": room_id, "participant_id": participant["id"]}
                )
        self._opened.pop(room_id, None)
        await self.state.emit({"type": "room-closed", "room_id": room_id, "room": room, "reason": reason})
        log.info("room %s closed: %s", room_id, reason)
        return True

    async def expire_empty_rooms(self) -> int:
        """Close the opened rooms that stood empty (no participant, no
        stream) for `empty_room_seconds`; returns how many."""
        now = time.monotonic()
        active = await self.state.active_rooms()
        streaming = {s["room_id"] for s in await self.state.all_streams()}
        opened = await self.state.rooms()
        closed = 0
        for room in opened:
            if room["id"] in active or room["id"] in streaming:
                self._empty_since.pop(room["id"], None)
                continue
            since = self._empty_since.setdefault(room["id"], now)
            if now - since >= self.limits.empty_room_seconds:
                closed += await self._close_room(room, f"empty for {self.limits.empty_room_seconds:g} s")
        for room_id in self._empty_since.keys() - {r["id"] for r in opened}:
            del self._empty_since[room_id]
        return closed

    async def expire_forever(self) -> None:
        # A quarter of the grace period: a room closes at most 25% late.
        period = min(30.0, max(0.25, self.limits.empty_room_seconds / 4))
        while True:
            await asyncio.sleep(period)
            try:
                await self.expire_empty_rooms()
            except Unavailable:
                pass  # nothing can be judged empty while shared live state is down
            except Exception:  # keep expiring; shared live state may come back
                log.exception("expiring empty rooms failed")

    async def rooms(self, claims: Claims) -> list[RoomSummary]:
        """Rooms in the caller's jurisdiction that are live or were opened."""
        active = await self.state.active_rooms()
        ids = set(active) | {r["id"] for r in await self.state.rooms()}
        out = []
        for room_id in sorted(ids):
            try:
                room = await self.room(claims, room_id)
            except (NotFound, Forbidden):
                continue
            out.append(room | {"participant_count": active.get(room_id, 0)})
        return out

    def standing_room(self, site_id: str) -> str:
        return standing_room_id(site_id)

    # -- participants --------------------------------------------------------

    async def join(self, claims: Claims, room_id: str, name: str | None = None, via: str = "ws") -> Participant:
        room = await self.room(claims, room_id)
        participant = {
            "id": _new_id("p"),
            "room_id": room_id,
            "user": claims.user,
            "name": name or claims.display_name(),
            "role": claims.role,
            "site_id": claims.site,
            "via": via,
            "node": self.node_id,
            "joined_at": time.time(),
        }
        if claims.department is not None and (department := self.tree.department(claims.department)) is not None:
            # The roster names the department: its people cannot look it up in a site list.
            participant["department"] = department.to_json()
        await self.state.add_participant(room["id"], participant)
        self._keep(room, participant)
        await self.state.emit({"type": "participant-joined", "room_id": room_id, "participant": participant})
        return participant

    def _keep(self, room: Room, participant: Participant | None = None) -> None:
        if participant is not None:
            self._members[participant["id"]] = participant
        if room["kind"] != "standing":
            self._opened[room["id"]] = room

    async def participant(self, room_id: str, participant_id: str) -> Participant:
        found = next((p for p in await self.state.participants(room_id) if p["id"] == participant_id), None)
        if found is None:
            raise NotFound(f"no participant {participant_id} in room {room_id}")
        return found

    async def update_participant(self, room_id: str, participant_id: str, changes: dict[str, Any]) -> Participant:
        """Change a participant's live fields (mute state, raised hand) and
        tell the room; add_participant overwrites the record by id."""
        participant = await self.participant(room_id, participant_id) | changes
        if not await self.state.replace_participant(room_id, participant):
            raise NotFound(f"participant {participant_id} has left room {room_id}")
        if participant_id in self._members:
            self._members[participant_id] = participant
        await self.state.emit({"type": "participant-updated", "room_id": room_id, "participant": participant})
        return participant

    async def chat(self, room_id: str, participant_id: str, text: str) -> Event:
        participant = await self.participant(room_id, participant_id)
        event = {
            "type": "chat",
            "room_id": room_id,
            "participant_id": participant_id,
            "name": participant["name"],
            "text": text,
            "at": time.time(),
        }
        await self.state.emit(event)
        return event

    def sites_above(self, site_id: str) -> list[Site]:
        """The sites a room of `site_id` may call in: its ancestors, nearest first."""
        out: list[Site] = []
        site = self.tree.get(site_id)
        while site is not None and site.parent is not None:
            site = self.tree.get(site.parent)
            if site is not None:
                out.append(site)
        return out

    async def invite_site(self, claims: Claims, room_id: str, participant_id: str, site_id: str) -> Event:
        """Invite a higher-level site into a room: its users are told live,
        wherever they are, and may enter because the room lies in their
        jurisdiction."""
        if claims.role not in SITE_INVITER_ROLES:
            raise Forbidden("only a mediator or an operator may invite a higher-level site")
        room = await self.room(claims, room_id)
        if site_id not in {s.id for s in self.sites_above(room["site_id"])}:
            raise ValueError(f"site {site_id} is not above the room's site {room['site_id']}")
        inviter = await self.participant(room_id, participant_id)
        return await self.announce_invitation(claims, room, site_id, {"sites": [site_id]}, inviter["name"])

    async def invite_department(self, claims: Claims, room_id: str, participant_id: str, department_id: str) -> Event:
        """Admit a department into an opened room and tell its people live. A
        department beside the room's site or a site above it may be invited;
        a standing room admits no one (open a room for the matter)."""
        if claims.role not in SITE_INVITER_ROLES:
            raise Forbidden("only a mediator or an operator may invite a department")
        room = await self.room(claims, room_id)
        department = self.tree.department(department_id)
        if department is None:
            raise NotFound(f"no department {department_id}")
        if room["kind"] == "standing":
            raise ValueError(f"{room_id} is a standing room: open a room to invite a department into")
        if not self.tree.covers(department.site_id, room["site_id"]):
            raise ValueError(f"department {department_id} is not beside the room's site or a site above it")
        inviter = await self.participant(room_id, participant_id)
        return await self.admit_department(claims, room, department_id, inviter["name"])

    async def admit_department(self, claims: Claims, room: Room, department_id: str, name: str | None = None) -> Event:
        """Let a department into an opened room (its `admit`) and invite its
        people; the caller checked its right to."""
        if department_id not in room.get("admit", ()):
            admit = sorted({*room.get("admit", ()), department_id})
            room = await self.update_room(room["id"], {"admit": admit}) or room
        return await self.announce_invitation(claims, room, department_id, {"sites": [department_id]}, name, True)

    async def announce_invitation(
        self,
        claims: Claims,
        room: Room,
        site_id: str,
        to: dict[str, Any],
        name: str | None = None,
        downward: bool = False,
    ) -> Event:
        """Tell people live that they are invited into a room: the `invitation`
        event the home page shows with a one-click join. `to` is its audience
        (hub.core.access.addressed_to), `site_id` the site invited. Invitees below
        the inviter (`downward`) are told the inviter's site names: that site
        is not in their tree."""
        sender = {"user": claims.user, "name": name or claims.display_name(), "site_id": claims.site}
        if downward and (site := self.tree.get(claims.site)) is not None:
            sender |= {"site_name": site.name, "site_name_en": site.name_en}
        event = {
            "type": "invitation",
            "room_id": room["id"],
            "room": room,
            "from": sender,
            "site_id": site_id,
            "to": to,
        }
        await self.state.emit(event)
        return event

    async def leave(self, room_id: str, participant_id: str) -> None:
        # Forgotten first: if shared live state is down now, restore() removes its record later.
        self._members.pop(participant_id, None)
        for stream in await self.state.streams(room_id):
            if stream["participant_id"] == participant_id and stream["id"] in self._hosted:
                await self.unpublish_stream(stream["id"])
        if await self.state.remove_participant(room_id, participant_id):
            await self.state.emit({"type": "participant-left", "room_id": room_id, "participant_id": participant_id})

    # -- streams -------------------------------------------------------------

    async def publish(
        self, claims: Claims, room_id: str, offer: str, kind: str = "camera", participant_id: str | None = None
    ) -> tuple[Stream, str]:
        if kind not in STREAM_KINDS:
            raise ValueError(f"stream kind must be one of {', '.join(STREAM_KINDS)}")
        room = await self.room(claims, room_id)
        participant = None
        if participant_id is not None:
            participant = next((p for p in await self.state.participants(room_id) if p["id"] == participant_id), None)
            if participant is None or participant["user"] != claims.user:
                raise NotFound(f"no participant {participant_id} of yours in room {room_id}")
        if (guard := self.publish_guards.get(room["kind"])) is not None:
            guard(claims, room, participant)
        with self._admit("whip", claims.user, room["id"]) as admitted:
            return await self._publish(claims, room, offer, kind, participant, admitted)

    async def _publish(
        self,
        claims: Claims,
        room: Room,
        offer: str,
        kind: str,
        participant: Participant | None,
        admitted: Callable[[], None],
    ) -> tuple[Stream, str]:
        room_id = room["id"]
        media, answer = await self._router.publish(offer)
        own = participant is None
        if participant is None:
            participant = await self.join(claims, room_id, via="whip")
        stream = {
            "id": media.id,
            "room_id": room["id"],
            "kind": kind,
            "tracks": media.tracks,
            "codecs": media.codecs,
            "participant_id": participant["id"],
            "user": claims.user,
            "name": participant["name"],
            "site_id": claims.site,
            "node": self.node_id,
            "node_url": self.node_url,
            "created_at": media.created,
        }
        self._hosted[media.id] = HostedStream(stream, own)
        admitted()  # hosted: it counts as a session from now on, no longer as one being admitted
        self._keep(room)
        await self.state.add_stream(stream)
        await self.state.emit({"type": "stream-added", "room_id": room_id, "stream": stream})
        return stream, answer

    async def publish_local(
        self,
        room_id: str,
        codec: RTCRtpCodecParameters,
        on_keyframe_request: Callable[[], None],
        kind: str,
        name: str,
        site_id: str,
        **fields: Any,
    ) -> tuple[Stream, Feeder]:
        """Announce a video stream the hub feeds itself (a camera it pulls)
        through the returned `Feeder`: no participant and no publisher's peer,
        otherwise a stream like any other (viewed, recorded, snapshotted). The
        caller checked the jurisdiction; `fields` are kept on the stream record."""
        media, feeder = self._router.publish_local(codec, on_keyframe_request)
        stream = fields | {
            "id": media.id,
            "room_id": room_id,
            "kind": kind,
            "tracks": media.tracks,
            "codecs": media.codecs,
            "participant_id": None,
            "user": "",
            "name": name,
            "site_id": site_id,
            "node": self.node_id,
            "node_url": self.node_url,
            "created_at": media.created,
        }
        self._hosted[media.id] = HostedStream(stream, own_participant=False)
        if (room := await self.state.get_room(room_id)) is not None:
            self._keep(room)
        await self.state.add_stream(stream)
        await self.state.emit({"type": "stream-added", "room_id": room_id, "stream": stream})
        return stream, feeder

    async def stream(self, claims: Claims, stream_id: str) -> Stream:
        stream = await self.state.get_stream(stream_id)
        if stream is None:
            raise NotFound(f"no stream {stream_id}")
        await self.room(claims, stream["room_id"])
        return stream

    async def site_of_stream(self, stream: Stream) -> str:
        """The site whose room holds a stream: whoever covers it may see the stream."""
        return str((await self._room(stream["room_id"]))["site_id"])

    async def unpublish(self, claims: Claims, room_id: str, stream_id: str) -> None:
        """End a stream (WHIP DELETE) wherever it is hosted: decided here, done by its host."""
        # A stream hosted here is ended from its own record, also while Redis is down.
        hosted = self._hosted.get(stream_id)
        stream = hosted.stream if hosted is not None else await self.state.get_stream(stream_id)
        if stream is None or stream["room_id"] != room_id:
            raise NotFound(f"no stream {stream_id} in room {room_id}")
        await self.room(claims, room_id)
        if stream["user"] != claims.user and claims.role not in ("operator", "admin"):
            raise Forbidden("only its publisher or an operator may end a stream")
        await self.ask(stream["node"], "end-stream", stream_id=stream_id)

    async def unpublish_stream(self, stream_id: str) -> None:
        if stream_id in self._hosted:
            await self._router.end_stream(stream_id)

    async def _stream_ended(self, stream_id: str) -> None:
        self._relayed.pop(stream_id, None)
        hosted = self._hosted.pop(stream_id, None)
        if hosted is None:
            return
        stream = hosted.stream
        if hosted.own_participant:
            self._members.pop(stream["participant_id"], None)
        # The media has ended whatever Redis says: with Redis down, its records
        # are left to restore(), and the WHIP DELETE that ended it succeeds.
        with contextlib.suppress(Unavailable):
            await self.state.remove_stream(stream["id"])
            await self.state.emit({"type": "stream-removed", "room_id": stream["room_id"], "stream_id": stream["id"]})
            if hosted.own_participant:
                await self.leave(stream["room_id"], stream["participant_id"])

    # -- the stream interface: this process's media ---------------------------

    def hosts(self, stream_id: str) -> bool:
        """Whether this process hosts the stream's media."""
        return self._router.hosts(stream_id)

    def local_tracks(self, stream_id: str) -> dict[str, Track]:
        """A locally hosted stream's tracks by kind (empty: not hosted here)."""
        return self._router.tracks(stream_id)

    def subscribe(self, stream_id: str, kind: str, sink: Sink, width: int = 0) -> Track | None:
        """Feed a sink (recorder, snapshot taker, relay) a local track's packets;
        `width`: of a simulcast track, the lowest layer that wide (else the top)."""
        return self._router.subscribe(stream_id, kind, sink, width)

    def unsubscribe(self, stream_id: str, kind: str, sink: Sink) -> None:
        self._router.unsubscribe(stream_id, kind, sink)

    async def pulled_tracks(self, stream: Stream) -> dict[str, Track]:
        """The tracks of a stream another process hosts, pulled here (a relay,
        shared with this process's viewers) for a sink that must take every
        stream of a room (the recorder); empty when it cannot be pulled. The
        relay ends after the linger once no viewer and no sink holds it."""
        if self.cluster is None or stream["node"] == self.node_id:
            return {}
        cluster = self.cluster
        try:
            await self._pull(cluster, stream)
        except RelayError as exc:
            log.warning("stream %s could not be pulled here: %s", stream["id"], exc)
            return {}
        if not self._router.relays(stream["id"]):
            return {}
        self._relayed[stream["id"]] = stream
        return self._router.tracks(stream["id"], relayed=True)

    async def _pull(self, cluster: Cluster, stream: Stream) -> None:
        """Have the stream here (Router.pull: once), pulled through the
        configured upstream hub, or from its host when there is none or it
        does not give the stream (a dead relay between: for streams already
        pulled through it, the sweep does the same)."""
        kinds = list(stream["tracks"])
        try:
            await self._router.pull(stream["id"], kinds, lambda: cluster.upstream(stream))
        except RelayError as exc:
            if cluster.upstream_url in (None, stream["node_url"].rstrip("/")):
                raise
            log.warning(
                "stream %s could not be pulled through %s (%s): pulling it from its host",
                stream["id"],
                cluster.upstream_url,
                exc,
            )
            await self._router.pull(stream["id"], kinds, lambda: cluster.upstream(stream, direct=True))

    def media_counts(self) -> dict[str, int]:
        """Streams and subscriptions hosted by this process."""
        return self._router.counts()

    def layer_states(self) -> dict[str, tuple[str, LayerState]]:
        """Subscription id -> (stream id, its simulcast layer), for the subscriptions here that have layers."""
        return self._router.layer_states()

    # -- viewing -------------------------------------------------------------

    def check_viewable(self, stream: Stream, redirect: bool = False) -> None:
        """Raise unless this process can serve the stream's viewers: it hosts
        the stream, or pulls it (relays) from the process that does. A
        viewer that asks to be `redirect`ed, and every viewer of a process
        with no cluster secret, is sent to the host instead (Elsewhere)."""
        if self._router.hosts(stream["id"]):
            return
        if stream["node"] == self.node_id:
            raise NotFound(f"stream {stream['id']} has ended")
        if redirect or self.cluster is None:
            raise Elsewhere(stream["node_url"])

    async def view(self, claims: Claims, stream_id: str, offer: str, redirect: bool = False) -> tuple[str, str]:
        """Subscribe the caller to a stream: (subscription id, SDP answer).
        A stream hosted by another process is pulled here first (once)."""
        stream = await self.stream(claims, stream_id)
        self.check_viewable(stream, redirect)
        # Another process's pull is one per stream and process: no user's quota. A
        # viewer over quota is refused before anything is pulled for it.
        node = claims.role == NODE_ROLE
        with contextlib.nullcontext() if node else self._admit("whep", claims.user, stream["room_id"]):
            if self.cluster is not None and not self._router.hosts(stream_id):
                cluster = self.cluster
                await self._pull(cluster, stream)
                if self._router.relays(stream_id):
                    self._relayed[stream_id] = stream
            subscription, answer = await self._router.view(stream_id, offer, claims.user)
        return subscription.id, answer

    # -- quotas --------------------------------------------------------------

    def _sessions(self, kind: str) -> Iterator[tuple[str, str]]:
        """(user, room id) of each WHIP or WHEP session on this process."""
        if kind == "whip":
            for hosted in self._hosted.values():
                if hosted.stream["participant_id"] is not None:  # the hub's own cameras are no one's quota
                    yield hosted.stream["user"], hosted.stream["room_id"]
        else:
            for subscription in self._router.subscriptions():
                if (hosted := self._hosted.get(subscription.stream_id)) is not None:
                    yield subscription.user, hosted.stream["room_id"]
                elif (relayed := self._relayed.get(subscription.stream_id)) is not None:
                    yield subscription.user, relayed["room_id"]

    @contextlib.contextmanager
    def _admit(self, kind: str, user: str, room_id: str) -> Iterator[Callable[[], None]]:
        """Refuse a session over the user's or the room's quota; count it as
        taken while it is being answered, so concurrent offers cannot all pass.
        Call what it yields once the session counts among `_sessions` (if
        anything is awaited after that), so that it is not counted twice."""
        limits = self.limits
        per_user, per_room = (
            (limits.whip_per_user, limits.whip_per_room)
            if kind == "whip"
            else (limits.whep_per_user, limits.whep_per_room)
        )
        sessions = list(self._sessions(kind))
        users = sum(u == user for u, _ in sessions) + self._admitting[(kind, "user", user)]
        rooms = sum(r == room_id for _, r in sessions) + self._admitting[(kind, "room", room_id)]
        what = "publishing (WHIP)" if kind == "whip" else "viewing (WHEP)"
        # A session that never connects is removed after connect_seconds: the soonest a place may free up.
        if users >= per_user:
            raise QuotaExceeded(
                f"{user} has {users} {what} sessions, the most one user may have", limits.connect_seconds
            )
        if rooms >= per_room:
            raise QuotaExceeded(
                f"room {room_id} has {rooms} {what} sessions, the most one room may have", limits.connect_seconds
            )
        keys = ((kind, "user", user), (kind, "room", room_id))
        self._admitting.update(keys)
        admitting = True

        def admitted() -> None:
            nonlocal admitting
            if admitting:
                admitting = False
                self._admitting.subtract(keys)
                for key in keys:
                    if self._admitting[key] <= 0:
                        del self._admitting[key]

        try:
            yield admitted
        finally:
            admitted()

    async def end_view(self, claims: Claims, stream_id: str, subscription_id: str) -> None:
        """End a subscription (WHEP DELETE) wherever it is held."""
        node = await self._held(claims, stream_id, subscription_id, "end")
        await self.ask(node, "end-view", subscription_id=subscription_id)

    async def set_tile(
        self, claims: Claims, stream_id: str, subscription_id: str, width: int, height: int
    ) -> LayerState | None:
        """The size the viewer renders a subscription at (0×0: hidden): it
        chooses the simulcast layer; None for a stream without layers."""
        node = await self._held(claims, stream_id, subscription_id, "size")
        return _layer_state(await self.ask(node, "tile", subscription_id=subscription_id, width=width, height=height))

    async def layer(self, claims: Claims, stream_id: str, subscription_id: str) -> LayerState | None:
        node = await self._held(claims, stream_id, subscription_id, "read")
        return _layer_state(await self.ask(node, "layer", subscription_id=subscription_id))

    async def _held(self, claims: Claims, stream_id: str, subscription_id: str, verb: str) -> str:
        """The process holding a subscription, once this one has decided that
        the caller may act on it (its viewer, or an operator of its room): the
        id names the process (Router's session prefix)."""
        node = self.node_id if self._router.subscription(subscription_id) else node_of_session(subscription_id)
        if node is None:
            raise NotFound(f"no subscription {subscription_id} to stream {stream_id}")
        try:
            held = await self.ask(node, "view", subscription_id=subscription_id)
        except NodeUnreachable:
            if node in await self.state.live_nodes():
                raise
            raise NotFound(f"no subscription {subscription_id}: its hub process has stopped") from None
        if held["stream_id"] != stream_id:
            raise NotFound(f"no subscription {subscription_id} to stream {stream_id}")
        await self.room(claims, held["room_id"])
        if held["user"] != claims.user and claims.role not in ("operator", "admin"):
            raise Forbidden(f"only its viewer or an operator may {verb} a subscription")
        return node

    async def sweep(self) -> int:
        """Remove participants and streams of hub processes that died
        without saying so (shared live state only); returns how many."""
        alive = await self.state.live_nodes()
        swept = 0
        for room_id in await self.state.active_rooms():
            for stream in await self.state.streams(room_id):
                if stream["node"] not in alive and await self.state.remove_stream(stream["id"]):
                    swept += 1
                    await self.state.emit({"type": "stream-removed", "room_id": room_id, "stream_id": stream["id"]})
            for participant in await self.state.participants(room_id):
                if participant["node"] not in alive and await self.state.remove_participant(room_id, participant["id"]):
                    swept += 1
                    await self.state.emit(
                        {"type": "participant-left", "room_id": room_id, "participant_id": participant["id"]}
                    )
        # A relay whose stream left the directory with its host (it died, and a
        # sweep here or elsewhere removed it) ends with its viewers: its
        # upstream may never say goodbye. A stream merely missing while its
        # host's heartbeat is there is not ended: after a Redis restart the
        # host writes it back (restore), and relays are in no directory to restore.
        for stream_id, relayed in tuple(self._relayed.items()):
            if relayed["node"] not in alive and await self.state.get_stream(stream_id) is None:
                await self._router.end_stream(stream_id)
        await self._end_dead_pulls(alive)
        await self._bypass_dead_upstreams(alive)
        return swept

    async def _end_dead_pulls(self, alive: set[str]) -> None:
        """End the pulls (WHEP sessions here) of relaying processes that died:
        nothing else would before ICE consent runs out, 30 s of sending into
        the void. A puller missing at one sweep may only be late to beat
        again after a Redis restart; missing at two, a node TTL apart, it is gone."""
        missing: set[str] = set()
        for subscription in self._router.subscriptions():
            node = pulling_node(subscription.user)
            if node is None or node in alive:
                continue
            if node in self._missing_pullers:
                log.info("ending the pull of stream %s by hub process %s, gone", subscription.stream_id, node)
                await self._router.end_view(subscription.id)
            else:
                missing.add(node)
        self._missing_pullers = missing

    async def _bypass_dead_upstreams(self, alive: set[str]) -> None:
        """Pull anew, from its host, each stream this process relays through
        an upstream hub (HUB_UPSTREAM: itself a relay) that died while the
        host lives: the viewers here are this process's, and go on (a
        relay's death ends only its own viewers' sessions). Nothing else
        would notice before ICE consent runs out, 30 s without media. As
        for the pulls of dead processes, missing at two sweeps means gone."""
        cluster = self.cluster
        if cluster is None:
            return
        missing: set[str] = set()
        for stream_id, relayed in tuple(self._relayed.items()):
            upstream = self._router.upstream(stream_id)
            session = upstream.session_id if isinstance(upstream, WhepUpstream) else None
            node = node_of_session(session) if session is not None else None
            if node is None or node in alive or node == relayed["node"] or relayed["node"] not in alive:
                continue  # pulled from the host itself: when it dies, so does the stream
            if node not in self._missing_upstreams:
                missing.add(node)
                continue
            stream = await self.state.get_stream(stream_id)
            if stream is None:
                continue
            log.info("hub process %s, the upstream of stream %s, is gone: pulling it from its host", node, stream_id)
            try:
                await self._router.repull(stream_id, lambda stream=stream: cluster.upstream(stream, direct=True))
            except RelayError as exc:
                log.warning("stream %s could not be pulled from its host: %s; its viewers here end", stream_id, exc)
        self._missing_upstreams = missing

    async def restore(self) -> None:
        """Make shared live state hold what this process hosts again, after an
        outage, a Redis restart or a sweep by the others: write back its
        participants, streams and their opened rooms where missing, and remove
        what it holds under this process's name that ended meanwhile. Each
        change is announced as it would have been, so pages and consoles
        catch up without reloading."""
        # Copies: the awaits below let joins and leaves change the registries.
        members, hosted, opened = dict(self._members), dict(self._hosted), dict(self._opened)
        for room in opened.values():
            if await self.state.get_room(room["id"]) is None:
                await self.state.put_room(room)
        rooms = {p["room_id"] for p in members.values()} | {h.stream["room_id"] for h in hosted.values()}
        for room_id in sorted(rooms | set(await self.state.active_rooms())):
            present = {p["id"]: p for p in await self.state.participants(room_id)}
            for participant in members.values():
                if participant["room_id"] == room_id and participant["id"] not in present:
                    await self.state.add_participant(room_id, participant)
                    await self.state.emit(
                        {"type": "participant-joined", "room_id": room_id, "participant": participant}
                    )
            for participant_id, participant in present.items():
                if participant.get("node") == self.node_id and participant_id not in self._members:
                    if await self.state.remove_participant(room_id, participant_id):
                        await self.state.emit(
                            {"type": "participant-left", "room_id": room_id, "participant_id": participant_id}
                        )
        listed = {s["id"]: s for s in await self.state.all_streams()}
        for stream_id, kept in hosted.items():
            if stream_id not in listed and stream_id in self._hosted:
                await self.state.add_stream(kept.stream)
                await self.state.emit(
                    {"type": "stream-added", "room_id": kept.stream["room_id"], "stream": kept.stream}
                )
        for stream_id, stream in listed.items():
            if stream.get("node") == self.node_id and stream_id not in self._hosted:
                if await self.state.remove_stream(stream_id):
                    await self.state.emit(
                        {"type": "stream-removed", "room_id": stream["room_id"], "stream_id": stream_id}
                    )

    async def close(self) -> None:
        await self._router.close()
        if self.cluster is not None:
            await self.cluster.close()


def _layer_state(answer: dict[str, Any]) -> LayerState | None:
    """A layer state as an act carries it (JSON: lists for tuples)."""
    raw = answer["layer"]
    if raw is None:
        return None
    return LayerState(**(raw | {"layers": tuple(tuple(layer) for layer in raw["layers"])}))
