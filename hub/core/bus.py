"""Events routed by interest: each event goes to the few listeners it may
concern, found through indexes, not by asking every listener.

An `EventIndex` keeps its listeners (one per event socket) indexed by the
rooms they joined or are joining, by their home site, user and role, by the
room a room-bound token names, and — for the monitoring ones (consoles) — by
home site again. For each event it looks up *candidates*: the joined
sockets of its room; for an addressed event (`to`), the sockets its keys
name ("covering" walks the site's ancestors: O(depth)); for a room
announcement, the sockets that might enter the room; for monitored room
activity, the monitors above the room's site. The cost of an event is thus
in proportion to its candidates, not to the number of sockets.

The index only narrows. The final yes/no stays with the event socket
(signaling/events.py), which asks hub/core/access.py like every other door.

Each listener also numbers the events it is handed (`seq`, per process and
counting every event delivered here), so a console that loaded a status at
sequence S applies only events after S and, on a reconnect, knows whether it
missed any.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Iterable

from hub.core.access import room_bound
from hub.core.livestate import DEGRADED, RESTORED, LiveState
from hub.core.records import Event
from hub.core.sites import SiteTree
from hub.core.tokens import Claims

log = logging.getLogger(__name__)

#: Room events a monitoring socket receives from every room it may enter.
MONITORED = frozenset({"participant-joined", "participant-left", "stream-added", "stream-removed"})
#: Addressed events only monitoring sockets receive (of interest to a console, noise elsewhere).
MONITOR_ONLY = frozenset({"presence", "snapshot"})
#: Events announcing a room to everyone who may enter it, joined or not.
ROOM_ANNOUNCEMENTS = frozenset({"room-opened", "room-closed"})
#: This process's own notices about shared live state, for every socket.
STATE_NOTICES = frozenset({DEGRADED, RESTORED})
#: Seconds a send must have been blocked (its buffer full) before a backlog
#: over the bound drops the listener: a momentary full buffer is not "does not read".
BLOCKED_BEFORE_DROP = 1.0
#: Why every listener is dropped when the live state closes.
STOPPING = "hub stopping"


class Listener:
    """One socket's place in the index and its queue of candidate events.

    The queue is not bounded by a count: a socket whose forwarder is merely
    behind (a busy process) keeps its events. It is dropped as too slow only
    when more than `bound` events wait *and* its current send has been
    blocked on a full send buffer for a second or more: a client that does
    not read."""

    def __init__(self, index: EventIndex, claims: Claims, bound: int) -> None:
        self.index = index
        self.claims = claims
        self.bound = bound
        self.rooms: set[str] = set()
        self.monitoring = False
        #: Why the listener was dropped (None while it is not).
        self.dropped: str | None = None
        #: Since when (monotonic) a send of this socket has been waiting for its buffer to drain.
        self.blocked_since: float | None = None
        self._queue: collections.deque[tuple[int, Event]] = collections.deque()
        self._ready = asyncio.Event()

    def put(self, seq: int, event: Event) -> None:
        if self.dropped is not None:
            return
        self._queue.append((seq, event))
        self._ready.set()
        if len(self._queue) > self.bound and self.blocked_since is not None:
            blocked = time.monotonic() - self.blocked_since
            if blocked >= BLOCKED_BEFORE_DROP:
                waiting = len(self._queue)
                self.drop(f"too slow: {waiting} events waited while the client read nothing for {blocked:.1f} s")

    def drop(self, reason: str) -> None:
        log.warning("dropping the event listener of %s: %s", self.claims.user, reason)
        self.dropped = reason
        self._queue.clear()
        self._ready.set()
        self.index.remove(self)

    async def get(self) -> tuple[int, Event] | None:
        """The next event with its sequence number; None once dropped."""
        while not self._queue:
            if self.dropped is not None:
                return None
            self._ready.clear()
            await self._ready.wait()
        return self._queue.popleft()

    def pending(self) -> int:
        return len(self._queue)


class EventIndex:
    """Routes the live state's events to listeners by interest (see the module)."""

    def __init__(self, state: LiveState, tree: SiteTree) -> None:
        self.state = state
        self.tree = tree
        #: Events delivered on this process so far: the sequence number of the last one.
        self.seq = 0
        self._all: set[Listener] = set()
        self._by_room: dict[str, set[Listener]] = {}
        self._by_home: dict[str, set[Listener]] = {}  # listeners that are not room-bound
        self._by_user: dict[str, set[Listener]] = {}
        self._by_role: dict[str, set[Listener]] = {}
        self._bound_to: dict[str, set[Listener]] = {}  # room-bound tokens by their room
        self._monitors: dict[str, set[Listener]] = {}  # monitoring listeners by home site
        #: Opened rooms seen in announcements: their site and admissions, to find their monitors.
        self._opened: dict[str, Event] = {}
        state.tap(self)

    def close(self) -> None:
        """The live state is closing: every listener is dropped, saying so."""
        self.state.untap(self)
        for listener in tuple(self._all):
            listener.drop(STOPPING)

    # -- registration ------------------------------------------------------------

    def add(self, claims: Claims, bound: int) -> Listener:
        listener = Listener(self, claims, bound)
        self._all.add(listener)
        if room_bound(claims):
            if claims.room is not None:
                self._bound_to.setdefault(claims.room, set()).add(listener)
        else:
            self._by_home.setdefault(claims.site, set()).add(listener)
        self._by_user.setdefault(claims.user, set()).add(listener)
        self._by_role.setdefault(claims.role, set()).add(listener)
        return listener

    def remove(self, listener: Listener) -> None:
        if listener not in self._all:
            return
        self._all.discard(listener)
        for room_id in tuple(listener.rooms):
            self.leave(listener, room_id)
        self.monitor(listener, False)
        claims = listener.claims
        _discard(self._bound_to, claims.room, listener)
        _discard(self._by_home, claims.site, listener)
        _discard(self._by_user, claims.user, listener)
        _discard(self._by_role, claims.role, listener)

    def join(self, listener: Listener, room_id: str) -> None:
        """The listener is joining (or watching) a room: its events are candidates from now on."""
        if listener in self._all:
            listener.rooms.add(room_id)
            self._by_room.setdefault(room_id, set()).add(listener)

    def leave(self, listener: Listener, room_id: str) -> None:
        listener.rooms.discard(room_id)
        _discard(self._by_room, room_id, listener)

    def monitor(self, listener: Listener, on: bool) -> None:
        if on and listener in self._all and not room_bound(listener.claims):
            self._monitors.setdefault(listener.claims.site, set()).add(listener)
        else:
            _discard(self._monitors, listener.claims.site, listener)
        listener.monitoring = on

    # -- routing -----------------------------------------------------------------

    def deliver(self, event: Event) -> None:
        """Hand an event to its candidates (called in the live state's delivery)."""
        self.seq += 1
        try:
            candidates = self.candidates(event)
        except Exception:
            # An event the index cannot place must still reach whoever it is for.
            log.exception("cannot route a %r event; offering it to every socket", event.get("type"))
            candidates = set(self._all)
        for listener in candidates:
            listener.put(self.seq, event)

    def candidates(self, event: Event) -> set[Listener]:
        """Every listener the event may be for (a superset; the socket decides)."""
        kind = event.get("type")
        room_id = event.get("room_id")
        if kind in STATE_NOTICES:
            return set(self._all)
        if "to" in event:
            return self._addressed(event["to"], monitors_only=kind in MONITOR_ONLY)
        out: set[Listener] = set(self._by_room.get(room_id, ())) if room_id else set()
        if kind in ROOM_ANNOUNCEMENTS or kind == "room-updated":
            room = event.get("room") or {}
            if kind == "room-closed":
                self._opened.pop(room_id, None)
            elif room:
                self._opened[room_id] = room
            out |= self._may_enter(room)
            if kind == "room-updated":
                out |= self._monitoring()  # they cached who may enter it
        elif kind in MONITORED and room_id:
            out |= self._monitors_of_room(room_id)
        return out

    def _addressed(self, to: dict[str, object], monitors_only: bool) -> set[Listener]:
        homes = self._monitors if monitors_only else self._by_home
        # The narrowest key gives the candidates; access.addressed_to checks all of them.
        if "users" in to:
            found = _union(self._by_user, _strings(to["users"]))
            return {lsn for lsn in found if lsn.monitoring} if monitors_only else found
        if "sites" in to:
            return _union(homes, _strings(to["sites"]))
        if "covering" in to:
            return _union(homes, self.tree.ancestors(str(to["covering"])))
        if "within" in to:
            return self._within(homes, str(to["within"]))
        if "roles" in to:
            found = _union(self._by_role, _strings(to["roles"]))
            return {lsn for lsn in found if lsn.monitoring} if monitors_only else found
        return set(self._monitoring() if monitors_only else self._all)

    def _may_enter(self, room: Event) -> set[Listener]:
        """Sockets that might enter a room: those above its site, those of the
        sites it admits (each with everything below) and tokens bound to it."""
        out = set(self._bound_to.get(room.get("id", ""), ()))
        out |= _union(self._by_home, self.tree.ancestors(str(room.get("site_id", ""))))
        for site in room.get("admit", ()):
            out |= self._within(self._by_home, str(site))
        return out

    def _monitors_of_room(self, room_id: str) -> set[Listener]:
        site = self.tree.site_of_room(room_id)
        if site is not None:
            return _union(self._monitors, self.tree.ancestors(site.id))
        room = self._opened.get(room_id)
        if room is None:  # opened before this process saw it: every monitor judges
            return self._monitoring()
        out = _union(self._monitors, self.tree.ancestors(str(room.get("site_id", ""))))
        for admitted in room.get("admit", ()):
            out |= self._within(self._monitors, str(admitted))
        return out

    def site_of_room(self, room_id: str) -> str | None:
        """The site of a standing room, or of an opened room this process saw announced."""
        site = self.tree.site_of_room(room_id)
        if site is not None:
            return site.id
        room = self._opened.get(room_id)
        return str(room["site_id"]) if room and room.get("site_id") else None

    def _monitoring(self) -> set[Listener]:
        return set().union(*self._monitors.values())

    def _within(self, homes: dict[str, set[Listener]], site_id: str) -> set[Listener]:
        if self.tree.department(site_id) is not None:  # a department's "branch" is itself
            return set(homes.get(site_id, ()))
        # Whichever is smaller: the branch's sites, or the home sites that have sockets.
        if len(homes) < len(self.tree):
            return _union(homes, [home for home in homes if self.tree.covers(site_id, home)])
        return _union(homes, [s.id for s in self.tree.jurisdiction(site_id)])


def _strings(value: object) -> Iterable[str]:
    return [str(v) for v in value] if isinstance(value, list | tuple | set | frozenset) else [str(value)]


def _union(index: dict[str, set[Listener]], keys: Iterable[str]) -> set[Listener]:
    out: set[Listener] = set()
    for key in keys:
        out |= index.get(key, set())
    return out


def _discard(index: dict[str, set[Listener]], key: str | None, listener: Listener) -> None:
    if key is None:
        return
    found = index.get(key)
    if found is not None:
        found.discard(listener)
        if not found:
            del index[key]
