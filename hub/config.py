"""Settings of one hub process: command-line flags override HUB_* environment variables."""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from hub.core.tokens import KeyFile

DEMO_SITES = Path(__file__).parent / "core" / "demo_sites.json"


class Settings(BaseSettings):
    """Everything a hub needs to know about its deployment.

    pydantic-settings gives typed parsing of HUB_* variables and one place
    that documents them; `docs/operate.md` lists the same fields.
    """

    model_config = SettingsConfigDict(env_prefix="HUB_")

    host: str = "127.0.0.1"
    port: int = 8080
    data: Path = Path("hub-data")
    redis: str | None = None
    #: Durable records: sqlite:///PATH or postgresql://user:password@host/name;
    #: unset means the SQLite file hub.sqlite3 in the data directory.
    database: str | None = None
    sites: Path | None = None
    #: Local addresses ICE gathers host candidates on; empty = every interface
    #: address (aioice's default, which leaves out loopback).
    ice_addresses: list[str] = Field(default_factory=list)
    #: STUN/TURN servers the hub's own ICE agent uses, e.g. ["stun:stun.example.org:3478"].
    #: Empty by default: aiortc would otherwise ask a public STUN server.
    ice_servers: list[str] = Field(default_factory=list)
    #: TURN servers handed to browsers and clients (GET /api/ice-servers) with a credential
    #: minted per user, e.g. ["turn:turn.example.org:3478?transport=udp",
    #: "turn:turn.example.org:3478?transport=tcp"]; empty = no TURN.
    turn_urls: list[str] = Field(default_factory=list)
    #: The secret shared with the TURN server (coturn's static-auth-secret); required with turn_urls.
    turn_secret: str | None = None
    #: Seconds a minted TURN credential stays valid. A TURN server refuses to refresh an
    #: allocation once its credential expired, so this bounds how long a session can last on
    #: TURN; a page asks for a fresh one for each new connection.
    turn_credential_seconds: int = Field(default=86400, ge=60)
    #: Public address written into host candidates for a hub behind NAT
    #: (mediasoup's announcedIp, LiveKit's node_ip).
    announced_ip: str | None = None
    #: Public URL used in printed links; defaults to http://host:port.
    public_url: str | None = None
    max_sdp_bytes: int = 64 * 1024
    #: Bearer secret a Prometheus scraper sends to GET /metrics; unset, /metrics
    #: answers only requests made directly on loopback.
    metrics_token: str | None = None
    max_ws_message_bytes: int = 16 * 1024
    #: Connections the kernel queues for the hub to accept (the kernel caps it
    #: at net.core.somaxconn). aiohttp's 128 overflowed in a join storm: each
    #: connection dropped so waited for its client's SYN retries (1, 3, 7, 15 s...).
    listen_backlog: int = Field(default=4096, ge=1)
    #: Hub processes `serve` runs on one HTTP port (SO_REUSEPORT), sharing Redis;
    #: worker i also listens on port + i, the address its streams are redirected to.
    workers: int = Field(default=1, ge=1)
    #: Set by the supervisor in each worker (1..workers); 0 = a process on its own.
    worker: int = Field(default=0, ge=0)
    #: Seconds after which a silent hub process's rooms and streams are
    #: swept from shared live state (it refreshes its heartbeat every third).
    node_ttl: float = 15.0
    #: Bytes a viewer's socket may hold unsent; a viewer further behind
    #: drops packets until the next keyframe.
    viewer_backlog_bytes: int = 256 * 1024
    #: How a forwarded packet reaches its viewers: "c" decides, rewrites,
    #: protects and sends it for all of a track's viewers in one call of the
    #: compiled hub.media._fastsend
    #: (falls back to "python", with one log line, where it is not built);
    #: "python" does it viewer by viewer.
    forward: Literal["c", "python"] = "c"
    #: Who reads a relay's pulled packets: "lane", a thread beside the
    #: event loop (hub.media.reader, compiled where hub.media._reader is
    #: built) that hands them to the door's express lane, which handles the
    #: common packet in C and the rest through the loop's code, in its turn;
    #: "thread", the same thread without the lane; "loop", the event loop
    #: itself, one wake-up of it per datagram.
    pull_reader: Literal["lane", "thread", "loop"] = "lane"
    #: Minimum seconds between keyframe requests sent to one publisher.
    keyframe_interval: float = 0.3
    #: Length of a recording segment; each is cut at a keyframe, so a kill
    #: loses at most the open one's last second.
    segment_seconds: float = 2.0
    #: Recordings older than this many days are deleted; unset keeps them.
    retention_days: float | None = None
    #: Seconds between retention sweeps.
    retention_check_seconds: float = 3600.0
    #: Font file the one-file export draws names, site and time with; unset =
    #: the first installed of recorder.export.FONT_CANDIDATES (Debian CJK fonts).
    export_font: Path | None = None
    #: Record mediation rooms from their first participant until the last one leaves.
    record_mediation_rooms: bool = False
    #: Seconds between snapshots (JPEG thumbnail + health diagnostics) of each
    #: live video stream; each asks the publisher for one keyframe. 0 turns them off.
    snapshot_seconds: float = 10.0
    #: Seconds an emergency call rings at the operators before it counts as missed.
    call_ring_seconds: float = 120.0
    #: Register the cameras of this JSON file at start (see docs/operate.md).
    cameras: Path | None = None
    #: Directories besides the data directory that file:// camera URLs may point into.
    camera_paths: list[Path] = Field(default_factory=list)
    #: Networks (CIDR) and host names network cameras may be at; empty = none.
    #: Loopback and link-local addresses are admitted only by a network inside
    #: their range (e.g. 127.0.0.1/32), never by a wide one such as 0.0.0.0/0.
    camera_networks: list[str] = Field(default_factory=list)
    #: Seconds a camera may send nothing before it counts as dropped.
    camera_read_timeout: float = 5.0
    #: Reconnect delays of a dropped camera: from the first, doubling up to the last.
    camera_backoff_min: float = 1.0
    camera_backoff_max: float = 30.0
    #: Messages one event socket may send per second, sustained, and in one burst;
    #: a message over the limit is refused with an `error` (code rate-limited).
    ws_messages_per_second: float = 20.0
    ws_message_burst: int = 40
    #: The same for chat messages (they reach everyone in the room), within the above.
    ws_chats_per_second: float = 2.0
    ws_chat_burst: int = 10
    #: Refused messages after which a socket is closed (1008); one refusal is
    #: forgiven per second, so only a socket that keeps flooding is closed.
    ws_refusals_before_close: int = 50
    #: Events waiting for one socket while its client reads nothing (a send
    #: blocked on a full buffer) before it is closed as too slow (1013).
    ws_queue_events: int = 1000
    #: Seconds one send to an event socket may stay blocked on a full buffer
    #: (the client reads nothing) before the socket is closed as too slow (1013).
    ws_send_stall_seconds: float = 10.0
    #: A silent event socket is pinged about once per this many seconds and
    #: dropped when it answers nothing for as long again (signaling/heartbeat.py).
    ws_heartbeat_seconds: float = Field(default=30.0, ge=0.2)
    #: Seconds a WHIP or WHEP session may take to connect (ICE + DTLS) before
    #: it is removed, with its stream and participant.
    session_connect_seconds: float = 10.0
    #: WHIP (publishing) and WHEP (viewing) sessions on this hub process per
    #: user and per room, connecting or connected; one more is refused with 429.
    whip_sessions_per_user: int = 4
    whip_sessions_per_room: int = 50
    whep_sessions_per_user: int = 64
    whep_sessions_per_room: int = 1000
    #: Rooms opened (API, cases, trainings, calls, conferences) and not yet
    #: closed at one site; one more is refused with 429.
    rooms_per_site: int = 20
    #: Seconds an opened room may stay empty (no participant, no stream)
    #: before it is closed; standing rooms never are.
    empty_room_seconds: float = 600.0
    #: The cluster credential: hub processes sign the tokens with which they
    #: pull streams from each other (relays) with it; every process of a
    #: cluster needs the same one. Unset: a viewer of a stream another process
    #: hosts is redirected there (307) instead.
    cluster_secret: str | None = None
    #: Seconds a relay (a pull of another process's stream) stays after its
    #: last local viewer left, so a viewer who reloads finds it still there.
    relay_linger_seconds: float = 5.0
    #: Pull relayed streams through this hub (its URL) rather than from the
    #: process hosting them: a cascade along the site tree.
    upstream: str | None = None
    #: Seconds a hub process holds a camera's lease (renewed every third of it)
    #: before another process on the same Redis may take the camera over.
    camera_lease_seconds: float = 15.0
    #: File of token signing keys, one `ID SECRET` a line, the first signs
    #: (see docs/operate.md); unset: the data directory's secret.key.
    secret_file: Path | None = None
    #: A directory every node of a cluster mounts (NFS, CephFS...) and records
    #: into instead of DATA/recordings; each node then reads every recording's
    #: files there. Unset: a recording held by another node is fetched from it
    #: (with HUB_CLUSTER_SECRET).
    shared_media: Path | None = None

    @model_validator(mode="after")
    def _turn_needs_secret(self) -> Settings:
        if self.turn_urls and not self.turn_secret:
            raise ValueError("turn_urls needs turn_secret (HUB_TURN_SECRET): the TURN server's static-auth-secret")
        for url in self.turn_urls:
            if not url.startswith(("turn:", "turns:")):
                raise ValueError(f"turn_urls: {url!r} is not a turn: or turns: URL")
        return self

    @property
    def recordings_path(self) -> Path:
        return self.shared_media or self.data / "recordings"

    @property
    def secret_path(self) -> Path:
        return self.data / "secret.key"

    @property
    def database_url(self) -> str:
        return self.database or f"sqlite:///{self.data / 'hub.sqlite3'}"

    @property
    def base_url(self) -> str:
        return self.public_url or f"http://{self.host}:{self.port}"

    @property
    def node_url(self) -> str:
        """Where this process alone answers: other hub processes and WHEP
        redirects for the streams it hosts go here. A worker's is its own port
        on the address it binds (loopback when it binds every address), also
        behind a public URL, which all workers share."""
        if not self.worker:
            return self.base_url
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port + self.worker}"

    def keys(self) -> KeyFile:
        """The token signing keys: HUB_SECRET_FILE, or else the data
        directory's `secret.key`, generated on first use. Raises
        KeyringError if the file cannot be used."""
        if self.secret_file is None:
            self._make_secret()
        keys = KeyFile(self.secret_file or self.secret_path)
        keys.current()  # a file that cannot be used stops the command here, with its reason
        return keys

    def _make_secret(self) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        try:
            # O_EXCL: of two processes starting on one data directory, one
            # writes the secret and both use it.
            fd = os.open(self.secret_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(48))
        for _ in range(50):
            if self.secret_path.read_text().strip():
                return
            time.sleep(0.01)  # the other process is still writing it
        raise RuntimeError(f"{self.secret_path} is empty")
