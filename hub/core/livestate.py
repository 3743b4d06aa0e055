"""Live state: rooms, participants, the stream directory and the event bus.

One interface, two backends. `MemoryLiveState` serves a single hub process;
`RedisLiveState` lets several hub processes share one picture of what is
live, with Redis pub/sub carrying events between them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from hub.core.records import Event, Participant, Room, Stream
from hub.core.tasks import cancel_and_wait

log = logging.getLogger(__name__)

Record = dict[str, Any]

#: Bound of each local listener's event queue; a listener that falls
#: this far behind is dropped rather than growing without limit.
LISTENER_QUEUE = 1000

#: Local-only events (never published): shared live state became unreachable,
#: and it is back with this process's records written into it again.
DEGRADED = "degraded"
RESTORED = "restored"

#: Seconds between probes of an unreachable Redis: how soon after it returns a process notices.
PROBE_SECONDS = 1.0


class Unavailable(Exception):
    """Shared live state (Redis) cannot be reached now: a request that needs it
    may be retried later (HTTP 503); media already flowing is not affected."""


#: Seconds an act asked of another hub process may take before the asker
#: gives up (below the Redis connection's 5 s read timeout, which BLPOP holds).
ASK_SECONDS = 4.0


class NodeUnreachable(Unavailable):
    """The hub process that owns a stream, subscription or recording did not
    take or answer the act asked of it (HTTP 503, like a Redis outage)."""


class ActFailed(Exception):
    """The owning hub process refused or failed an act: `kind` names its
    exception (e.g. "NotFound"), `detail` its message."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


#: What this process does when another one asks it an act: arguments in, a
#: JSON-able result out; an exception goes back to the asker as ActFailed.
Act = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


#: A step that writes back what this process hosts (its participants, streams,
#: presence records, camera leases ...) after shared live state lost them.
Restorer = Callable[[], Awaitable[None]]


class Tap(Protocol):
    """Takes every event as it is delivered, in the emitter's call, and routes
    it itself (hub/core/bus.py's index of event sockets)."""

    def deliver(self, event: Event) -> None: ...

    def close(self) -> None:
        """The live state is closing."""


class LiveState(ABC):
    """What is live now. Records are JSON-able dicts keyed by their "id"."""

    def __init__(self) -> None:
        #: Each listener's queue and the filter of the events it takes (None: all).
        self._listeners: dict[asyncio.Queue[Event | None], Callable[[Event], bool] | None] = {}
        self._taps: list[Tap] = []
        #: Set by close(): a listener dropped now was not too slow, the hub is stopping.
        self.closed = False
        #: Run, in order, when shared live state is back after an outage or lost this process's records.
        self.restorers: list[Restorer] = []
        #: Act name -> how this process does it when another one asks (`ask`).
        self.acts: dict[str, Act] = {}

    @property
    def available(self) -> bool:
        """Whether shared live state is reachable and holds this process's records."""
        return True

    @abstractmethod
    async def check(self) -> None:
        """Raise Unavailable unless the backend answers now (readiness)."""

    @abstractmethod
    async def start(self) -> None:
        """Connect to the backend; called once before use."""

    @abstractmethod
    async def live_nodes(self) -> set[str]:
        """Ids of the hub processes that are running now."""

    @abstractmethod
    async def ask(self, node: str, act: str, args: dict[str, Any], timeout: float = ASK_SECONDS) -> dict[str, Any]:
        """Have hub process `node` do `act` (one of its `acts`) and return its
        result; raises NodeUnreachable (no answer within `timeout`) or ActFailed."""

    async def _do(self, act: str, args: dict[str, Any]) -> dict[str, Any]:
        """Run an act asked of this process, its failure told as ActFailed."""
        handler = self.acts.get(act)
        if handler is None:
            raise ActFailed("ValueError", f"no act {act!r} on this hub process")
        try:
            return await handler(args)
        except ActFailed:
            raise
        except Exception as exc:
            raise ActFailed(type(exc).__name__, str(exc)) from exc

    async def close(self) -> None:
        self.closed = True
        for queue in tuple(self._listeners):
            self._drop(queue)
        for tap in tuple(self._taps):
            tap.close()

    @abstractmethod
    async def put_room(self, room: Room) -> None: ...

    @abstractmethod
    async def get_room(self, room_id: str) -> Room | None: ...

    @abstractmethod
    async def rooms(self) -> list[Room]: ...

    @abstractmethod
    async def delete_room(self, room_id: str) -> Room | None:
        """Remove an opened room; None if it was not there (of racing
        deletes, exactly one gets the room)."""

    @abstractmethod
    async def add_participant(self, room_id: str, participant: Participant) -> None: ...

    @abstractmethod
    async def replace_participant(self, room_id: str, participant: Participant) -> bool:
        """Overwrite a participant's record only if it is still there: a
        change racing with its leaving must not bring it back."""

    @abstractmethod
    async def remove_participant(self, room_id: str, participant_id: str) -> bool:
        """Remove a participant; False if it was not there."""

    @abstractmethod
    async def participants(self, room_id: str) -> list[Participant]: ...

    @abstractmethod
    async def active_rooms(self) -> dict[str, int]:
        """Room id -> participant count, for rooms with anyone in them."""

    @abstractmethod
    async def add_stream(self, stream: Stream) -> None: ...

    @abstractmethod
    async def remove_stream(self, stream_id: str) -> Stream | None: ...

    @abstractmethod
    async def get_stream(self, stream_id: str) -> Stream | None: ...

    @abstractmethod
    async def streams(self, room_id: str) -> list[Stream]: ...

    @abstractmethod
    async def all_streams(self) -> list[Stream]:
        """Every stream of every room, also of rooms nobody is in (a camera's)."""

    # -- named records: small shared state of the features built on rooms
    # (presence, alerts, calls, snapshots ...), grouped by `kind`. A `ttl`
    # lets a record expire unless rewritten in time.

    @abstractmethod
    async def put_record(self, kind: str, key: str, record: Record, ttl: float | None = None) -> None: ...

    @abstractmethod
    async def claim_record(self, kind: str, key: str, record: Record, ttl: float | None = None) -> bool:
        """Store the record only if the key is free; True if this call stored
        it. Across hub processes exactly one of racing claims wins."""

    @abstractmethod
    async def get_record(self, kind: str, key: str) -> Record | None: ...

    @abstractmethod
    async def delete_record(self, kind: str, key: str) -> Record | None:
        """Remove and return the record (None if it was not there)."""

    @abstractmethod
    async def records(self, kind: str) -> dict[str, Record]:
        """Every live record of a kind, by key."""

    @abstractmethod
    async def emit(self, event: Event) -> None:
        """Deliver an event to every listener on every hub process."""

    def listen(
        self, accept: Callable[[Event], bool] | None = None, bound: int = LISTENER_QUEUE
    ) -> asyncio.Queue[Event | None]:
        """A queue of every event, or of those `accept` lets in; None means
        the subscription was dropped. Only accepted events count towards the
        `bound`, so a listener pays for its own events, not for everyone's."""
        queue: asyncio.Queue[Event | None] = asyncio.Queue(bound)
        self._listeners[queue] = accept
        return queue

    def unlisten(self, queue: asyncio.Queue[Event | None]) -> None:
        self._listeners.pop(queue, None)

    def tap(self, tap: Tap) -> None:
        """Hand every event to `tap.deliver` as it is delivered: one index
        routing events to thousands of sockets costs one call per event,
        not one filter per socket."""
        self._taps.append(tap)

    def untap(self, tap: Tap) -> None:
        with contextlib.suppress(ValueError):
            self._taps.remove(tap)

    def _deliver(self, event: Event) -> None:
        for queue, accept in tuple(self._listeners.items()):
            if accept is not None and not self._accepts(accept, event):
                continue
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                log.warning("dropping an event listener that fell %d events behind", queue.maxsize)
                self._drop(queue)
        for tap in tuple(self._taps):
            try:
                tap.deliver(event)
            except Exception:  # one broken tap must not stop the event reaching the others
                log.exception("an event tap failed on %r", event.get("type"))

    @staticmethod
    def _accepts(accept: Callable[[Event], bool], event: Event) -> bool:
        # A filter runs in the emitter's call: its failure must not stop the
        # event reaching the other listeners, so the listener gets it to judge.
        try:
            return accept(event)
        except Exception:
            log.exception("event filter failed on %r; delivering the event", event.get("type"))
            return True

    def _drop(self, queue: asyncio.Queue[Event | None]) -> None:
        self._listeners.pop(queue, None)
        with contextlib.suppress(asyncio.QueueEmpty):
            while True:
                queue.get_nowait()
        queue.put_nowait(None)


class MemoryLiveState(LiveState):
    def __init__(self, node_id: str) -> None:
        super().__init__()
        self.node_id = node_id
        self._rooms: dict[str, Room] = {}
        self._participants: dict[str, dict[str, Participant]] = {}
        self._streams: dict[str, Stream] = {}
        self._records: dict[str, dict[str, tuple[Record, float | None]]] = {}
        self._expiring: dict[str, set[str]] = {}  # kind -> keys written with a ttl

    async def start(self) -> None:
        """Nothing to connect to."""

    async def live_nodes(self) -> set[str]:
        return {self.node_id}

    async def ask(self, node: str, act: str, args: dict[str, Any], timeout: float = ASK_SECONDS) -> dict[str, Any]:
        if node != self.node_id:
            raise NodeUnreachable(f"hub process {node} is not this one, and in-memory live state knows no other")
        return await self._do(act, args)

    async def check(self) -> None:
        """In-process state is always there."""

    async def put_room(self, room: Room) -> None:
        self._rooms[room["id"]] = room

    async def get_room(self, room_id: str) -> Room | None:
        return self._rooms.get(room_id)

    async def rooms(self) -> list[Room]:
        return list(self._rooms.values())

    async def delete_room(self, room_id: str) -> Room | None:
        return self._rooms.pop(room_id, None)

    async def add_participant(self, room_id: str, participant: Participant) -> None:
        self._participants.setdefault(room_id, {})[participant["id"]] = participant

    async def replace_participant(self, room_id: str, participant: Participant) -> bool:
        room = self._participants.get(room_id, {})
        if participant["id"] not in room:
            return False
        room[participant["id"]] = participant
        return True

    async def remove_participant(self, room_id: str, participant_id: str) -> bool:
        room = self._participants.get(room_id, {})
        removed = room.pop(participant_id, None) is not None
        if not room:
            self._participants.pop(room_id, None)
        return removed

    async def participants(self, room_id: str) -> list[Participant]:
        return list(self._participants.get(room_id, {}).values())

    async def active_rooms(self) -> dict[str, int]:
        return {room_id: len(p) for room_id, p in self._participants.items()}

    async def add_stream(self, stream: Stream) -> None:
        self._streams[stream["id"]] = stream

    async def remove_stream(self, stream_id: str) -> Stream | None:
        return self._streams.pop(stream_id, None)

    async def get_stream(self, stream_id: str) -> Stream | None:
        return self._streams.get(stream_id)

    async def streams(self, room_id: str) -> list[Stream]:
        return [s for s in self._streams.values() if s["room_id"] == room_id]

    async def all_streams(self) -> list[Stream]:
        # Every stream, also of a room nobody is in (a camera's stream has no participant).
        return list(self._streams.values())

    def _live(self, kind: str) -> dict[str, tuple[Record, float | None]]:
        table = self._records.setdefault(kind, {})
        # Only keys written with a ttl are looked at: a kind of 5,000 lasting
        # records (presence) costs nothing per write.
        expiring = self._expiring.setdefault(kind, set())
        now = time.monotonic()
        for key in [k for k in expiring if k not in table or _expired(table[k][1], now)]:
            table.pop(key, None)
            expiring.discard(key)
        return table

    async def put_record(self, kind: str, key: str, record: Record, ttl: float | None = None) -> None:
        self._live(kind)[key] = (record, None if ttl is None else time.monotonic() + ttl)
        if ttl is None:
            self._expiring[kind].discard(key)
        else:
            self._expiring[kind].add(key)

    async def claim_record(self, kind: str, key: str, record: Record, ttl: float | None = None) -> bool:
        if key in self._live(kind):
            return False
        await self.put_record(kind, key, record, ttl)
        return True

    async def get_record(self, kind: str, key: str) -> Record | None:
        found = self._live(kind).get(key)
        return found[0] if found else None

    async def delete_record(self, kind: str, key: str) -> Record | None:
        found = self._live(kind).pop(key, None)
        return found[0] if found else None

    async def records(self, kind: str) -> dict[str, Record]:
        return {key: record for key, (record, _) in self._live(kind).items()}

    async def emit(self, event: Event) -> None:
        self._deliver(event)


REDIS_DOWN = (aioredis.ConnectionError, aioredis.TimeoutError, OSError)

P = ParamSpec("P")
R = TypeVar("R")
S = TypeVar("S", bound="RedisLiveState")


def _shared(method: Callable[Concatenate[S, P], Awaitable[R]]) -> Callable[Concatenate[S, P], Awaitable[R]]:
    """A Redis call whose connection failure becomes `Unavailable` and marks
    shared live state down (the heartbeat brings it back)."""

    @functools.wraps(method)
    async def call(self: S, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await method(self, *args, **kwargs)
        except REDIS_DOWN as exc:
            self._lost(exc)
            # The cause (an address, an errno) is logged once by _lost, not handed to clients.
            raise Unavailable("shared live state (redis) is unreachable") from exc

    return call


class RedisLiveState(LiveState):
    """Keys: hub:rooms (hash), hub:participants:<room> (hash), hub:active
    (set of rooms with participants), hub:streams (hash), hub:node:<id>
    (expiring heartbeat of each running process), hub:rec:<kind>:<key>
    (named records) indexed by the set hub:rec:<kind>, channel hub:events;
    acts asked of a process on channel hub:acts:<id>, each answered by
    RPUSH to its own short-lived list hub:reply:<random>."""

    CHANNEL = "hub:events"
    #: Seconds an unread answer to an act stays in Redis (its asker gave up).
    REPLY_TTL = 30

    def __init__(self, url: str, node_id: str, node_ttl: float) -> None:
        super().__init__()
        # One retry without delay: a pooled connection found dead after a Redis
        # restart is replaced at once; a Redis that is down fails fast (a 503)
        # instead of holding the request through redis-py's default backoff.
        retry = Retry(NoBackoff(), 1)
        self._redis = aioredis.from_url(
            url, decode_responses=True, retry=retry, socket_connect_timeout=2, socket_timeout=5
        )
        # Pub/sub blocks reading for as long as no event comes: no read timeout on its connection.
        self._pubsub_redis = aioredis.from_url(url, decode_responses=True, retry=retry, socket_connect_timeout=2)
        self.node_id = node_id
        self._node_key = f"hub:node:{node_id}"
        self._node_ttl = node_ttl
        self._tasks: list[asyncio.Task[None]] = []
        self._subscribed = asyncio.Event()
        self._up = True
        #: This process's run, as the value of its heartbeat key (for whoever inspects Redis).
        self._epoch = secrets.token_hex(4)
        self._acts_channel = f"hub:acts:{node_id}"
        #: Acts being done for other processes (kept referenced until done).
        self._doing: set[asyncio.Task[None]] = set()

    @property
    def available(self) -> bool:
        return self._up

    async def start(self) -> None:
        await self._beat()
        self._tasks = [asyncio.create_task(self._listen()), asyncio.create_task(self._heartbeat())]
        await self._subscribed.wait()

    async def close(self) -> None:
        await cancel_and_wait(*self._tasks, *self._doing)
        with contextlib.suppress(aioredis.RedisError, OSError):
            await self._redis.delete(self._node_key)
        await self._redis.aclose()
        await self._pubsub_redis.aclose()
        await super().close()

    def _lost(self, exc: BaseException) -> None:
        """Redis stopped answering: tell this process's listeners once."""
        if self._up:
            self._up = False
            log.warning("shared live state (redis) unreachable: %s", exc)
            self._deliver({"type": DEGRADED, "reason": "shared live state unreachable"})

    async def _beat(self) -> bool:
        """Renew this process's heartbeat key; True if it was missing (Redis
        restarted empty, or the others swept this process as dead)."""
        previous = await self._redis.set(self._node_key, self._epoch, px=int(self._node_ttl * 1000), get=True)
        return previous is None

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self._node_ttl / 3 if self._up else min(PROBE_SECONDS, self._node_ttl / 3))
            try:
                vanished = await self._beat()
            except REDIS_DOWN as exc:
                self._lost(exc)
                continue
            if vanished or not self._up:
                await self._restore("its records were gone" if vanished else "it answers again")

    async def _restore(self, why: str) -> None:
        """Write back what this process hosts, once its event channel is
        subscribed again: a listener told `restored` then reads a picture that
        every later change reaches it after."""
        try:
            await asyncio.wait_for(self._subscribed.wait(), self._node_ttl)
        except TimeoutError:
            return  # the next beat tries again
        log.info("shared live state is back (%s): re-registering what this process hosts", why)
        for restore in self.restorers:
            try:
                await restore()
            except Unavailable as exc:
                self._lost(exc)
                return
            except Exception:
                log.exception("re-registering with %r failed", restore)
        if not self._up:
            self._up = True
            self._deliver({"type": RESTORED})

    async def check(self) -> None:
        await self._ping()

    @_shared
    async def _ping(self) -> None:
        await self._redis.ping()

    @_shared
    async def live_nodes(self) -> set[str]:
        return {key.removeprefix("hub:node:") async for key in self._redis.scan_iter("hub:node:*")}

    async def _listen(self) -> None:
        """Relay the event channel to local listeners, resubscribing after
        a lost connection (events published meanwhile are lost to this node;
        the `restored` notice tells listeners to read the picture again)."""
        delay = 0.25
        while True:
            try:
                async with self._pubsub_redis.pubsub() as pubsub:
                    await pubsub.subscribe(self.CHANNEL, self._acts_channel)
                    self._subscribed.set()
                    delay = 0.25
                    async for message in pubsub.listen():
                        if message["type"] != "message":
                            continue
                        if message["channel"] == self._acts_channel:
                            # Off the event path: an act may take seconds (a recording's last segment).
                            task = asyncio.create_task(self._answer(json.loads(message["data"])))
                            self._doing.add(task)
                            task.add_done_callback(self._doing.discard)
                        else:
                            self._deliver(json.loads(message["data"]))
            except (*REDIS_DOWN, aioredis.RedisError) as exc:
                self._subscribed.clear()
                self._lost(exc)
                log.warning("redis event channel lost (%s); retrying in %.2f s", exc, delay)
                await asyncio.sleep(delay)
                # Capped low: after an outage, re-registration waits for this subscription.
                delay = min(delay * 2, PROBE_SECONDS)

    @_shared
    async def put_room(self, room: Room) -> None:
        await self._redis.hset("hub:rooms", room["id"], json.dumps(room))

    @_shared
    async def get_room(self, room_id: str) -> Room | None:
        raw = await self._redis.hget("hub:rooms", room_id)
        return json.loads(raw) if raw else None

    @_shared
    async def rooms(self) -> list[Room]:
        return [json.loads(v) for v in (await self._redis.hgetall("hub:rooms")).values()]

    @_shared
    async def delete_room(self, room_id: str) -> Room | None:
        return await self._pop("hub:rooms", room_id)  # type: ignore[return-value]

    @_shared
    async def add_participant(self, room_id: str, participant: Participant) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(f"hub:participants:{room_id}", participant["id"], json.dumps(participant))
            pipe.sadd("hub:active", room_id)
            await pipe.execute()

    # HSET only if the field exists, atomically (Redis has no HSETXX).
    _REPLACE = (
        "if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then "
        "redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) return 1 end return 0"
    )

    @_shared
    async def replace_participant(self, room_id: str, participant: Participant) -> bool:
        key = f"hub:participants:{room_id}"
        return bool(await self._redis.eval(self._REPLACE, 1, key, participant["id"], json.dumps(participant)))

    @_shared
    async def remove_participant(self, room_id: str, participant_id: str) -> bool:
        key = f"hub:participants:{room_id}"
        removed = bool(await self._redis.hdel(key, participant_id))
        if not await self._redis.hlen(key):
            await self._redis.srem("hub:active", room_id)
        return removed

    @_shared
    async def participants(self, room_id: str) -> list[Participant]:
        return [json.loads(v) for v in (await self._redis.hgetall(f"hub:participants:{room_id}")).values()]

    @_shared
    async def active_rooms(self) -> dict[str, int]:
        rooms = sorted(await self._redis.smembers("hub:active"))
        async with self._redis.pipeline(transaction=False) as pipe:
            for room_id in rooms:
                pipe.hlen(f"hub:participants:{room_id}")
            counts = await pipe.execute()
        return {room_id: n for room_id, n in zip(rooms, counts, strict=True) if n}

    @_shared
    async def add_stream(self, stream: Stream) -> None:
        await self._redis.hset("hub:streams", stream["id"], json.dumps(stream))

    @_shared
    async def remove_stream(self, stream_id: str) -> Stream | None:
        return await self._pop("hub:streams", stream_id)  # type: ignore[return-value]

    async def _pop(self, name: str, key: str) -> Record | None:
        """Remove a hash field and return its record, in one transaction: of
        two processes removing it at once, exactly one gets it."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hget(name, key)
            pipe.hdel(name, key)
            raw, deleted = await pipe.execute()
        return json.loads(raw) if raw and deleted else None

    @_shared
    async def get_stream(self, stream_id: str) -> Stream | None:
        raw = await self._redis.hget("hub:streams", stream_id)
        return json.loads(raw) if raw else None

    @_shared
    async def streams(self, room_id: str) -> list[Stream]:
        return [s for s in await self.all_streams() if s["room_id"] == room_id]

    @_shared
    async def all_streams(self) -> list[Stream]:
        # One read for the whole directory (the console asks for every branch's streams).
        return [json.loads(v) for v in (await self._redis.hgetall("hub:streams")).values()]

    @_shared
    async def put_record(self, kind: str, key: str, record: Record, ttl: float | None = None) -> None:
        await self._set_record(kind, key, record, ttl, only_if_absent=False)

    @_shared
    async def claim_record(self, kind: str, key: str, record: Record, ttl: float | None = None) -> bool:
        return await self._set_record(kind, key, record, ttl, only_if_absent=True)

    async def _set_record(self, kind: str, key: str, record: Record, ttl: float | None, only_if_absent: bool) -> bool:
        px = None if ttl is None else max(1, int(ttl * 1000))
        stored = await self._redis.set(f"hub:rec:{kind}:{key}", json.dumps(record), px=px, nx=only_if_absent)
        if stored:
            await self._redis.sadd(f"hub:rec:{kind}", key)
        return bool(stored)

    @_shared
    async def get_record(self, kind: str, key: str) -> Record | None:
        raw = await self._redis.get(f"hub:rec:{kind}:{key}")
        return json.loads(raw) if raw else None

    @_shared
    async def delete_record(self, kind: str, key: str) -> Record | None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.getdel(f"hub:rec:{kind}:{key}")
            pipe.srem(f"hub:rec:{kind}", key)
            raw, _ = await pipe.execute()
        return json.loads(raw) if raw else None

    @_shared
    async def records(self, kind: str) -> dict[str, Record]:
        keys = sorted(await self._redis.smembers(f"hub:rec:{kind}"))
        if not keys:
            return {}
        values = await self._redis.mget([f"hub:rec:{kind}:{key}" for key in keys])
        if expired := [key for key, raw in zip(keys, values, strict=True) if raw is None]:
            await self._redis.srem(f"hub:rec:{kind}", *expired)
        return {key: json.loads(raw) for key, raw in zip(keys, values, strict=True) if raw is not None}

    @_shared
    async def emit(self, event: Event) -> None:
        await self._redis.publish(self.CHANNEL, json.dumps(event))

    async def ask(self, node: str, act: str, args: dict[str, Any], timeout: float = ASK_SECONDS) -> dict[str, Any]:
        if node == self.node_id:
            return await self._do(act, args)
        reply = await self._request(node, act, args, timeout)
        if "error" in reply:
            raise ActFailed(reply["error"], reply["detail"])
        return dict(reply["result"])

    @_shared
    async def _request(self, node: str, act: str, args: dict[str, Any], timeout: float) -> dict[str, Any]:
        reply_key = f"hub:reply:{secrets.token_hex(8)}"
        request = json.dumps({"act": act, "args": args, "reply": reply_key})
        # PUBLISH counts the subscribers: none means the process is gone (its
        # subscription ends with its connection), so the asker knows at once.
        if not await self._redis.publish(f"hub:acts:{node}", request):
            raise NodeUnreachable(f"hub process {node} is not running (or cut off from shared live state)")
        answered = await self._redis.blpop([reply_key], timeout=timeout)
        if answered is None:
            raise NodeUnreachable(f"hub process {node} did not do {act!r} within {timeout:g} s")
        return dict(json.loads(answered[1]))

    async def _answer(self, request: dict[str, Any]) -> None:
        try:
            reply: dict[str, Any] = {"result": await self._do(str(request["act"]), dict(request["args"]))}
        except ActFailed as exc:
            reply = {"error": exc.kind, "detail": exc.detail}
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.rpush(request["reply"], json.dumps(reply))
                pipe.expire(request["reply"], self.REPLY_TTL)
                await pipe.execute()
        except REDIS_DOWN as exc:  # the asker times out: its 503 says why
            self._lost(exc)


def _expired(expires: float | None, now: float) -> bool:
    return expires is not None and expires <= now


def open_live_state(redis_url: str | None, node_id: str, node_ttl: float) -> LiveState:
    return RedisLiveState(redis_url, node_id, node_ttl) if redis_url else MemoryLiveState(node_id)


class EventFollower:
    """Hands every live event, in order, to `handle` in one task until
    stopped: for features that keep durable records in step with the rooms.
    An event that fails is logged and skipped; when the subscription is
    dropped for falling behind, it listens again (the events in between
    are lost, and logged as such) and awaits `resumed`, if given, to catch
    up with what is live."""

    def __init__(
        self,
        state: LiveState,
        handle: Callable[[Event], Awaitable[None]],
        name: str,
        resumed: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._state = state
        self._handle = handle
        self._name = name
        self._resumed = resumed
        self._queue: asyncio.Queue[Event | None] | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._queue = self._state.listen()
        self._task = asyncio.create_task(self._run(self._queue))

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        if self._queue is not None:
            self._state.unlisten(self._queue)

    async def _run(self, queue: asyncio.Queue[Event | None]) -> None:
        while True:
            event = await queue.get()
            if event is None:
                log.warning("%s fell behind the events and lost some; following again", self._name)
                queue = self._queue = self._state.listen()
                if self._resumed is not None:
                    try:
                        await self._resumed()
                    except Exception:
                        log.exception("%s could not catch up", self._name)
                continue
            try:
                await self._handle(event)
            except Exception:
                log.exception("%s could not handle %s", self._name, event.get("type"))
