"""What goes through the REST doors: a pydantic model for every request body,
query and response. signaling/doors.py validates requests with them before a
handler changes anything; signaling/openapi.py describes the API from them.

Request models refuse unknown fields (a misspelt field is an error, not a
silent default). Response models describe what the hub always sends and
allow the extra fields a feature keeps on its records (`extra="allow"`).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, model_validator
from pydantic_core import PydanticCustomError

from hub.core.rooms import STREAM_KINDS
from hub.core.sites import DEPARTMENT_KINDS, LEVELS
from hub.workflows.cameras import STREAM_KIND as CAMERA_STREAM_KIND
from hub.workflows.cases import ASKS, DECISIONS, DISPUTE_TYPES, STATUSES

# -- shared types ----------------------------------------------------------------

#: One line shown to people: no control characters (C0, DEL, C1). Lone
#: surrogates never get this far: pydantic refuses them as invalid Unicode.
LINE = r"^[^\x00-\x1f\x7f-\x9f]*$"
#: Running text (a summary, a note): tabs and line breaks allowed.
PROSE = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]*$"


def text(max_length: int, *, min_length: int = 0, multiline: bool = False) -> Any:
    """A string shown to people, of at most `max_length` characters, stripped."""
    return Annotated[
        str,
        StringConstraints(
            strip_whitespace=True, min_length=min_length, max_length=max_length, pattern=PROSE if multiline else LINE
        ),
    ]


#: A title or a name; the shared type for every one-line string people see.
Text = text(200)
#: An id the hub or an administrator made: site, room, stream, case, camera ...
Ident = Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._-]+$")]


class Body(BaseModel):
    """A request body: unknown fields are refused, NaN and infinities too, and
    no value is coerced (`"yes"` is not a boolean, `"1800"` not a number)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)


class Query(BaseModel):
    """Query parameters. Unknown ones are ignored: `token` and cache-busting
    parameters ride along on many requests."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class Out(BaseModel):
    """A response body; features keep extra fields on records."""

    model_config = ConfigDict(extra="allow")


# -- moments in query strings --------------------------------------------------------

#: The moments a query may name: those datetime can hold (years 1 to 9999),
#: so every one can be formatted back (1e20 seconds cannot, nor NaN).
FIRST_MOMENT = datetime(1, 1, 1, tzinfo=UTC).timestamp()
LAST_MOMENT = datetime(9999, 12, 31, tzinfo=UTC).timestamp()
#: What the document promises is accepted: epoch seconds, or a date with an
#: optional time and offset (a narrower grammar than datetime.fromisoformat's).
MOMENT = (
    r"^([0-9]{1,11}(\.[0-9]{1,6})?|(19[7-9][0-9]|2[0-9]{3})-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])"
    r"(T([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9](\.[0-9]{1,6})?)?(Z|[+-](0[0-9]|1[0-3]):[0-5][0-9])?)?)$"
)


def _moment(value: object) -> float:
    """Seconds since the epoch, or an ISO 8601 date/time (UTC unless it says)."""
    if not isinstance(value, str):
        raise ValueError("expected an ISO 8601 date or epoch seconds")
    try:
        seconds = float(value)
    except ValueError:
        try:
            moment = datetime.fromisoformat(value)
        except ValueError as exc:
            raise ValueError("expected an ISO 8601 date or epoch seconds") from exc
        seconds = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
    if not math.isfinite(seconds) or not FIRST_MOMENT <= seconds <= LAST_MOMENT:
        raise ValueError("expected a moment between the years 1 and 9999")
    return seconds


Moment = Annotated[
    float,
    BeforeValidator(_moment),
    Field(
        json_schema_extra={
            "type": "string",
            "pattern": MOMENT,
            "description": "epoch seconds, or an ISO 8601 date/time (UTC if no offset)",
        }
    ),
]


def _empty_is_none(value: object) -> object:
    return None if value == "" else value


def optional(kind: Any) -> Any:
    """A query parameter that may be missing or empty (`?site=`)."""
    return Annotated[kind | None, BeforeValidator(_empty_is_none)]


# -- request bodies ----------------------------------------------------------------


class NewRoom(Body):
    site_id: Ident
    #: Trainings and calls open through their own routes, which keep on the
    #: room what their features need (trainer, branch, the call answered); a
    #: conference opened here is one without invitations (POST /api/conferences
    #: invites sites).
    kind: Literal["mediation", "conference"]
    title: Text = ""


#: The lifetimes an invite link may have, in seconds: a session, an afternoon, a day.
INVITE_TTLS = (1800, 7200, 86400)


def _no_float(value: object) -> object:
    """pydantic matches an int Literal by equality even when strict (1800.0 == 1800)."""
    if type(value) is not int:
        raise PydanticCustomError("literal_error", "Input should be {expected}", {"expected": "1800, 7200 or 86400"})
    return value


class NewInvite(Body):
    ttl: Annotated[Literal[INVITE_TTLS], BeforeValidator(_no_float)]  # type: ignore[valid-type]


class RecordingSwitch(Body):
    on: bool


class NewCall(Body):
    note: text(200, multiline=True) = ""  # type: ignore[valid-type]


class NewConference(Body):
    title: text(100) = ""  # type: ignore[valid-type]
    sites: list[Ident] = Field(max_length=500)


class NewTraining(Body):
    title: Text
    branch: Ident


class Speaker(Body):
    participant_id: Ident


class NewCamera(Body):
    site_id: Ident
    name: text(100, min_length=1)  # type: ignore[valid-type]
    url: Annotated[str, StringConstraints(min_length=1, max_length=2000, pattern=r"^[^\x00-\x20\x7f-\x9f]+$")]
    id: Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")] | None = None


class Party(Body):
    name: text(64, min_length=1)  # type: ignore[valid-type]
    role: Literal["applicant", "respondent", "other"] = "other"
    phone: Annotated[str, StringConstraints(strip_whitespace=True, max_length=32, pattern=r"^[0-9+\-() ]*$")] = ""


class NewCase(Body):
    site_id: Ident | None = None
    title: text(200, min_length=1)  # type: ignore[valid-type]
    dispute_type: Literal[DISPUTE_TYPES]  # type: ignore[valid-type]
    parties: list[Party] = Field(min_length=1, max_length=20)
    summary: text(4000, multiline=True) = ""  # type: ignore[valid-type]


#: The case version a change was decided on (the `version` of the case as read).
CaseVersion = Annotated[int, Field(ge=1, le=2**53)]


class CaseChange(Body):
    status: Literal[STATUSES] | None = None  # type: ignore[valid-type]
    outcome: text(2000, multiline=True) | None = None  # type: ignore[valid-type]
    version: CaseVersion | None = None


class Escalation(Body):
    note: text(1000, multiline=True) = ""  # type: ignore[valid-type]
    version: CaseVersion | None = None


class NewReferral(Body):
    department_id: Ident
    ask: Literal[ASKS]  # type: ignore[valid-type]
    note: text(1000, multiline=True) = ""  # type: ignore[valid-type]
    version: CaseVersion | None = None


class ReferralAnswer(Body):
    decision: Literal[DECISIONS]  # type: ignore[valid-type]
    outcome: text(2000, multiline=True) = ""  # type: ignore[valid-type]
    document_no: text(64) = Field(default="", description="e.g. the number of a judicial confirmation ruling")  # type: ignore[valid-type]


# -- query parameters ----------------------------------------------------------------


class BranchQuery(Query):
    site: optional(Ident) = None  # type: ignore[valid-type]


class ConsoleQuery(BranchQuery):
    #: "1": the compact form a console keeps by deltas (docs/api.md).
    compact: optional(Literal["0", "1"]) = None  # type: ignore[valid-type]


class RecordingSearch(Query):
    site: optional(Ident) = None  # type: ignore[valid-type]
    from_: optional(Moment) = Field(default=None, alias="from")  # type: ignore[valid-type]
    to: optional(Moment) = None  # type: ignore[valid-type]
    kind: optional(Literal["standing", "mediation", "training", "call", "conference"]) = None  # type: ignore[valid-type]
    q: optional(text(200)) = None  # type: ignore[valid-type]


class Period(Query):
    site: optional(Ident) = None  # type: ignore[valid-type]
    from_: optional(Moment) = Field(default=None, alias="from")  # type: ignore[valid-type]
    to: optional(Moment) = None  # type: ignore[valid-type]


class AuditQuery(Query):
    site: optional(Ident) = None  # type: ignore[valid-type]
    recording: optional(Ident) = None  # type: ignore[valid-type]
    stream: optional(Ident) = None  # type: ignore[valid-type]


class CaseSearch(Query):
    site: optional(Ident) = None  # type: ignore[valid-type]
    status: optional(Literal[STATUSES]) = None  # type: ignore[valid-type]
    queue: optional(Literal["mine"]) = None  # type: ignore[valid-type]


class TrainingList(Query):
    all: optional(Literal["0", "1", "true", "false"]) = None  # type: ignore[valid-type]


class AttendanceQuery(Query):
    format: optional(Literal["json", "csv"]) = None  # type: ignore[valid-type]


class PublishQuery(Query):
    kind: optional(Literal[STREAM_KINDS]) = None  # type: ignore[valid-type]
    participant: optional(Ident) = None  # type: ignore[valid-type]


class ViewQuery(Query):
    #: "1": a 307 to the hub process hosting the stream, instead of this one pulling it (a relay).
    redirect: optional(Literal["1"]) = None  # type: ignore[valid-type]


# -- responses ---------------------------------------------------------------------


class Problem(BaseModel):
    """Problem details (RFC 9457)."""

    type: str
    title: str
    status: int
    detail: str = ""
    instance: str = ""


class Health(Out):
    status: Literal["ok"]
    node: str
    live_state: Literal["up", "down"] = Field(
        description="down while shared live state (Redis) is unreachable or this process re-registers"
    )
    streams: int = Field(description="streams hosted by this process")
    subscriptions: int = Field(description="subscriptions served by this process")


class Ready(Out):
    status: Literal["ready"]
    node: str


class Department(Out):
    id: str
    site_id: str = Field(description="the site it sits beside")
    kind: Literal[DEPARTMENT_KINDS]  # type: ignore[valid-type]
    name: str
    name_en: str
    room_id: str = Field(description="the department's own standing room")


class Site(Out):
    id: str
    name: str
    level: Literal[LEVELS]  # type: ignore[valid-type]
    parent: str | None
    name_en: str
    room_id: str = Field(description="the site's standing room")
    departments: list[Department] = Field(default=[], description="the departments beside the site")


class SiteDetail(Site):
    children: list[str]


class Me(Out):
    user: str
    name: str
    role: str
    site: Site | None
    room: str | None = Field(description="the room the token is bound to")
    department: Department | None = Field(default=None, description="a department user's department")


class Room(Out):
    id: str
    site_id: str
    kind: Literal["standing", "mediation", "training", "call", "conference"]
    title: str
    admit: list[str] = Field(
        default=[],
        description="other sites whose people (and everyone below) may enter, and departments (each itself)",
    )


class ListedRoom(Room):
    participant_count: int


class Participant(Out):
    id: str
    room_id: str
    user: str
    name: str
    role: str
    site_id: str
    via: Literal["ws", "whip"]
    joined_at: float


class TileSize(Body):
    """The size a viewer renders a stream's video at, in device pixels; 0×0: hidden (no video)."""

    width: int = Field(ge=0, le=7680)
    height: int = Field(ge=0, le=4320)

    @model_validator(mode="after")
    def _both_or_neither(self) -> TileSize:
        if (self.width == 0) != (self.height == 0):
            raise PydanticCustomError("tile_size", "width and height are both 0 (hidden) or both positive")
        return self


class SimulcastLayer(Out):
    rid: str
    width: int = Field(description="pixels, from the layer's keyframes; 0 until known")
    height: int
    bitrate: int = Field(description="bits per second the publisher sends in this layer")


class LayerChoice(Out):
    """Which simulcast layer and temporal layers a subscription receives."""

    simulcast: bool = Field(description="false: the stream has one encoding, nothing to choose")
    layer: str | None = Field(default=None, description="the rid received now; null while hidden or starting")
    target: str | None = Field(default=None, description="the rid it switches to at that layer's next keyframe")
    layers: list[SimulcastLayer] = Field(default_factory=list, description="lowest first")
    estimate: int | None = Field(default=None, description="the viewer's estimate of its link (REMB), bits/s")
    switches: int = 0
    temporal: int | None = Field(
        default=None,
        description="the highest VP8 temporal layer (TID) received: 0 a quarter or half of the frame rate; "
        "null when the stream has no temporal layers",
    )


class Stream(Out):
    id: str = Field(description="use with POST /whep/{stream_id}")
    room_id: str
    kind: Literal[(*STREAM_KINDS, CAMERA_STREAM_KIND)]  # type: ignore[valid-type]
    tracks: list[Literal["audio", "video"]]
    codecs: dict[str, str]
    participant_id: str | None = Field(description="null for a camera the hub pulls")
    user: str
    name: str
    site_id: str
    node: str
    node_url: str


class RoomDetail(Room):
    participants: list[Participant]
    streams: list[Stream]


class IceServer(Out):
    """One entry of a WebRTC RTCConfiguration's iceServers, as the browser takes it."""

    urls: list[str]
    username: str
    credential: str


class IceServers(Out):
    ice_servers: list[IceServer] = Field(description="pass as RTCPeerConnection({iceServers}); empty: no TURN")
    expires_at: int | None = Field(description="Unix seconds after which the credentials are refused; ask again")


class Invite(Out):
    url: str
    token: str
    expires_at: int


class RecordingSummary(Out):
    id: str
    room_id: str
    site_id: str
    kind: str
    title: str
    started_at: float
    ended_at: float | None
    status: str
    node_url: str = Field(default="", description="the hub holding its files; any hub serves them")


class RecordingState(Out):
    room_id: str
    on: bool
    recording: RecordingSummary | None


class FoundRecording(RecordingSummary):
    site_name: str


class Manifest(Out):
    room_id: str
    site_id: str
    status: str
    ended_at: float | None
    streams: list[dict[str, Any]]


class Verdict(Out):
    id: str
    intact: bool
    segments: int
    changed: list[str]
    missing: list[str]
    chain_broken: bool
    unplayable: dict[str, str] = Field(description="segment -> why it does not open or decode")


class ExportJob(Out):
    state: Literal["queued", "running", "done", "failed"]
    progress: float
    error: str | None
    started_at: float | None
    finished_at: float | None


class AuditRow(Out):
    id: int
    at: float
    user: str
    role: str
    user_site: str = Field(description="the caller's home site")
    action: Literal["playback", "download", "export", "verify", "view", "snapshot"]
    recording_id: str = Field(description="a recording's rows; empty for a live stream's")
    stream_id: str = Field(description="a live stream's rows (view, snapshot); empty for a recording's")
    room_id: str
    site_id: str = Field(description="the site of the recording's or stream's room: whose auditors see the row")
    detail: str = Field(description="a file, a verdict, a WHEP session id, or 'N snapshots'")
    ended_at: float | None = Field(
        description="a view's end, a snapshot run's latest fetch; null while it lasts, or after a killed hub"
    )
    duration: float | None


class Caller(Out):
    user: str
    name: str


class Call(Out):
    id: str
    site_id: str
    site_name: str
    from_: Caller = Field(alias="from")
    at: float
    note: str
    state: Literal["ringing", "answered", "cancelled", "missed"]


class AnsweredCall(Out):
    call: Call
    room: Room


class CallConflict(Problem):
    call: dict[str, Any] = Field(description="the call as it ended; empty if it is gone")


class Present(Out):
    id: str
    user: str
    name: str
    site_id: str
    since: float


class RollcallSite(Out):
    site_id: str
    name: str
    name_en: str
    joined: bool
    since: float | None
    participants: list[Present]


class Rollcall(Out):
    room_id: str
    title: str
    sites: list[RollcallSite]


class Training(Out):
    room_id: str
    title: str
    site_id: str
    trainer: str
    trainer_name: str
    trainer_site: str
    started_at: float
    ended_at: float | None


class StartedTraining(Training):
    room: Room


class ListedTraining(Training):
    participant_count: int
    site: Site | None
    invited: bool


class AttendanceRow(Out):
    site_id: str
    site_name: str
    user: str
    name: str
    joined_at: float
    left_at: float | None
    minutes: float
    interrupted: bool


class Attendance(Out):
    training: Training
    attendance: list[AttendanceRow]


class CaseParty(Out):
    name: str
    role: str
    phone: str


class Case(Out):
    id: str
    site_id: str
    origin_site_id: str
    title: str
    dispute_type: str
    parties: list[CaseParty]
    summary: str
    status: Literal[STATUSES]  # type: ignore[valid-type]
    outcome: str
    created_by: str
    created_at: float
    updated_at: float
    version: int = Field(description="counts every change of the case; send it back to change only that version")
    departments: list[str] = Field(default=[], description="the departments it was referred to (they read it)")


class CaseConflict(Problem):
    case: dict[str, Any] | None = Field(
        default=None, description="the case as it is now, when the change was refused for being stale"
    )


class ListedCase(Case):
    sites: dict[str, Site]


class CaseActions(Out):
    statuses: list[str]
    session: bool
    escalate: bool
    refer: bool = False
    answer: list[str] = Field(default=[], description="referrals the caller's department has yet to answer")


class Referral(Out):
    id: str
    case_id: str
    department_id: str
    department_kind: Literal[DEPARTMENT_KINDS]  # type: ignore[valid-type]
    department: Department | None
    ask: Literal[ASKS]  # type: ignore[valid-type]
    note: str
    referred_by: str
    from_site: str
    referred_at: float
    decision: Literal[DECISIONS] | None  # type: ignore[valid-type]
    outcome: str
    document_no: str
    answered_by: str | None
    answered_at: float | None


class CaseDetail(ListedCase):
    history: list[dict[str, Any]]
    sessions: list[dict[str, Any]]
    actions: CaseActions
    recordings: list[dict[str, Any]]
    referrals: list[Referral] = []


class CaseSession(Out):
    room_id: str
    room: Room


class Stats(Out):
    site: str
    from_: float = Field(alias="from")
    to: float
    totals: dict[str, Any]
    by_status: dict[str, int]
    by_referral: list[dict[str, Any]] = Field(
        default=[], description="referrals by department kind: referrals, accepted, declined, pending"
    )


class Camera(Out):
    id: str
    site_id: str
    name: str
    url: str = Field(description="credentials redacted")
    status: str
    since: float | None
    error: str
    stream_id: str | None
    room_id: str


class ConsoleSite(Out):
    id: str
    online: bool
    in_session: bool
    rooms: list[dict[str, Any]]
    streams: list[dict[str, Any]]
    cameras: list[dict[str, Any]]
    rollup: dict[str, int]
    departments: list[dict[str, Any]] = Field(default=[], description="beside the site, each with `online`")


class ConsoleLiveSite(Out):
    """A row of the compact status: only what is live (connections, rooms with
    their participants' ids, streams, cameras, named alerts)."""

    id: str


class ConsoleStatus(Out):
    root: str
    at: float
    #: The event sequence number the status reflects, and the process that numbered it.
    seq: int
    node: str
    sites: list[ConsoleSite] | list[ConsoleLiveSite]
    compact: bool | None = None
    #: Compact: the branch's opened rooms, so that their events can be placed.
    opened: list[dict[str, Any]] | None = None


class BranchCounts(Out):
    """Counts over a site and everything below it (the status's rollup)."""

    sites: int
    sites_online: int
    sites_in_session: int
    villages: int
    villages_online: int
    rooms_in_session: int
    participants: int
    terminals: int
    streams: int
    cameras: int
    cameras_online: int
    cameras_offline: int
    cameras_alarm: int
    alerts: int


class BranchSite(Out):
    """A site of a branch load: named, how many children it has, its branch's
    counts, and its own live fields as a compact status row gives them
    (connections, rooms with participants' ids, streams, cameras, alerts),
    each left out when empty."""

    id: str
    name: str
    name_en: str
    level: str
    parent: str | None
    children: int
    counts: BranchCounts
    departments: list[dict[str, Any]] = Field(default=[], description="beside the site, each with `online`")


class ConsoleBranch(Out):
    """One branch of a big tree: the site and its children (docs/api.md)."""

    root: str
    at: float
    #: The event sequence number the counts reflect, and the process that numbered it.
    seq: int
    node: str
    site: BranchSite
    children: list[BranchSite]
    #: The opened rooms of these sites, so that their events can be placed.
    opened: list[dict[str, Any]]


class Snapshot(Out):
    stream_id: str
    site_id: str


class Alert(Out):
    stream_id: str
    site_id: str
    since: float
