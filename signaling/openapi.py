"""The OpenAPI 3 description of every HTTP route (tests check it is complete)."""

from __future__ import annotations

from typing import Any

_PROBLEM = {
    "description": "Problem details (RFC 9457)",
    "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
}
_ERRORS = {"401": _PROBLEM, "403": _PROBLEM, "404": _PROBLEM}
_SDP_BODY = {"required": True, "content": {"application/sdp": {"schema": {"type": "string"}}}}
_SDP_CREATED = {
    "description": "SDP answer; Location names the session to DELETE",
    "headers": {"Location": {"schema": {"type": "string"}}},
    "content": {"application/sdp": {"schema": {"type": "string"}}},
}
_SDP_ERRORS = _ERRORS | {"400": _PROBLEM, "413": _PROBLEM, "415": _PROBLEM}
#: Over a quota (sessions, rooms): Retry-After says when asking again may succeed.
_QUOTA = {
    "429": {
        "description": "Too Many Requests: over a quota (docs/operate.md#quotas-and-rate-limits)",
        "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}},
        "content": {"application/problem+json": {"schema": {"type": "object"}}},
    }
}


def _json(ref: str, description: str = "OK") -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}},
    }


def _param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Linked governance video hub",
            "version": "0.1.0",
            "description": "Every call except /healthz and /api/openapi.json needs "
            "'Authorization: Bearer <token>' (or ?token= where headers cannot be set).",
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "schemas": {
                "Problem": {
                    "type": "object",
                    "properties": {
                        "type": {"type": "string"},
                        "title": {"type": "string"},
                        "status": {"type": "integer"},
                        "detail": {"type": "string"},
                        "instance": {"type": "string"},
                    },
                },
                "Site": {
                    "type": "object",
                    "required": ["id", "name", "level", "parent", "room_id"],
                    "properties": {
                        "id": {"type": "string"},
                        "name": {"type": "string"},
                        "name_en": {"type": "string"},
                        "level": {"enum": ["province", "prefecture", "county", "township", "village"]},
                        "parent": {"type": ["string", "null"]},
                        "room_id": {"type": "string", "description": "the site's standing room"},
                        "children": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "Room": {
                    "type": "object",
                    "required": ["id", "site_id", "kind"],
                    "properties": {
                        "id": {"type": "string"},
                        "site_id": {"type": "string"},
                        "kind": {"enum": ["standing", "mediation", "training", "call", "conference"]},
                        "title": {"type": "string"},
                        "admit": {
                            "type": "array",
                            "items": {"type": "string"},
                            "description": "other sites whose people (and everyone below) may enter",
                        },
                        "participant_count": {"type": "integer"},
                        "participants": {"type": "array", "items": {"$ref": "#/components/schemas/Participant"}},
                        "streams": {"type": "array", "items": {"$ref": "#/components/schemas/Stream"}},
                    },
                },
                "Participant": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string"},
                        "room_id": {"type": "string"},
                        "user": {"type": "string"},
                        "name": {"type": "string"},
                        "role": {"type": "string"},
                        "site_id": {"type": "string"},
                        "via": {"enum": ["ws", "whip"]},
                        "joined_at": {"type": "number"},
                    },
                },
                "Stream": {
                    "type": "object",
                    "required": ["id", "kind", "room_id"],
                    "properties": {
                        "id": {"type": "string", "description": "use with POST /whep/{stream_id}"},
                        "kind": {"enum": ["camera", "screen"]},
                        "room_id": {"type": "string"},
                        "tracks": {"type": "array", "items": {"enum": ["audio", "video"]}},
                        "codecs": {"type": "object", "additionalProperties": {"type": "string"}},
                        "participant_id": {"type": "string"},
                        "user": {"type": "string"},
                        "name": {"type": "string"},
                        "site_id": {"type": "string"},
                        "node": {"type": "string"},
                        "node_url": {"type": "string"},
                    },
                },
            },
        },
        "security": [{"bearer": []}],
        "paths": {
            "/healthz": {
                "get": {
                    "summary": "Liveness of this hub process",
                    "security": [],
                    "responses": {"200": {"description": "OK"}},
                }
            },
            "/api/openapi.json": {
                "get": {"summary": "This document", "security": [], "responses": {"200": {"description": "OK"}}}
            },
            "/api/me": {
                "get": {
                    "summary": "The caller's identity and home site",
                    "responses": {"200": {"description": "OK"}, "401": _PROBLEM},
                }
            },
            "/api/sites": {
                "get": {
                    "summary": "Sites of the caller's jurisdiction, parents first",
                    "responses": {
                        "200": {
                            "description": "OK",
                            "content": {
                                "application/json": {
                                    "schema": {"type": "array", "items": {"$ref": "#/components/schemas/Site"}}
                                }
                            },
                        },
                        "401": _PROBLEM,
                    },
                }
            },
            "/api/sites/{site_id}": {
                "get": {
                    "summary": "One site with its standing room and children",
                    "parameters": [_param("site_id")],
                    "responses": {"200": _json("Site")} | _ERRORS,
                }
            },
            "/api/rooms": {
                "get": {
                    "summary": "Live or opened rooms in the caller's jurisdiction",
                    "responses": {
                        "200": {
                            "description": "OK",
                            "content": {
                                "application/json": {
                                    "schema": {"type": "array", "items": {"$ref": "#/components/schemas/Room"}}
                                }
                            },
                        },
                        "401": _PROBLEM,
                    },
                },
                "post": {
                    "summary": "Open a room at a site",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["site_id", "kind"],
                                    "properties": {
                                        "site_id": {"type": "string"},
                                        "kind": {"enum": ["mediation", "training", "call", "conference"]},
                                        "title": {"type": "string"},
                                    },
                                }
                            }
                        },
                    },
                    "responses": {"201": _json("Room", "Created"), "400": _PROBLEM} | _ERRORS | _QUOTA,
                },
            },
            "/api/rooms/{room_id}": {
                "get": {
                    "summary": "A room with its participants and streams",
                    "parameters": [_param("room_id")],
                    "responses": {"200": _json("Room")} | _ERRORS,
                },
                "delete": {
                    "summary": "Close an opened room (its opener, or an operator or admin over its site): "
                    "ends its streams, removes its participants, emits room-closed",
                    "parameters": [_param("room_id")],
                    "responses": {"200": _json("Room", "Closed: the room as it was"), "400": _PROBLEM} | _ERRORS,
                },
            },
            "/api/rooms/{room_id}/invites": {
                "post": {
                    "summary": "Create a guest invite link that opens this room only, until it expires",
                    "parameters": [_param("room_id")],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["ttl"],
                                    "additionalProperties": False,
                                    "properties": {"ttl": {"enum": [1800, 7200, 86400]}},
                                }
                            }
                        },
                    },
                    "responses": {
                        "201": {
                            "description": "Created: the link (relative to the hub), its guest token and expiry",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "properties": {
                                            "url": {"type": "string"},
                                            "token": {"type": "string"},
                                            "expires_at": {"type": "integer"},
                                        },
                                    }
                                }
                            },
                        },
                        "400": _PROBLEM,
                    }
                    | _ERRORS,
                }
            },
            "/api/rooms/{room_id}/sites": {
                "get": {
                    "summary": "The room's site and the sites above it, nearest first (those may be invited)",
                    "parameters": [_param("room_id")],
                    "responses": {
                        "200": {
                            "description": "OK",
                            "content": {
                                "application/json": {
                                    "schema": {"type": "array", "items": {"$ref": "#/components/schemas/Site"}}
                                }
                            },
                        }
                    }
                    | _ERRORS,
                }
            },
            "/api/streams/{stream_id}": {
                "get": {
                    "summary": "One live stream",
                    "parameters": [_param("stream_id")],
                    "responses": {"200": _json("Stream")} | _ERRORS,
                }
            },
            **_recording_paths(),
            **_console_paths(),
            **_dispatch_paths(),
            **_training_paths(),
            **_case_paths(),
            **_monitoring_paths(),
            **_camera_paths(),
            "/whip/{room_id}": {
                "post": {
                    "summary": "Publish a stream into a room (WHIP, RFC 9725)",
                    "parameters": [
                        _param("room_id"),
                        {"name": "kind", "in": "query", "schema": {"enum": ["camera", "screen"]}},
                        {
                            "name": "participant",
                            "in": "query",
                            "schema": {"type": "string"},
                            "description": "attach the stream to this WebSocket participant of yours",
                        },
                    ],
                    "requestBody": _SDP_BODY,
                    "responses": {"201": _SDP_CREATED} | _SDP_ERRORS | _QUOTA,
                }
            },
            "/whip/{room_id}/{stream_id}": {
                "delete": {
                    "summary": "End a published stream",
                    "parameters": [_param("room_id"), _param("stream_id")],
                    "responses": {"200": {"description": "Ended"}} | _ERRORS,
                }
            },
            "/whep/{stream_id}": {
                "post": {
                    "summary": "View a stream (WHEP); 307 to the hub process that hosts it",
                    "parameters": [_param("stream_id")],
                    "requestBody": _SDP_BODY,
                    "responses": {"201": _SDP_CREATED, "307": {"description": "Hosted by another hub process"}}
                    | _SDP_ERRORS
                    | _QUOTA,
                }
            },
            "/whep/{stream_id}/{session_id}": {
                "delete": {
                    "summary": "End a viewing session",
                    "parameters": [_param("stream_id"), _param("session_id")],
                    "responses": {"200": {"description": "Ended"}} | _ERRORS,
                }
            },
            "/ws": {
                "get": {
                    "summary": "Event WebSocket (see docs/protocol.md)",
                    "parameters": [{"name": "token", "in": "query", "schema": {"type": "string"}}],
                    "responses": {"101": {"description": "Switching protocols"}, "401": _PROBLEM},
                }
            },
            "/": {"get": {"summary": "The web app", "security": [], "responses": {"200": {"description": "HTML"}}}},
            "/rooms/{room_id}": {
                "get": {
                    "summary": "The room page (reads ?token= and &autojoin=1 in the browser)",
                    "security": [],
                    "parameters": [_param("room_id")],
                    "responses": {"200": {"description": "HTML"}},
                }
            },
            "/web/{path}": {
                "get": {
                    "summary": "The web app's static files",
                    "security": [],
                    "parameters": [_param("path")],
                    "responses": {"200": {"description": "OK"}, "404": _PROBLEM},
                }
            },
        },
    }


def _ok(description: str, content_type: str = "application/json") -> dict[str, Any]:
    return {"description": description, "content": {content_type: {"schema": {"type": "object"}}}}


def _query(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "schema": {"type": "string"}, "description": description}


def _recording_paths() -> dict[str, Any]:
    """Recording and playback (docs/api.md, "Recordings")."""
    rec = _param("recording_id")
    page = {"summary": "The playback page", "security": [], "responses": {"200": {"description": "HTML"}}}
    return {
        "/recordings": {"get": page},
        "/recordings/{recording_id}": {"get": page | {"parameters": [rec]}},
        "/api/rooms/{room_id}/recording": {
            "get": {
                "summary": "Whether the room is being recorded: {room_id, on, recording}",
                "parameters": [_param("room_id")],
                "responses": {"200": _ok("Recording state")} | _ERRORS,
            },
            "post": {
                "summary": "Start or stop recording the room; the room gets recording-started/-stopped events",
                "parameters": [_param("room_id")],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"type": "object", "required": ["on"], "properties": {"on": {"type": "boolean"}}}
                        }
                    },
                },
                "responses": {"200": _ok("Recording state"), "400": _PROBLEM} | _ERRORS,
            },
        },
        "/api/recordings": {
            "get": {
                "summary": "Search recordings of the caller's jurisdiction, newest first",
                "parameters": [
                    _query("site", "a site of the jurisdiction: it and the sites below it (default: home site)"),
                    _query("from", "ISO 8601 date/time (UTC if no offset) or epoch seconds"),
                    _query("to", "ISO 8601 date/time (UTC if no offset) or epoch seconds"),
                    _query("kind", "room kind: standing, mediation, training, call, conference"),
                    _query("q", "text in title, room, site or participant names, or a recording id"),
                ],
                "responses": {"200": _ok("Recordings"), "400": _PROBLEM} | _ERRORS,
            }
        },
        "/api/recordings/{recording_id}": {
            "get": {
                "summary": "A recording's manifest: participants, streams, segments, hashes",
                "parameters": [rec],
                "responses": {"200": _ok("Manifest")} | _ERRORS,
            }
        },
        "/api/recordings/{recording_id}/files/{path}": {
            "get": {
                "summary": "A file of the recording (segment, manifest); supports Range (206); audited",
                "parameters": [rec, _param("path"), _query("token", "for <video> elements, which cannot send headers")],
                "responses": {
                    "200": {"description": "The file"},
                    "206": {"description": "The requested range"},
                    "400": _PROBLEM,
                }
                | _ERRORS,
            }
        },
        "/api/recordings/{recording_id}/verify": {
            "get": {
                "summary": "Recompute segment hashes and the hash chain, open every segment: intact, or what is wrong",
                "parameters": [rec],
                "responses": {"200": _ok("Verdict: {intact, segments, changed, missing, chain_broken, unplayable}")}
                | _ERRORS,
            }
        },
        "/api/recordings/{recording_id}/export": {
            "post": {
                "summary": "Start rendering the session into one MP4 (grid, names, time, mixed audio)",
                "parameters": [rec],
                "responses": {"202": _ok("The job: {state, progress, ...}"), "409": _PROBLEM} | _ERRORS,
            },
            "get": {
                "summary": "Progress of the export job",
                "parameters": [rec],
                "responses": {"200": _ok("The job: {state, progress, participants, width, height, duration}")}
                | _ERRORS,
            },
        },
        "/api/recordings/{recording_id}/export/file": {
            "get": {
                "summary": "Download the exported MP4 (audited)",
                "parameters": [rec],
                "responses": {"200": {"description": "MP4", "content": {"video/mp4": {}}}} | _ERRORS,
            }
        },
        "/api/audit": {
            "get": {
                "summary": "Audit log of recordings in the caller's jurisdiction (operators and admins)",
                "parameters": [_query("recording", "only this recording")],
                "responses": {"200": _ok("Audit rows: {at, user, role, action, recording_id, site_id, detail}")}
                | _ERRORS,
            }
        },
    }


def _console_paths() -> dict[str, Any]:
    """The command-centre console (docs/api.md, "Console")."""
    layouts_body = {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}}
    layouts = "{layouts: [{name, grid, panes: [{stream_id|camera_id|site_id} | null], patrol}], current}"
    return {
        "/console": {
            "get": {"summary": "The console page", "security": [], "responses": {"200": {"description": "HTML"}}}
        },
        "/api/console/status": {
            "get": {
                "summary": "Live status of every site of a branch with per-branch rollups",
                "parameters": [_query("site", "the branch's root (default: the caller's home site)")],
                "responses": {"200": _ok("{root, at, sites: [{id, online, rooms, streams, cameras, rollup, ...}]}")}
                | _ERRORS,
            }
        },
        "/api/console/layouts": {
            "get": {
                "summary": "The caller's saved video-wall layouts",
                "responses": {"200": _ok(layouts)} | _ERRORS,
            },
            "put": {
                "summary": "Replace the caller's video-wall layouts",
                "requestBody": layouts_body,
                "responses": {"200": _ok(layouts), "400": _PROBLEM} | _ERRORS,
            },
        },
    }


def _dispatch_paths() -> dict[str, Any]:
    """Emergency calls and convening (docs/api.md, "Emergency calls and convening")."""
    call = "{id, site_id, site_name, from: {user, name}, at, note, state, answered_by, room_id, ended_at}"
    conflict = {"409": _PROBLEM | {"description": "The call ended or was answered first; `call` says by whom"}}
    json_body = {"content": {"application/json": {"schema": {"type": "object"}}}}
    call_id = _param("call_id")
    return {
        "/api/calls": {
            "get": {
                "summary": "Ringing and recent emergency calls of the caller's jurisdiction, newest first",
                "responses": {"200": _ok(f"[{call}]")} | _ERRORS,
            },
            "post": {
                "summary": "Call for help from the caller's home site; rings at the operators above it",
                "requestBody": {"required": False} | json_body,
                "responses": {"201": _ok(call), "400": _PROBLEM, "409": _PROBLEM} | _ERRORS,
            },
        },
        "/api/calls/{call_id}/answer": {
            "post": {
                "summary": "Answer a ringing call (operators, admins): the first wins and gets the call room",
                "parameters": [call_id],
                "responses": {"200": _ok("{call, room}")} | conflict | _ERRORS,
            }
        },
        "/api/calls/{call_id}": {
            "delete": {
                "summary": "Cancel one's own ringing call",
                "parameters": [call_id],
                "responses": {"200": _ok(call)} | conflict | _ERRORS,
            }
        },
        "/api/conferences": {
            "post": {
                "summary": "Convene sites (operators, admins): a conference room at the caller's site, "
                "each site invited live",
                "requestBody": {"required": True} | json_body,
                "responses": {"201": _json("Room", "Created"), "400": _PROBLEM} | _ERRORS,
            }
        },
        "/api/conferences/{room_id}/rollcall": {
            "get": {
                "summary": "Per invited site: whether and who of it has joined the conference, since when",
                "parameters": [_param("room_id")],
                "responses": {"200": _ok("{room_id, title, sites: [{site_id, name, joined, since, participants}]}")}
                | _ERRORS,
            }
        },
    }


def _training_paths() -> dict[str, Any]:
    """Training broadcasts and attendance (docs/api.md, "Trainings")."""
    training = "{room_id, title, site_id, trainer, trainer_name, trainer_site, started_at, ended_at}"
    json_body = {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}}
    room = _param("room_id")
    participant = "The participant record, `speaker` set (participant-updated goes to the room)"
    return {
        "/trainings": {
            "get": {"summary": "The trainings page", "security": [], "responses": {"200": {"description": "HTML"}}}
        },
        "/api/trainings": {
            "get": {
                "summary": "Trainings of the caller's branch and of the branches below it, newest first",
                "parameters": [_query("all", "1: ended trainings too")],
                "responses": {"200": _ok(f"[{training} + participant_count]")} | _ERRORS,
            },
            "post": {
                "summary": "Start a training for a branch (trainers, operators, admins): its room admits the "
                "branch, whose users get an `invitation` event",
                "requestBody": json_body,
                "responses": {"201": _ok(f"{training} + room"), "400": _PROBLEM} | _ERRORS,
            },
        },
        "/api/trainings/{room_id}/end": {
            "post": {
                "summary": "End a training (its trainer, or an operator above it): streams end, participants leave",
                "parameters": [room],
                "responses": {"200": _ok(training), "400": _PROBLEM} | _ERRORS,
            }
        },
        "/api/trainings/{room_id}/speakers": {
            "post": {
                "summary": "Let an attendee speak (the trainer): they may publish until returned to watching",
                "parameters": [room],
                "requestBody": json_body,
                "responses": {"200": _ok(participant), "400": _PROBLEM} | _ERRORS,
            }
        },
        "/api/trainings/{room_id}/speakers/{participant_id}": {
            "delete": {
                "summary": "Return a speaker to watching (the trainer): their streams end",
                "parameters": [room, _param("participant_id")],
                "responses": {"200": _ok(participant), "400": _PROBLEM} | _ERRORS,
            }
        },
        "/api/trainings/{room_id}/sites": {
            "get": {
                "summary": "The sites of the training's branch (whoever may enter the room): names for its attendees",
                "parameters": [room],
                "responses": {"200": _ok("[Site]")} | _ERRORS,
            }
        },
        "/api/trainings/{room_id}/attendance": {
            "get": {
                "summary": "Who attended, from which site, from when to when (the trainer, operators above it)",
                "parameters": [room, _query("format", "csv: a CSV file instead of JSON")],
                "responses": {
                    "200": {
                        "description": "{training, attendance: [{site_id, site_name, user, name, role, "
                        "participant_id, joined_at, left_at, minutes, interrupted}]}",
                        "content": {"application/json": {"schema": {"type": "object"}}, "text/csv": {}},
                    }
                }
                | _ERRORS,
            }
        },
    }


def _body(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    schema = {"type": "object", "additionalProperties": False, "properties": properties}
    return {"required": True, "content": {"application/json": {"schema": schema | {"required": required or []}}}}


def _case_paths() -> dict[str, Any]:
    """Mediation cases and statistics (docs/api.md, "Cases" and "Statistics")."""
    case = _param("case_id")
    page = {"security": [], "responses": {"200": {"description": "HTML"}}}
    period = [
        _query("site", "a site of the jurisdiction: its branch (default: home site)"),
        _query("from", "ISO 8601 date/time (UTC if no offset) or epoch seconds; default: 30 days before to"),
        _query("to", "ISO 8601 date/time or epoch seconds; default: now"),
    ]
    conflict = {"409": _PROBLEM}
    return {
        "/cases": {"get": page | {"summary": "The cases page"}},
        "/stats": {"get": page | {"summary": "The statistics page"}},
        "/api/cases": {
            "get": {
                "summary": "Cases the caller may read (their origin lies in the branch), newest first",
                "parameters": [
                    _query("site", "a site of the jurisdiction: cases that have been in its branch"),
                    _query("status", "open, mediating, agreement, failed, escalated or closed"),
                    _query("queue", "'mine': only cases now at the caller's own site"),
                ],
                "responses": {"200": _ok("Cases"), "400": _PROBLEM} | _ERRORS,
            },
            "post": {
                "summary": "Open a case at a site of the jurisdiction (default: home site)",
                "requestBody": _body(
                    {
                        "site_id": {"type": "string"},
                        "title": {"type": "string", "maxLength": 200},
                        "dispute_type": {"enum": ["family", "neighbour", "land", "wages", "contract", "other"]},
                        "parties": {
                            "type": "array",
                            "minItems": 1,
                            "items": {
                                "type": "object",
                                "required": ["name"],
                                "properties": {
                                    "name": {"type": "string"},
                                    "role": {"enum": ["applicant", "respondent", "other"]},
                                    "phone": {"type": "string"},
                                },
                            },
                        },
                        "summary": {"type": "string", "maxLength": 4000},
                    },
                    ["title", "dispute_type", "parties"],
                ),
                "responses": {"201": _ok("The case"), "400": _PROBLEM} | _ERRORS,
            },
        },
        "/api/cases/{case_id}": {
            "get": {
                "summary": "A case with its history, sessions and their recordings",
                "parameters": [case],
                "responses": {"200": _ok("The case")} | _ERRORS,
            },
            "patch": {
                "summary": "Change status (along the allowed transitions) and/or the outcome note",
                "parameters": [case],
                "requestBody": _body(
                    {
                        "status": {"enum": ["open", "mediating", "agreement", "failed", "escalated", "closed"]},
                        "outcome": {"type": "string", "maxLength": 2000},
                    }
                ),
                "responses": {"200": _ok("The case"), "400": _PROBLEM} | _ERRORS | conflict,
            },
        },
        "/api/cases/{case_id}/sessions": {
            "post": {
                "summary": "Hold a session: open a mediation room at the case's site, admitting the sites below",
                "parameters": [case],
                "responses": {"201": _ok("The session with its room")} | _ERRORS | conflict,
            }
        },
        "/api/cases/{case_id}/escalate": {
            "post": {
                "summary": "Move the case to the parent site's queue; its readers get case-escalated",
                "parameters": [case],
                "requestBody": _body({"note": {"type": "string", "maxLength": 1000}}),
                "responses": {"200": _ok("The case"), "400": _PROBLEM} | _ERRORS | conflict,
            }
        },
        "/api/stats": {
            "get": {
                "summary": "Case and training statistics of a branch over a period (definitions included)",
                "parameters": period,
                "responses": {"200": _ok("Statistics"), "400": _PROBLEM} | _ERRORS,
            }
        },
        "/api/stats.csv": {
            "get": {
                "summary": "The same statistics as CSV (section, item, metric, value; UTF-8 with BOM)",
                "parameters": period,
                "responses": {"200": {"description": "CSV", "content": {"text/csv": {}}}, "400": _PROBLEM} | _ERRORS,
            }
        },
    }


def _monitoring_paths() -> dict[str, Any]:
    """Snapshots and video health alerts (docs/api.md, "Snapshots and alerts")."""
    site = _query("site", "a site of the jurisdiction: it and the sites below it (default: home site)")
    return {
        "/api/streams/{stream_id}/snapshot": {
            "get": {
                "summary": "The stream's latest snapshot (JPEG, ~320 px wide); ETag, Cache-Control: no-cache",
                "parameters": [_param("stream_id"), _query("token", "for <img> elements, which cannot send headers")],
                "responses": {
                    "200": {"description": "JPEG", "content": {"image/jpeg": {}}},
                    "304": {"description": "Not modified since the ETag in If-None-Match"},
                    "503": _PROBLEM,
                }
                | _ERRORS,
            }
        },
        "/api/snapshots": {
            "get": {
                "summary": "Metadata of the latest snapshot of every stream in a branch of the tree",
                "parameters": [site],
                "responses": {"200": _ok("[{stream_id, site_id, room_id, camera_id?, at, width, height, bytes}]")}
                | _ERRORS,
            }
        },
        "/api/alerts": {
            "get": {
                "summary": "Active video health alerts (black, frozen, blur, covered) in a branch of the tree",
                "parameters": [site],
                "responses": {"200": _ok("[{id, stream_id, site_id, room_id, camera_id?, kind, since}]")} | _ERRORS,
            }
        },
    }


def _camera_paths() -> dict[str, Any]:
    """Cameras the hub pulls (docs/api.md, "Cameras")."""
    camera = _param("camera_id")
    body = {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["site_id", "name", "url"],
                    "properties": {
                        "site_id": {"type": "string"},
                        "name": {"type": "string"},
                        "url": {"type": "string", "description": "rtsp://, rtsps://, http(s):// or file:///path"},
                        "id": {"type": "string", "description": "optional; generated when absent"},
                    },
                }
            }
        },
    }
    record = (
        "Camera: {id, site_id, name, url (password hidden), created_by, created_at, room_id,"
        " status, since, error, stream_id}"
    )
    return {
        "/api/cameras": {
            "get": {
                "summary": "Cameras of the caller's jurisdiction with their live status",
                "parameters": [_query("site", "only this site and the sites below it")],
                "responses": {"200": _ok(f"A list of {record}")} | _ERRORS,
            },
            "post": {
                "summary": "Register a camera to a site (admins and operators of a site above it)",
                "requestBody": body,
                "responses": {"201": _ok(record), "400": _PROBLEM} | _ERRORS,
            },
        },
        "/api/cameras/{camera_id}": {
            "get": {
                "summary": "One camera with its live status",
                "parameters": [camera],
                "responses": {"200": _ok(record)} | _ERRORS,
            },
            "delete": {
                "summary": "Remove a camera: the hub stops pulling it",
                "parameters": [camera],
                "responses": {"204": {"description": "Removed"}} | _ERRORS,
            },
        },
    }
