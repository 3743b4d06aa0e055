-- The hub's database schema as the code of commit 26ea4d8 made it: every feature's
-- CREATE ... IF NOT EXISTS script in turn, before schema_migrations existed.
-- tests/test_store.py opens data directories made with it.
CREATE TABLE IF NOT EXISTS sites (
    position INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    name_en TEXT NOT NULL DEFAULT '',
    level TEXT NOT NULL,
    parent TEXT
);
CREATE TABLE IF NOT EXISTS cases (
    id TEXT PRIMARY KEY,
    site_id TEXT NOT NULL,
    origin_site_id TEXT NOT NULL,
    title TEXT NOT NULL,
    dispute_type TEXT NOT NULL,
    parties TEXT NOT NULL,
    summary TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL,
    result TEXT,
    outcome TEXT NOT NULL DEFAULT '',
    created_by TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS cases_origin ON cases (origin_site_id, created_at);
CREATE INDEX IF NOT EXISTS cases_site ON cases (site_id);
CREATE TABLE IF NOT EXISTS case_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    case_id TEXT NOT NULL,
    at REAL NOT NULL,
    user TEXT NOT NULL,
    role TEXT NOT NULL,
    action TEXT NOT NULL,
    from_status TEXT,
    to_status TEXT,
    from_site TEXT,
    to_site TEXT,
    room_id TEXT,
    note TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS case_history_case ON case_history (case_id, id);
CREATE TABLE IF NOT EXISTS case_sessions (
    id TEXT PRIMARY KEY,
    case_id TEXT NOT NULL,
    room_id TEXT NOT NULL UNIQUE,
    site_id TEXT NOT NULL,
    admit TEXT NOT NULL,
    opened_by TEXT NOT NULL,
    opened_at REAL NOT NULL,
    started_at REAL,
    ended_at REAL
);
CREATE INDEX IF NOT EXISTS case_sessions_case ON case_sessions (case_id, opened_at);
CREATE TABLE IF NOT EXISTS trainings (
    room_id TEXT PRIMARY KEY,
    title TEXT NOT NULL,
    site_id TEXT NOT NULL,
    trainer TEXT NOT NULL,
    trainer_name TEXT NOT NULL,
    trainer_site TEXT NOT NULL,
    started_at REAL NOT NULL,
    ended_at REAL
);
CREATE INDEX IF NOT EXISTS trainings_site_time ON trainings (site_id, started_at);
CREATE TABLE IF NOT EXISTS attendance (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    room_id TEXT NOT NULL,
    participant_id TEXT NOT NULL,
    site_id TEXT NOT NULL,
    user TEXT NOT NULL,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    joined_at REAL NOT NULL,
    left_at REAL,
    node TEXT NOT NULL,
    interrupted INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS attendance_room ON attendance (room_id, joined_at);
CREATE INDEX IF NOT EXISTS attendance_time ON attendance (joined_at);
CREATE TABLE IF NOT EXISTS attendance_nodes (
    node TEXT PRIMARY KEY,
    seen_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS calls (
    id TEXT PRIMARY KEY,
    site_id TEXT NOT NULL,
    caller_user TEXT NOT NULL,
    caller_name TEXT NOT NULL,
    note TEXT NOT NULL DEFAULT '',
    at REAL NOT NULL,
    state TEXT NOT NULL,
    answered_user TEXT,
    answered_name TEXT,
    ended_at REAL,
    room_id TEXT
);
CREATE INDEX IF NOT EXISTS calls_site_time ON calls (site_id, at);
CREATE TABLE IF NOT EXISTS cameras (
    id TEXT PRIMARY KEY,
    site_id TEXT NOT NULL,
    name TEXT NOT NULL,
    url TEXT NOT NULL,
    created_by TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS cameras_site ON cameras (site_id);
CREATE TABLE IF NOT EXISTS console_layouts (
    user TEXT PRIMARY KEY,
    body TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS recordings (
    id TEXT PRIMARY KEY,
    room_id TEXT NOT NULL,
    site_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    title TEXT NOT NULL DEFAULT '',
    started_at REAL NOT NULL,
    ended_at REAL,
    status TEXT NOT NULL,
    chain_head TEXT NOT NULL DEFAULT '',
    node TEXT NOT NULL DEFAULT '',
    search_text TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS recordings_site_time ON recordings (site_id, started_at);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    user TEXT NOT NULL,
    role TEXT NOT NULL,
    action TEXT NOT NULL,
    recording_id TEXT NOT NULL,
    site_id TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS audit_site_time ON audit (site_id, at);
