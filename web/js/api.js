// The hub's client library: REST calls, WHIP publishing, WHEP viewing and the
// event WebSocket. It knows nothing about any view and shows no text; errors
// carry a machine-readable `kind` the views translate.

const TOKEN_KEY = "hub.token";
const SDP = "application/sdp";

// -- sign-in ------------------------------------------------------------------

/**
 * Take `?token=` from the address bar into sessionStorage and remove it from
 * the URL (so it is not bookmarked, shared or left in history). Returns the
 * token to use: the one from the URL, else the one stored earlier.
 */
export function takeToken(location = window.location) {
  const url = new URL(location.href);
  const fromUrl = url.searchParams.get("token");
  if (fromUrl !== null) {
    url.searchParams.delete("token");
    history.replaceState(history.state, "", url.pathname + url.search + url.hash);
    if (fromUrl.trim()) {
      sessionStorage.setItem(TOKEN_KEY, fromUrl.trim());
    } else {
      sessionStorage.removeItem(TOKEN_KEY);
    }
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

export function forgetToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

// -- errors -------------------------------------------------------------------

/**
 * A failed call. `kind` is one of: "unauthorized" (401), "forbidden" (403),
 * "not-found" (404), "unreachable" (no HTTP answer), "timeout", "http" (any
 * other status), "webrtc" (the peer connection failed locally).
 * `problem` holds the hub's RFC 9457 problem details when it sent them.
 */
export class ApiError extends Error {
  constructor(kind, message, { status = 0, problem = null } = {}) {
    super(message);
    this.name = "ApiError";
    this.kind = kind;
    this.status = status;
    this.problem = problem;
  }
}

function kindOfStatus(status) {
  return { 401: "unauthorized", 403: "forbidden", 404: "not-found" }[status] ?? "http";
}

async function errorFrom(response, what) {
  let problem = null;
  const type = response.headers.get("Content-Type") || "";
  try {
    if (type.includes("json")) problem = await response.json();
  } catch {
    // a body that is not the promised JSON: keep the status alone
  }
  const detail = problem?.detail || problem?.title || response.statusText;
  return new ApiError(kindOfStatus(response.status), `${what}: ${response.status} ${detail}`, {
    status: response.status,
    problem,
  });
}

// -- the client -----------------------------------------------------------------

/** Wait until a peer connection has gathered every ICE candidate (the hub does not trickle). */
export function iceGatheringComplete(pc, timeoutMs = 5000) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      pc.removeEventListener("icegatheringstatechange", check);
      pc.removeEventListener("icecandidate", onCandidate);
      resolve();
    };
    const check = () => {
      if (pc.iceGatheringState === "complete") done();
    };
    const onCandidate = (event) => {
      if (event.candidate === null) done();
    };
    // Gathering can stall on an unreachable interface; send what we have then.
    const timer = setTimeout(done, timeoutMs);
    pc.addEventListener("icegatheringstatechange", check);
    pc.addEventListener("icecandidate", onCandidate);
  });
}

/**
 * One WHIP or WHEP session: its peer connection and the resource to DELETE.
 * `stream` is the MediaStream a WHEP session plays (null for WHIP).
 */
export class MediaSession {
  constructor(client, pc, location, stream = null) {
    this.client = client;
    this.pc = pc;
    this.location = location;
    this.stream = stream;
    this.closed = false;
  }

  /** The id at the end of the Location (the stream id for WHIP, the viewing session for WHEP). */
  get resourceId() {
    return new URL(this.location).pathname.replace(/\/$/, "").split("/").pop();
  }

  /**
   * Tell the hub the size (device pixels) a WHEP session's video is drawn
   * at; 0×0 when it is not seen. The hub picks the simulcast layer from it.
   * Resolves to the layer choice ({simulcast, layer, layers, ...}).
   */
  async setTileSize(width, height) {
    const init = { method: "PATCH", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ width, height }) };
    const response = await this.client.fetch(this.location, init);
    if (!response.ok) throw await errorFrom(response, `PATCH ${this.location}`);
    return response.json();
  }

  /** End the session: DELETE its resource (best effort) and close the peer connection. */
  async close() {
    if (this.closed) return;
    this.closed = true;
    this.sizer?.stop();
    try {
      // keepalive: the DELETE still goes out when the page is being closed.
      const response = await this.client.fetch(this.location, { method: "DELETE", keepalive: true }, 5000);
      if (!response.ok && response.status !== 404) throw await errorFrom(response, `DELETE ${this.location}`);
    } finally {
      this.pc.close();
    }
  }
}

/** Wait this long after a resize before telling the hub: a window being dragged sends one size. */
const TILE_SETTLE_MS = 250;

/**
 * Keeps the hub told of the size a video element draws a WHEP session at:
 * the element's box, narrowed to the picture for object-fit: contain (and
 * widened for cover), in device pixels; 0×0 while the element is off screen,
 * hidden or the page is in the background.
 */
export class TileSizer {
  constructor(session, video) {
    this.session = session;
    this.video = video;
    this.visible = true;
    this.sent = "";
    this.timer = null;
    this.schedule = () => {
      clearTimeout(this.timer);
      this.timer = setTimeout(() => this.send(), TILE_SETTLE_MS);
    };
    this.resizes = new ResizeObserver(this.schedule);
    this.resizes.observe(video);
    this.views = new IntersectionObserver((entries) => {
      this.visible = entries[entries.length - 1].isIntersecting;
      this.schedule();
    });
    this.views.observe(video);
    video.addEventListener("resize", this.schedule); // the picture's own size is known, or changed
    document.addEventListener("visibilitychange", this.schedule);
  }

  size() {
    const v = this.video;
    if (!this.visible || document.hidden || !v.isConnected) return [0, 0];
    let width = v.clientWidth;
    let height = v.clientHeight;
    if (v.videoWidth && v.videoHeight && width && height) {
      const fit = getComputedStyle(v).objectFit;
      const scale = (fit === "cover" ? Math.max : Math.min)(width / v.videoWidth, height / v.videoHeight);
      if (fit !== "fill") [width, height] = [v.videoWidth * scale, v.videoHeight * scale];
    }
    const ratio = window.devicePixelRatio || 1;
    width = Math.round(width * ratio);
    height = Math.round(height * ratio);
    return width && height ? [width, height] : [0, 0];
  }

  async send() {
    if (this.session.closed) return;
    const [width, height] = this.size();
    const key = `${width}x${height}`;
    if (key === this.sent) return;
    this.sent = key;
    try {
      this.session.layer = await this.session.setTileSize(width, height);
    } catch (err) {
      this.sent = ""; // say it again at the next change
      console.warn("tile size", err);
    }
  }

  stop() {
    clearTimeout(this.timer);
    this.resizes.disconnect();
    this.views.disconnect();
    this.video.removeEventListener("resize", this.schedule);
    document.removeEventListener("visibilitychange", this.schedule);
  }
}

/**
 * The layers the room page publishes its camera in, lowest first: ¼, ½ and
 * full size. The caps stay under Chromium's own simulcast maxima for those
 * sizes of a 720p camera (webrtc's simulcast.cc: 200 kbit/s at 320×180,
 * 700 at 640×360, 2500 at 1280×720), lower at the top because a village
 * centre's uplink is thin and the full layer only serves large tiles.
 */
export const SIMULCAST_LAYERS = [
  { rid: "q", scaleResolutionDownBy: 4, maxBitrate: 150_000 },
  { rid: "h", scaleResolutionDownBy: 2, maxBitrate: 500_000 },
  { rid: "f", scaleResolutionDownBy: 1, maxBitrate: 1_500_000 },
];

export class HubClient {
  /**
   * @param {string} token bearer token
   * @param {object} [options]
   * @param {string} [options.baseUrl] the hub's URL (default: this page's origin)
   * @param {RTCIceServer[]} [options.iceServers] STUN/TURN servers for media; by default those
   *   the hub hands out (GET /api/ice-servers)
   * @param {number} [options.timeoutMs] bound of each HTTP call
   */
  constructor(token, { baseUrl = window.location.origin, iceServers = null, timeoutMs = 15000 } = {}) {
    this.token = token;
    this.baseUrl = baseUrl.replace(/\/$/, "");
    this.iceServers = iceServers;
    this.timeoutMs = timeoutMs;
    this._hubIce = null;
  }

  /**
   * The iceServers for a new peer connection: the constructor's, else the hub's, whose TURN
   * credentials are minted for this token's user and asked for again a minute before they expire.
   */
  async iceConfiguration() {
    if (this.iceServers) return this.iceServers;
    const expires = this._hubIce?.expires_at;
    if (!this._hubIce || (expires != null && expires - 60 < Date.now() / 1000)) {
      this._hubIce = await this.request("GET", "/api/ice-servers");
    }
    return this._hubIce.ice_servers;
  }

  url(path) {
    return new URL(path, this.baseUrl + "/").href;
  }

  /** fetch() with the bearer token and a time bound; network failures become ApiError("unreachable"). */
  async fetch(path, init = {}, timeoutMs = this.timeoutMs) {
    const headers = new Headers(init.headers || {});
    headers.set("Authorization", `Bearer ${this.token}`);
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), timeoutMs);
    try {
      return await fetch(this.url(path), { ...init, headers, signal: controller.signal });
    } catch (err) {
      if (controller.signal.aborted) throw new ApiError("timeout", `${init.method || "GET"} ${path}: timed out`);
      throw new ApiError("unreachable", `${init.method || "GET"} ${path}: ${err.message}`);
    } finally {
      clearTimeout(timer);
    }
  }

  /** A JSON API call; resolves to the decoded body, rejects with ApiError. */
  async request(method, path, body = undefined) {
    const init = { method, headers: { Accept: "application/json" } };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await this.fetch(path, init);
    if (!response.ok) throw await errorFrom(response, `${method} ${path}`);
    return response.json();
  }

  /** The caller: {user, name, role, site, room}. */
  me() {
    return this.request("GET", "/api/me");
  }

  /** Sites of the caller's jurisdiction, parents first. */
  sites() {
    return this.request("GET", "/api/sites");
  }

  site(siteId) {
    return this.request("GET", `/api/sites/${encodeURIComponent(siteId)}`);
  }

  /** Live or opened rooms in the caller's jurisdiction, each with participant_count. */
  rooms() {
    return this.request("GET", "/api/rooms");
  }

  /** A room with its participants and streams. */
  room(roomId) {
    return this.request("GET", `/api/rooms/${encodeURIComponent(roomId)}`);
  }

  openRoom(siteId, kind, title = "") {
    return this.request("POST", "/api/rooms", { site_id: siteId, kind, title });
  }

  stream(streamId) {
    return this.request("GET", `/api/streams/${encodeURIComponent(streamId)}`);
  }

  /** A guest invite link for a room: {url, token, expires_at}; `ttl` is 1800, 7200 or 86400 seconds. */
  createInvite(roomId, ttl) {
    return this.request("POST", `/api/rooms/${encodeURIComponent(roomId)}/invites`, { ttl });
  }

  /** The room's site and the sites above it, nearest first. */
  roomSites(roomId) {
    return this.request("GET", `/api/rooms/${encodeURIComponent(roomId)}/sites`);
  }

  /** POST an SDP offer; resolves to {answer, location} with the Location made absolute. */
  async exchange(path, offer) {
    const response = await this.fetch(path, { method: "POST", headers: { "Content-Type": SDP }, body: offer });
    if (response.status !== 201) throw await errorFrom(response, `POST ${path}`);
    const answer = await response.text();
    const location = response.headers.get("Location");
    if (!location) throw new ApiError("http", `POST ${path}: 201 without a Location`, { status: 201 });
    return { answer, location: new URL(location, response.url).href };
  }

  async _negotiate(pc, path) {
    try {
      await pc.setLocalDescription(await pc.createOffer());
      await iceGatheringComplete(pc);
      const { answer, location } = await this.exchange(path, pc.localDescription.sdp);
      await pc.setRemoteDescription({ type: "answer", sdp: answer });
      return location;
    } catch (err) {
      pc.close();
      if (err instanceof ApiError) throw err;
      throw new ApiError("webrtc", `${path}: ${err.message}`);
    }
  }

  /**
   * Watch a stream with WHEP: receive its video and audio and play them in
   * `videoElement` (its srcObject is set as tracks arrive). Resolves to a
   * MediaSession; close() it to stop watching. Unless `tileSize` is false,
   * the hub is kept told of the size the element draws the video at
   * (TileSizer), so that it sends the simulcast layer that size needs.
   */
  async whepView(streamId, videoElement, { tileSize = true } = {}) {
    const pc = new RTCPeerConnection({ iceServers: await this.iceConfiguration() });
    pc.addTransceiver("video", { direction: "recvonly" });
    pc.addTransceiver("audio", { direction: "recvonly" });
    const stream = new MediaStream();
    pc.addEventListener("track", (event) => {
      stream.addTrack(event.track);
      if (videoElement && videoElement.srcObject !== stream) videoElement.srcObject = stream;
    });
    const location = await this._negotiate(pc, `/whep/${encodeURIComponent(streamId)}`);
    const session = new MediaSession(this, pc, location, stream);
    if (videoElement && tileSize) session.sizer = new TileSizer(session, videoElement);
    return session;
  }

  /**
   * Publish a MediaStream (at most one video and one audio track) into a
   * room with WHIP. `kind` is "camera" or "screen"; `participant` attaches
   * the stream to the caller's event-socket participant in that room;
   * `simulcast` sends the video in SIMULCAST_LAYERS (the hub gives each
   * viewer the layer its tile needs). Resolves to a MediaSession whose resourceId is the new stream's id.
   */
  async whipPublish(roomId, mediaStream, { kind = "camera", participant = null, simulcast = false } = {}) {
    const pc = new RTCPeerConnection({ iceServers: await this.iceConfiguration() });
    for (const track of mediaStream.getTracks()) {
      const init = { direction: "sendonly", streams: [mediaStream] };
      if (simulcast && track.kind === "video") init.sendEncodings = SIMULCAST_LAYERS.map((layer) => ({ ...layer }));
      pc.addTransceiver(track, init);
    }
    const query = new URLSearchParams({ kind });
    if (participant) query.set("participant", participant);
    const location = await this._negotiate(pc, `/whip/${encodeURIComponent(roomId)}?${query}`);
    return new MediaSession(this, pc, location);
  }

  /** The event WebSocket for this client's token (not yet connected). */
  events(options = {}) {
    return new Events(this.token, { baseUrl: this.baseUrl, ...options });
  }

  // -- recordings ---------------------------------------------------------------

  /** Start (true) or stop (false) recording a room: {room_id, on, recording}. */
  setRecording(roomId, on) {
    return this.request("POST", `/api/rooms/${encodeURIComponent(roomId)}/recording`, { on });
  }

  recordingState(roomId) {
    return this.request("GET", `/api/rooms/${encodeURIComponent(roomId)}/recording`);
  }

  /** Search recordings; filters: {site, from, to, kind, q} (empty ones are left out). */
  recordings(filters = {}) {
    const query = new URLSearchParams(Object.entries(filters).filter(([, v]) => v !== "" && v != null));
    return this.request("GET", `/api/recordings?${query}`);
  }

  /** A recording's manifest: participants, streams, segments with hashes. */
  recording(id) {
    return this.request("GET", `/api/recordings/${encodeURIComponent(id)}`);
  }

  /** URL of a file of a recording for a media element, which cannot send headers: the token rides in the query. */
  recordingFileUrl(id, path) {
    const encoded = path.split("/").map(encodeURIComponent).join("/");
    return this.url(`/api/recordings/${encodeURIComponent(id)}/files/${encoded}?token=${encodeURIComponent(this.token)}`);
  }

  verifyRecording(id) {
    return this.request("GET", `/api/recordings/${encodeURIComponent(id)}/verify`);
  }

  /** Start the one-file export; resolves to the job {state, progress, ...}. */
  exportRecording(id) {
    return this.request("POST", `/api/recordings/${encodeURIComponent(id)}/export`);
  }

  exportStatus(id) {
    return this.request("GET", `/api/recordings/${encodeURIComponent(id)}/export`);
  }

  recordingExportUrl(id) {
    return this.url(`/api/recordings/${encodeURIComponent(id)}/export/file?token=${encodeURIComponent(this.token)}`);
  }

  /** Audit rows of the caller's jurisdiction (operators and admins); optionally of one recording. */
  audit(recordingId = "") {
    const query = recordingId ? `?recording=${encodeURIComponent(recordingId)}` : "";
    return this.request("GET", `/api/audit${query}`);
  }

  // -- trainings ----------------------------------------------------------------------

  /** Trainings of the caller's branch and below, newest first; `all` includes ended ones. */
  trainings(all = false) {
    return this.request("GET", `/api/trainings${all ? "?all=1" : ""}`);
  }

  /** Start a training for a branch (its root site id): resolves to the training with its `room`. */
  startTraining(title, branch) {
    return this.request("POST", "/api/trainings", { title, branch });
  }

  endTraining(roomId) {
    return this.request("POST", `/api/trainings/${encodeURIComponent(roomId)}/end`);
  }

  /** Let an attendee speak (publish); the room hears participant-updated with speaker: true. */
  letSpeak(roomId, participantId) {
    return this.request("POST", `/api/trainings/${encodeURIComponent(roomId)}/speakers`, { participant_id: participantId });
  }

  /** Return a speaker to watching; the hub ends their streams. */
  stopSpeaking(roomId, participantId) {
    const path = `/api/trainings/${encodeURIComponent(roomId)}/speakers/${encodeURIComponent(participantId)}`;
    return this.request("DELETE", path);
  }

  /** {training, attendance: [{site_id, site_name, user, name, role, joined_at, left_at, minutes, interrupted}]} */
  attendance(roomId) {
    return this.request("GET", `/api/trainings/${encodeURIComponent(roomId)}/attendance`);
  }

  /** The sites of a training's branch (names for the room's attendees). */
  trainingSites(roomId) {
    return this.request("GET", `/api/trainings/${encodeURIComponent(roomId)}/sites`);
  }

  /** The attendance as a CSV download link (a link cannot send the token header). */
  attendanceCsvUrl(roomId) {
    const query = new URLSearchParams({ format: "csv", token: this.token });
    return this.url(`/api/trainings/${encodeURIComponent(roomId)}/attendance?${query}`);
  }

  // -- the console ------------------------------------------------------------------

  /** Live status of every site of a branch (default: the caller's home) with rollups. */
  consoleStatus(siteId = "", { compact = false } = {}) {
    const query = new URLSearchParams();
    if (siteId) query.set("site", siteId);
    if (compact) query.set("compact", "1");
    const text = query.toString();
    return this.request("GET", `/api/console/status${text ? `?${text}` : ""}`);
  }

  /** One branch of a big tree: the site and its children, each with its branch's counts. */
  consoleBranch(siteId = "") {
    return this.request("GET", `/api/console/branch${siteId ? `?site=${encodeURIComponent(siteId)}` : ""}`);
  }

  /** The caller's saved wall layouts: {layouts: [{name, grid, panes, patrol}], current}. */
  consoleLayouts() {
    return this.request("GET", "/api/console/layouts");
  }

  saveConsoleLayouts(layouts) {
    return this.request("PUT", "/api/console/layouts", layouts);
  }

  /** URL of a stream's latest snapshot for an <img>, which cannot send headers. */
  snapshotUrl(streamId) {
    return this.url(`/api/streams/${encodeURIComponent(streamId)}/snapshot?token=${encodeURIComponent(this.token)}`);
  }

  // -- emergency calls and convening ---------------------------------------------
  // A 409 (answered by someone else, cancelled, missed, or the site already
  // rings) rejects with ApiError status 409 whose problem.call says how it ended.

  /** Ringing and recent calls of the caller's jurisdiction, newest first. */
  calls() {
    return this.request("GET", "/api/calls");
  }

  /** Call for help from the caller's home site; resolves to the ringing call. */
  callForHelp(note = "") {
    return this.request("POST", "/api/calls", note ? { note } : {});
  }

  /** Answer a ringing call (operators): resolves to {call, room} for the one who wins. */
  answerCall(callId) {
    return this.request("POST", `/api/calls/${encodeURIComponent(callId)}/answer`);
  }

  cancelCall(callId) {
    return this.request("DELETE", `/api/calls/${encodeURIComponent(callId)}`);
  }

  /** Convene sites into a conference at the caller's site; resolves to the room. */
  convene(title, sites) {
    return this.request("POST", "/api/conferences", { title, sites });
  }

  /** {room_id, title, sites: [{site_id, name, name_en, joined, since, participants}]} */
  rollcall(roomId) {
    return this.request("GET", `/api/conferences/${encodeURIComponent(roomId)}/rollcall`);
  }

  // -- mediation cases and statistics ---------------------------------------------
  // A change the case's state does not allow rejects with ApiError status 409
  // (problem.case: the case as it is). `version`: change only that version of
  // the case (the one shown), so a change decided on a stale view is refused.

  /** Cases the caller may read, newest first; filters: {site, status, queue: "mine"}. */
  cases(filters = {}) {
    return this.request("GET", `/api/cases?${queryOf(filters)}`);
  }

  /** A case with history, sessions (each with its recordings) and the caller's allowed actions. */
  caseDetail(caseId) {
    return this.request("GET", `/api/cases/${encodeURIComponent(caseId)}`);
  }

  /** Open a case: {site_id?, title, dispute_type, parties: [{name, role?, phone?}], summary}. */
  openCase(body) {
    return this.request("POST", "/api/cases", body);
  }

  /** Change {status?, outcome?, version?}. */
  updateCase(caseId, changes) {
    return this.request("PATCH", `/api/cases/${encodeURIComponent(caseId)}`, changes);
  }

  /** Hold a session: resolves to the session with its mediation room ({room_id, room, ...}). */
  holdSession(caseId) {
    return this.request("POST", `/api/cases/${encodeURIComponent(caseId)}/sessions`);
  }

  escalateCase(caseId, note = "", version = undefined) {
    return this.request("POST", `/api/cases/${encodeURIComponent(caseId)}/escalate`, { note, version });
  }

  /** Departments a room or case of the site may call in: beside it and the sites above it. */
  departments(site) {
    return this.request("GET", `/api/departments?${queryOf({ site })}`);
  }

  /** Refer a case to a department: {department_id, ask, note, version?}. */
  referCase(caseId, referral) {
    return this.request("POST", `/api/cases/${encodeURIComponent(caseId)}/referrals`, referral);
  }

  /** A department's answer to a referral: {decision, outcome, document_no}. */
  answerReferral(caseId, referralId, answer) {
    const path = `/api/cases/${encodeURIComponent(caseId)}/referrals/${encodeURIComponent(referralId)}/answer`;
    return this.request("POST", path, answer);
  }

  /** Statistics of a branch over a period; filters: {site, from, to}. */
  stats(filters = {}) {
    return this.request("GET", `/api/stats?${queryOf(filters)}`);
  }

  /** The same statistics as a CSV download link (a link cannot send the token header). */
  statsCsvUrl(filters = {}) {
    return this.url(`/api/stats.csv?${queryOf({ ...filters, token: this.token })}`);
  }
}

/** A query string of the filters that are set. */
function queryOf(filters) {
  return new URLSearchParams(Object.entries(filters).filter(([, v]) => v !== "" && v != null));
}

// -- the event WebSocket --------------------------------------------------------

const REPLY_TYPES = new Set(["joined", "left", "pong", "ack", "error"]);

/**
 * The event WebSocket (`/ws?token=`): join and leave rooms, receive their
 * events. Listen with `events.on(type, fn)` for any message type — "hello",
 * "participant-joined", "participant-left", "participant-updated", "stream-added",
 * "stream-removed", "room-opened", "room-closed", "chat", "invitation" — or "message" for all of them, and "state" for the
 * connection state ("connecting", "open", "closed"; detail `{state}`).
 *
 * join/leave/ping resolve with the hub's reply (joined/left/pong) or reject
 * with an Error carrying `code` when it answers `error`. The hub answers in
 * order, so replies are matched to requests first-in first-out.
 *
 * After an unexpected close it reconnects with backoff and joins its rooms
 * again; each new `joined` reply carries a fresh snapshot of the room.
 */
function joinMessage(room, name, watch) {
  return { type: "join", room, ...(name ? { name } : {}), ...(watch ? { watch } : {}) };
}

export class Events {
  constructor(token, { baseUrl = window.location.origin, reconnect = true, replyTimeoutMs = 10000 } = {}) {
    const url = new URL("/ws", baseUrl);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    url.searchParams.set("token", token);
    this.url = url.href;
    this.reconnect = reconnect;
    this.replyTimeoutMs = replyTimeoutMs;
    this.rooms = new Map(); // room id -> {name, watch} (rooms to be in)
    this.monitoring = false; // sent {"type": "monitor"} (the console)
    this.state = "closed";
    this._target = new EventTarget();
    this._pending = [];
    this._ws = null;
    this._retry = 0;
    this._retryTimer = null;
    this._stopped = false;
  }

  on(type, fn) {
    const listener = (event) => fn(event.detail);
    this._target.addEventListener(type, listener);
    return () => this._target.removeEventListener(type, listener);
  }

  _emit(type, detail) {
    this._target.dispatchEvent(new CustomEvent(type, { detail }));
  }

  _setState(state) {
    if (this.state === state) return;
    this.state = state;
    this._emit("state", { state });
  }

  /** Open the socket; resolves on the hub's hello. */
  connect() {
    this._stopped = false;
    return new Promise((resolve, reject) => {
      let greeted = false;
      this._setState("connecting");
      const ws = new WebSocket(this.url);
      this._ws = ws;
      ws.addEventListener("message", (event) => {
        let message;
        try {
          message = JSON.parse(event.data);
        } catch {
          return;
        }
        if (message.type === "hello" && !greeted) {
          greeted = true;
          this._retry = 0;
          this._setState("open");
          resolve(message);
          if (this.monitoring) this._request({ type: "monitor", on: true }).catch(() => {});
          this._rejoin();
        }
        this._dispatch(message);
      });
      ws.addEventListener("close", () => {
        if (this._ws !== ws) return;
        this._ws = null;
        this._failPending(new Error("event socket closed"));
        this._setState("closed");
        if (!greeted) reject(new ApiError("unreachable", "event socket closed before hello"));
        this._scheduleReconnect();
      });
    });
  }

  _dispatch(message) {
    if (REPLY_TYPES.has(message.type) && this._pending.length) {
      const pending = this._pending.shift();
      clearTimeout(pending.timer);
      if (message.type === "error") {
        const err = new Error(message.message);
        err.code = message.code;
        pending.reject(err);
      } else {
        pending.resolve(message);
      }
    }
    // The hub has taken this socket out of a closed room: do not join it again on reconnect.
    if (message.type === "room-closed") this.rooms.delete(message.room_id);
    this._emit(message.type, message);
    this._emit("message", message);
  }

  _failPending(err) {
    for (const pending of this._pending.splice(0)) {
      clearTimeout(pending.timer);
      pending.reject(err);
    }
  }

  _scheduleReconnect() {
    if (this._stopped || !this.reconnect || this._retryTimer) return;
    const delay = Math.min(10000, 500 * 2 ** this._retry++);
    this._retryTimer = setTimeout(() => {
      this._retryTimer = null;
      this.connect().catch(() => {});
    }, delay);
  }

  _rejoin() {
    for (const [room, { name, watch }] of this.rooms) {
      this._request(joinMessage(room, name, watch)).catch((err) => {
        this.rooms.delete(room);
        this._emit("join-failed", { room, error: err });
      });
    }
  }

  _request(message) {
    return new Promise((resolve, reject) => {
      if (!this._ws || this._ws.readyState !== WebSocket.OPEN) {
        reject(new Error("event socket is not open"));
        return;
      }
      const pending = { resolve, reject, timer: null };
      pending.timer = setTimeout(() => {
        const i = this._pending.indexOf(pending);
        if (i >= 0) this._pending.splice(i, 1);
        reject(new Error(`no reply to ${message.type}`));
      }, this.replyTimeoutMs);
      this._pending.push(pending);
      this._ws.send(JSON.stringify(message));
    });
  }

  /**
   * Join a room: resolves to the `joined` reply {room, participant, participants, streams}.
   * With `watch`, receive the room's events without becoming a participant (participant: null).
   */
  async join(room, name = null, { watch = false } = {}) {
    const reply = await this._request(joinMessage(room, name, watch));
    this.rooms.set(room, { name, watch });
    return reply;
  }

  async leave(room) {
    this.rooms.delete(room);
    return this._request({ type: "leave", room });
  }

  ping() {
    return this._request({ type: "ping" });
  }

  /** Tell a joined room whether our microphone and camera are on. */
  sendState(room, audio, video) {
    return this._request({ type: "state", room, audio, video });
  }

  chat(room, text) {
    return this._request({ type: "chat", room, text });
  }

  raiseHand(room, raised) {
    return this._request({ type: "hand", room, raised });
  }

  /** Invite a site above the room's site; its users get an `invitation` event. */
  /** Start (on) or stop the room's recording; the room hears recording-started/-stopped. */
  record(room, on) {
    return this._request({ type: "record", room, on });
  }

  inviteSite(room, site) {
    return this._request({ type: "invite-site", room, site });
  }

  /** Admit a department into an opened room; its users get an `invitation` event. */
  inviteDepartment(room, department) {
    return this._request({ type: "invite-department", room, department });
  }

  /** Receive the room activity and presence of the whole jurisdiction (the console); sent again after a reconnect. */
  async monitor(on = true) {
    this.monitoring = on;
    return this._request({ type: "monitor", on });
  }

  /** Close for good: no reconnect. */
  close() {
    this._stopped = true;
    clearTimeout(this._retryTimer);
    this._retryTimer = null;
    const ws = this._ws;
    this._ws = null;
    this._failPending(new Error("event socket closed"));
    if (ws) ws.close(1000);
    this._setState("closed");
  }
}
