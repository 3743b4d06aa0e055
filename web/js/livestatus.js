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

/** What one site adds to the counts of its branch (the status's rollup). */
function ownCounts(site, row) {
  const village = site.level === "village";
  return {
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
    for (const site of status.sites) this.setRow(site);
    this._rows = null;
  }

  /** Add sites (parents before children, after their parents) to those this status covers. */
  addSites(sites) {
    for (const site of sites) {
      if (this.byId.has(site.id)) continue;
      this.byId.set(site.id, site);
      this.sites.push(site);
      for (const d of site.departments ?? []) this.departments.add(d.id);
    }
    this._rows = null;
  }

  /** Replace one site's live fields with a compact status row's. */
  setRow(site) {
    this.live.delete(site.id);
    const row = this._row(site.id);
    row.connections = site.connections ?? {};
    for (const room of site.rooms ?? []) row.rooms.set(room.id, { ...room, participants: new Set(room.participants) });
    for (const stream of site.streams ?? []) row.streams.set(stream.id, stream);
    for (const camera of site.cameras ?? []) row.cameras.set(camera.id, camera);
    for (const alert of site.alerts ?? []) row.alerts.set(alert.id, alert);
    this._rows = null;
  }

  /** The site an event is about: the path's first, or the site of its room, camera or alert. */
  siteOf(event) {
    if (event.path?.length) return event.path[0];
    if (event.site_id) return event.site_id;
    for (const holder of ["room", "camera", "alert"]) if (event[holder]?.site_id) return event[holder].site_id;
    return event.room_id ? this._siteOfRoom(event.room_id) : null;
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
    const rows = new Map(this.sites.map((site) => [site.id, this.ownRow(site.id)]));
    this._rollUp(rows);
    this._rows = rows;
    return rows;
  }

  /** One site's row without its rollup. */
  ownRow(siteId) {
    const live = this.live.get(siteId);
    const alarmed = new Set();
    for (const alert of live?.alerts.values() ?? []) {
      if (alert.camera_id) alarmed.add(alert.camera_id);
      if (alert.stream_id) alarmed.add(alert.stream_id);
    }
    const connections = live?.connections ?? {};
    const rooms = live ? [...live.rooms.values()].filter((r) => r.participants.size) : [];
    rooms.sort((a, b) => (a.kind !== "standing") - (b.kind !== "standing") || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    const terminals = Object.values(connections).reduce((n, c) => n + c, 0);
    return {
      id: siteId,
      connections,
      terminals,
      rooms: rooms.map((r) => ({ id: r.id, kind: r.kind, title: r.title, participants: r.participants.size })),
      streams: live ? [...live.streams.values()] : [],
      cameras: live ? [...live.cameras.values()].map((c) => ({ ...c, alarm: alarmed.has(c.id) || alarmed.has(c.stream_id) })) : [],
      alerts: live ? live.alerts.size : 0,
      in_session: rooms.length > 0,
      online: terminals > 0 || rooms.length > 0,
      departments: (this.byId.get(siteId)?.departments ?? []).map((d) => {
        const people = this.live.get(d.id)?.connections ?? {};
        return { ...d, connections: people, online: Object.values(people).some((n) => n > 0) };
      }),
    };
  }

  /** Each row's rollup over it and everything below (children after parents in `sites`, so walk backwards). */
  _rollUp(rows) {
    const below = new Map();
    for (let i = this.sites.length - 1; i >= 0; i--) {
      const site = this.sites[i];
      const row = rows.get(site.id);
      const total = ownCounts(site, row);
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

/**
 * The status of a big tree, by counts per branch and children on demand:
 * loaded from GET /api/console/branch for the console's root, then for each
 * branch opened (`addBranch`); only those sites are known, each with its own
 * live fields and its branch's counts. Deltas change the counts: an event
 * about a known site changes its row, and what that row adds to the counts
 * is added to the known sites on its path; a presence event about a site not
 * known changes the counts on its path by its connections before (`was`) and
 * after. Any other event about a site not known, or a presence event without
 * `was`, sets `stale`: the console loads its branches again.
 *
 * Each known site applies only events numbered after the load it came from
 * (its `since`): an event before it is in its counts already.
 */
export class BranchStatus {
  constructor() {
    this.own = new LiveStatus([]);
    this.seq = 0;
    this.node = null;
    this.counts = new Map(); // site id -> counts over its branch
    this.since = new Map(); // site id -> the sequence number its load reflects
    this.kids = new Map(); // site id -> how many children it has
    this.stale = false;
    this._rows = null;
  }

  get sites() {
    return this.own.sites;
  }

  childCount(siteId) {
    return this.kids.get(siteId) ?? 0;
  }

  /** Replace everything with the root's branch ({seq, node, site, children, opened}). */
  load(branch) {
    this.own = new LiveStatus([]);
    this.counts.clear();
    this.since.clear();
    this.kids.clear();
    this.stale = false;
    this.seq = branch.seq;
    this.node = branch.node;
    this.addBranch(branch);
  }

  /** Add (or refresh) one branch: the site and its children. */
  addBranch(branch) {
    if (branch.node !== this.node) {
      this.stale = true; // numbered by another process: its numbers mean nothing here
      return;
    }
    const entries = [branch.site, ...branch.children];
    this.own.addSites(entries.map(siteOf));
    for (const room of branch.opened ?? []) this.own.rooms.set(room.id, room);
    for (const entry of entries) {
      this.own.setRow(entry);
      this.counts.set(entry.id, { ...entry.counts });
      this.since.set(entry.id, branch.seq);
      this.kids.set(entry.id, entry.children);
    }
    this._rows = null;
  }

  apply(event) {
    if (event.seq !== undefined && event.seq <= this.seq) return false;
    if (event.seq !== undefined) this.seq = event.seq;
    const seq = event.seq ?? Infinity;
    const known = (id) => this.counts.has(id) && seq > this.since.get(id);
    const siteId = this.own.siteOf(event);
    const path = event.path?.length ? event.path : this._knownPath(siteId);
    if (!siteId || !path.some(known)) return false;
    let change;
    if (known(siteId)) {
      const site = this.own.byId.get(siteId);
      const before = ownCounts(site, this.own.ownRow(siteId));
      this.own._apply(event);
      const after = ownCounts(site, this.own.ownRow(siteId));
      change = Object.fromEntries(Object.keys(after).map((k) => [k, after[k] - before[k]]));
    } else if (event.type === "presence" && event.was !== undefined) {
      // A site not known: online here means connected (a site in session without one is counted online already).
      const went = Number(event.online > 0) - Number(event.was > 0);
      const village = event.level === "village";
      change = { terminals: event.online - event.was, sites_online: went, villages_online: village ? went : 0 };
    } else {
      this.stale = true;
      return false;
    }
    for (const id of path) {
      if (!known(id)) continue;
      const counts = this.counts.get(id);
      for (const [key, n] of Object.entries(change)) counts[key] = (counts[key] ?? 0) + n;
    }
    this._rows = null;
    return true;
  }

  _knownPath(siteId) {
    const out = [];
    for (let site = this.own.byId.get(siteId); site; site = site.parent ? this.own.byId.get(site.parent) : null) out.push(site.id);
    return out;
  }

  rows() {
    if (this._rows) return this._rows;
    const rows = new Map();
    for (const site of this.own.sites) rows.set(site.id, { ...this.own.ownRow(site.id), rollup: this.counts.get(site.id) });
    this._rows = rows;
    return rows;
  }
}

function siteOf(entry) {
  return pick(entry, ["id", "name", "name_en", "level", "parent", "room_id"]);
}
