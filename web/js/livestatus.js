// The console's live status of a branch, kept by deltas: loaded once from
// GET /api/console/status?compact=1 (only the sites with something live),
// then changed by the event socket's events (presence, participants,
// streams, rooms, cameras, alerts) — no status re-fetch after events.
//
// Every delta is idempotent (sets keyed by id, absolute counts), because an
// event numbered after the status's `seq` may already be in it; events
// numbered at or before it are skipped. `rows()` gives the rows in the shape
// of the full status (with per-branch rollups), computed here over the tree.

/** The event types that change the status. */
export const STATUS_EVENTS = [
  "participant-joined",
  "participant-left",
  "stream-added",
  "stream-removed",
  "room-opened",
  "room-closed",
  "room-updated",
  "presence",
  "camera-status",
  "alert-raised",
  "alert-cleared",
];

const STREAM_FIELDS = ["id", "room_id", "kind", "name", "user", "site_id"];
const STANDING_PREFIX = "site-";

function pick(record, keys) {
  const out = {};
  for (const key of keys) out[key] = record[key] ?? null;
  return out;
}

export class LiveStatus {
  /** `sites`: the tree as GET /api/sites lists it (parents before children). */
  constructor(sites) {
    this.sites = sites;
    this.byId = new Map(sites.map((s) => [s.id, s]));
    // Departments beside the sites: their presence counts under their own id.
    this.departments = new Set(sites.flatMap((s) => (s.departments ?? []).map((d) => d.id)));
    this.seq = 0; // the last event sequence number reflected
    this.node = null; // the hub process that numbered them
    this.live = new Map(); // site id -> {connections, rooms, streams, cameras, alerts}
    this.rooms = new Map(); // room id -> {id, site_id, kind, title}: opened rooms known
    this._rows = null;
  }

  _row(siteId) {
    let row = this.live.get(siteId);
    if (!row) {
      row = { connections: {}, rooms: new Map(), streams: new Map(), cameras: new Map(), alerts: new Map() };
      this.live.set(siteId, row);
    }
    return row;
  }

  /** Replace everything with a compact status ({seq, node, opened, sites}). */
  load(status) {
    this.seq = status.seq;
    this.node = status.node;
    this.live.clear();
    this.rooms = new Map((status.opened ?? []).map((r) => [r.id, r]));
    for (const site of status.sites) {
      const row = this._row(site.id);
      row.connections = site.connections ?? {};
      for (const room of site.rooms ?? []) row.rooms.set(room.id, { ...room, participants: new Set(room.participants) });
      for (const stream of site.streams ?? []) row.streams.set(stream.id, stream);
      for (const camera of site.cameras ?? []) row.cameras.set(camera.id, camera);
      for (const alert of site.alerts ?? []) row.alerts.set(alert.id, alert);
    }
    this._rows = null;
  }

  _siteOfRoom(roomId) {
    const opened = this.rooms.get(roomId);
    if (opened) return opened.site_id;
    const id = roomId.startsWith(STANDING_PREFIX) ? roomId.slice(STANDING_PREFIX.length) : null;
    return id && this.byId.has(id) ? id : null;
  }

  _roomEntry(roomId) {
    const siteId = this._siteOfRoom(roomId);
    if (!siteId || !this.byId.has(siteId)) return null;
    const row = this._row(siteId);
    let room = row.rooms.get(roomId);
    if (!room) {
      const opened = this.rooms.get(roomId);
      room = { id: roomId, kind: opened?.kind ?? "standing", title: opened?.title ?? "", participants: new Set() };
      row.rooms.set(roomId, room);
    }
    return [row, room];
  }

  /** Apply one event; true if it changed anything. Events the status already reflects are skipped. */
  apply(event) {
    if (event.seq !== undefined && event.seq <= this.seq) return false;
    if (event.seq !== undefined) this.seq = event.seq;
    const changed = this._apply(event);
    if (changed) this._rows = null;
    return changed;
  }

  _apply(event) {
    switch (event.type) {
      case "presence": {
        if (!this.byId.has(event.site_id) && !this.departments.has(event.site_id)) return false;
        this._row(event.site_id).connections = event.connections ?? {};
        return true;
      }
      case "participant-joined": {
        const entry = this._roomEntry(event.room_id);
        if (!entry) return false;
        entry[1].participants.add(event.participant.id);
        return true;
      }
      case "participant-left": {
        const siteId = this._siteOfRoom(event.room_id);
        const row = siteId && this.live.get(siteId);
        const room = row?.rooms.get(event.room_id);
        if (!room) return false;
        room.participants.delete(event.participant_id);
        if (!room.participants.size) row.rooms.delete(event.room_id);
        return true;
      }
      case "stream-added": {
        const siteId = this._siteOfRoom(event.room_id);
        if (!siteId) return false;
        this._row(siteId).streams.set(event.stream.id, pick(event.stream, STREAM_FIELDS));
        return true;
      }
      case "stream-removed": {
        for (const row of this.live.values()) if (row.streams.delete(event.stream_id)) return true;
        return false;
      }
      case "room-opened":
      case "room-updated": {
        const room = event.room;
        if (!room || !this.byId.has(room.site_id)) return false;
        this.rooms.set(room.id, pick(room, ["id", "site_id", "kind", "title"]));
        const existing = this.live.get(room.site_id)?.rooms.get(room.id);
        if (existing) Object.assign(existing, { kind: room.kind, title: room.title ?? "" });
        return true;
      }
      case "room-closed": {
        const siteId = this._siteOfRoom(event.room_id);
        this.rooms.delete(event.room_id);
        return Boolean(siteId && this.live.get(siteId)?.rooms.delete(event.room_id));
      }
      case "camera-status": {
        const camera = event.camera;
        if (!camera || !this.byId.has(camera.site_id)) return false;
        const id = camera.id;
        this._row(camera.site_id).cameras.set(id, { id, name: camera.name ?? id, status: camera.status ?? "offline", stream_id: camera.stream_id ?? null });
        return true;
      }
      case "alert-raised":
      case "alert-cleared": {
        const alert = event.alert;
        if (!alert || !this.byId.has(alert.site_id)) return false;
        const alerts = this._row(alert.site_id).alerts;
        if (event.type === "alert-raised") alerts.set(alert.id, pick(alert, ["id", "camera_id", "stream_id"]));
        else alerts.delete(alert.id);
        return true;
      }
      default:
        return false;
    }
  }

  /** Site id -> row as the full status gives it ({connections, terminals, rooms, streams, cameras, alerts, online, in_session, rollup}). */
  rows() {
    if (this._rows) return this._rows;
    const alarmed = new Set();
    for (const row of this.live.values())
      for (const alert of row.alerts.values()) {
        if (alert.camera_id) alarmed.add(alert.camera_id);
        if (alert.stream_id) alarmed.add(alert.stream_id);
      }
    const rows = new Map();
    for (const site of this.sites) {
      const live = this.live.get(site.id);
      const connections = live?.connections ?? {};
      const rooms = live ? [...live.rooms.values()].filter((r) => r.participants.size) : [];
      rooms.sort((a, b) => (a.kind !== "standing") - (b.kind !== "standing") || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
      const terminals = Object.values(connections).reduce((n, c) => n + c, 0);
      rows.set(site.id, {
        id: site.id,
        connections,
        terminals,
        rooms: rooms.map((r) => ({ id: r.id, kind: r.kind, title: r.title, participants: r.participants.size })),
        streams: live ? [...live.streams.values()] : [],
        cameras: live ? [...live.cameras.values()].map((c) => ({ ...c, alarm: alarmed.has(c.id) || alarmed.has(c.stream_id) })) : [],
        alerts: live ? live.alerts.size : 0,
        in_session: rooms.length > 0,
        online: terminals > 0 || rooms.length > 0,
        departments: (site.departments ?? []).map((d) => {
          const people = this.live.get(d.id)?.connections ?? {};
          return { ...d, connections: people, online: Object.values(people).some((n) => n > 0) };
        }),
      });
    }
    this._rollUp(rows);
    this._rows = rows;
    return rows;
  }

  /** Each row's rollup over it and everything below (children after parents in `sites`, so walk backwards). */
  _rollUp(rows) {
    const below = new Map();
    for (let i = this.sites.length - 1; i >= 0; i--) {
      const site = this.sites[i];
      const row = rows.get(site.id);
      const village = site.level === "village";
      const total = {
        sites: 1,
        sites_online: Number(row.online),
        sites_in_session: Number(row.in_session),
        villages: Number(village),
        villages_online: Number(village && row.online),
        rooms_in_session: row.rooms.length,
        participants: row.rooms.reduce((n, r) => n + r.participants, 0),
        terminals: row.terminals,
        streams: row.streams.length,
        cameras: row.cameras.length,
        cameras_online: row.cameras.filter((c) => c.status === "online").length,
        cameras_offline: row.cameras.filter((c) => c.status === "offline").length,
        cameras_alarm: row.cameras.filter((c) => c.alarm).length,
        alerts: row.alerts,
      };
      const sums = below.get(site.id);
      if (sums) for (const key of Object.keys(total)) total[key] += sums[key];
      row.rollup = total;
      if (site.parent && rows.has(site.parent)) {
        const parent = below.get(site.parent) ?? Object.fromEntries(Object.keys(total).map((k) => [k, 0]));
        for (const key of Object.keys(total)) parent[key] += total[key];
        below.set(site.parent, parent);
      }
    }
  }
}
