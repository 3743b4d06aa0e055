"""The typed records that cross the hub's interfaces: rooms, participants,
streams and events.

They are TypedDicts, not classes: the same values are stored in live state
(JSON in Redis), sent on the event socket and answered by the REST API, so
a record is a plain JSON object everywhere and its type says which keys it
has.
"""

from __future__ import annotations

from typing import Any, NotRequired, Required, TypedDict


class Room(TypedDict):
    id: str
    site_id: str
    #: standing, mediation, training, call or conference (hub.core.rooms.ROOM_KINDS).
    kind: str
    title: str
    #: Opened rooms only; a standing room (`site-<id>`) is derived from the site tree.
    created_by: NotRequired[str]
    created_at: NotRequired[float]
    #: Other sites whose people may enter, each with everything below it,
    #: and departments (each itself) invited or referred to the room's case.
    admit: NotRequired[list[str]]
    #: Kept by the feature that opened the room.
    case_id: NotRequired[str]
    call_id: NotRequired[str]
    trainer: NotRequired[str]
    branch: NotRequired[str]
    ended_at: NotRequired[float]


class Participant(TypedDict):
    id: str
    room_id: str
    user: str
    name: str
    role: str
    site_id: str
    #: How they joined: "ws" (the event socket) or "whip" (a publisher without a socket).
    via: str
    #: The hub process that holds their connection.
    node: str
    joined_at: float
    #: Live state a participant changes (mute, raised hand) or a trainer gives (speaker).
    audio: NotRequired[bool]
    video: NotRequired[bool]
    hand: NotRequired[bool]
    speaker: NotRequired[bool]
    #: A department user's department (id, site_id, kind, name, name_en, room_id).
    department: NotRequired[dict[str, str]]


class Stream(TypedDict):
    id: str
    room_id: str
    #: camera or screen (published over WHIP), ipcam (a camera the hub pulls).
    kind: str
    tracks: list[str]
    #: Track kind -> MIME type.
    codecs: dict[str, str]
    participant_id: str | None
    user: str
    name: str
    site_id: str
    #: The hub process hosting its media, and where to reach it.
    node: str
    node_url: str
    created_at: float
    camera_id: NotRequired[str]
    transcoded: NotRequired[bool]


class Audience(TypedDict, total=False):
    """Who an addressed event is for (hub.core.access.addressed_to); all keys must hold."""

    covering: str
    sites: list[str]
    within: str
    roles: list[str]
    users: list[str]


class Event(TypedDict, total=False):
    """One message on the event bus. `type` names it; an event of a room
    carries `room_id` and reaches those who may enter it; an addressed event
    carries `to` and reaches its audience; the other keys depend on the type
    (docs/protocol.md lists them; an invitation's "from", a keyword here, too)."""

    type: Required[str]
    room_id: str
    to: Audience
    room: Room
    participant: Participant
    participant_id: str
    stream: Stream
    stream_id: str
    site_id: str
    at: float
    #: chat: the sender's name and text.
    name: str
    text: str
    #: presence: whether the site has someone connected.
    online: bool
    # The records of the workflows, as their modules define them.
    call: dict[str, Any]
    answered_by: str
    case: dict[str, Any]
    alert: dict[str, Any]
    camera: dict[str, Any]
    recording: dict[str, Any]
    training: dict[str, Any]


class RoomDetail(Room):
    """A room with who is in it and what they publish (GET /api/rooms/{id})."""

    participants: list[Participant]
    streams: list[Stream]


class RoomSummary(Room):
    """A room in a list, with how many are in it now."""

    participant_count: int
