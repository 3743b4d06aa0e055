// The home view of the command centre: the site tree of the caller's
// jurisdiction with live rooms marked, and the pictures of the chosen site.
// It talks to the hub only through api.js.

import { ApiError } from "./api.js";
import { $, apiErrorKey as errorKey, el, hideFatal, hubClient, indexSites, renderBanner, replaceTree, showFatal, startFailed, treeKeys } from "./dom.js";
import * as i18n from "./i18n.js";
import { mountHelp } from "./help.js"; // dispatch: the call-for-help button
import { mountTopbar, setTopbar } from "./topbar.js";

const { t } = i18n;

const ROOMS_REFRESH_MS = 5000;
const BOOT_RETRY_MS = 5000;
const RETRY_TILE_MS = 3000;

// -- state ------------------------------------------------------------------------

const state = {
  client: null,
  events: null,
  me: null,
  sites: [],
  byId: new Map(),
  children: new Map(), // site id -> child ids
  roots: [],
  depth: new Map(),
  rooms: [], // from GET /api/rooms
  expanded: new Set(),
  selectedSite: null,
  shownRoom: null, // room id whose pictures are on the stage
  showSeq: 0, // guards against late replies for a room no longer shown
  participants: new Map(), // of shownRoom
  rosterLoaded: false,
  tiles: new Map(), // stream id -> Tile
  invitations: [], // `invitation` events not yet acted on, newest last
  banner: null, // [key, params]
  refreshTimer: null,
  stopped: false,
};

// -- messages -----------------------------------------------------------------------

function setBanner(key = null, params = {}) {
  state.banner = key ? [key, params] : null;
  renderBanner(state.banner);
}

/** A failed call after start-up: an expired token ends the session, anything else is a banner. */
function reportError(err) {
  console.warn(err);
  const [key, params] = errorKey(err);
  if (err instanceof ApiError && err.kind === "unauthorized") {
    stop();
    showFatal(key, params);
  } else {
    setBanner(key, params);
  }
}

function stop() {
  state.stopped = true;
  clearTimeout(state.refreshTimer);
  const events = state.events;
  state.events = null; // no "reconnecting" indicator over a fatal message
  events?.close();
  setTopbar({ events: null });
  for (const tile of state.tiles.values()) tile.close();
  state.tiles.clear();
}

// -- header -------------------------------------------------------------------------

function renderHeader() {
  document.title = t("app.title");
  setTopbar({ me: state.me, events: state.events });
}

// -- the site tree ------------------------------------------------------------------

function setSites(sites) {
  state.sites = sites;
  Object.assign(state, indexSites(sites));
  for (const site of sites) {
    if (state.depth.get(site.id) < 2) state.expanded.add(site.id);
  }
}

/** Live rooms of a site, standing room first; `live` counts people other than us. */
function liveRoomsOf(siteId) {
  return state.rooms
    .filter((r) => r.site_id === siteId)
    .map((r) => ({ ...r, live: liveCount(r) }))
    .filter((r) => r.live > 0)
    .sort((a, b) => (a.kind === "standing" ? -1 : 0) - (b.kind === "standing" ? -1 : 0) || a.id.localeCompare(b.id));
}

/** People in a room: for the room on the stage, from its live roster (we only watch it). */
function liveCount(room) {
  if (room.id === state.shownRoom && state.rosterLoaded) return state.participants.size;
  return room.participant_count || 0;
}

function expandToLiveSites() {
  for (const room of state.rooms) {
    if (liveCount(room) <= 0) continue;
    let site = state.byId.get(room.site_id);
    while (site && site.parent && state.byId.has(site.parent)) {
      state.expanded.add(site.parent);
      site = state.byId.get(site.parent);
    }
  }
}

function renderTree() {
  const tree = $("tree");
  replaceTree(tree, state.roots.map(renderNode));
  const department = state.me?.department;
  // A department reaches no site: its home page offers its own room, and invitations as they come.
  if (department)
    tree.append(
      el("li", { class: "tree-department" }, el("a", { href: `/rooms/${encodeURIComponent(department.room_id)}` }, `${i18n.siteName(department)} · ${t("department.ownRoom")}`)),
    );
  else if (!state.sites.length) tree.append(el("li", { class: "tree-empty" }, t("tree.empty")));
  const liveSites = new Set(state.rooms.filter((r) => liveCount(r) > 0).map((r) => r.site_id));
  $("tree-summary").textContent = `${t("tree.sites", { n: state.sites.length })} · ${t("tree.liveSites", { n: liveSites.size })}`;
}

function renderNode(siteId) {
  const site = state.byId.get(siteId);
  const kids = state.children.get(siteId);
  const open = state.expanded.has(siteId);
  const live = liveRoomsOf(siteId).reduce((n, r) => n + r.live, 0);
  const twisty = kids.length
    ? el("button", {
        class: "twisty",
        type: "button",
        "aria-label": t(open ? "tree.collapse" : "tree.expand"),
        dataset: { toggle: siteId },
      })
    : el("span", { class: "twisty leaf", "aria-hidden": "true" });
  const row = el(
    "div",
    {
      class: `node${state.selectedSite === siteId ? " selected" : ""}${live ? " live" : ""}`,
      style: `--depth:${state.depth.get(siteId)}`,
      dataset: { select: siteId },
      tabindex: "0",
    },
    twisty,
    el("span", { class: `level level-${site.level}` }, i18n.levelLabel(site.level)),
    el("span", { class: "name", title: i18n.siteName(site) }, i18n.siteName(site)),
    live ? el("span", { class: "badge-live", title: t("tree.liveCount", { n: live }) }, t("tree.live")) : null,
  );
  const item = el(
    "li",
    {
      role: "treeitem",
      "aria-selected": state.selectedSite === siteId ? "true" : "false",
      "aria-expanded": kids.length ? String(open) : null,
      dataset: { siteId },
    },
    row,
  );
  if (kids.length && open) item.append(el("ul", { role: "group" }, ...kids.map(renderNode)));
  return item;
}

function onTreeClick(event) {
  const toggle = event.target.closest("[data-toggle]");
  if (toggle) {
    const id = toggle.dataset.toggle;
    if (state.expanded.has(id)) state.expanded.delete(id);
    else state.expanded.add(id);
    renderTree();
    return;
  }
  const row = event.target.closest("[data-select]");
  if (row) selectSite(row.dataset.select);
}

// -- rooms ----------------------------------------------------------------------------

async function refreshRooms() {
  clearTimeout(state.refreshTimer);
  if (state.stopped) return;
  try {
    state.rooms = await state.client.rooms();
    if (state.banner && ["error.unreachable", "error.server"].includes(state.banner[0])) setBanner(null);
    renderTree();
    syncStage();
  } catch (err) {
    reportError(err);
  }
  if (!state.stopped) state.refreshTimer = setTimeout(refreshRooms, ROOMS_REFRESH_MS);
}

// -- the stage --------------------------------------------------------------------------

function selectSite(siteId) {
  if (!state.byId.has(siteId)) return;
  state.selectedSite = siteId;
  if (state.banner && ["error.forbidden", "error.notFound"].includes(state.banner[0])) setBanner(null);
  renderTree();
  syncStage();
}

/** Show the right room for the selected site: keep the one shown if it is still there. */
function syncStage() {
  const siteId = state.selectedSite;
  if (!siteId) {
    renderStage();
    return;
  }
  const live = liveRoomsOf(siteId);
  const shown = state.shownRoom && state.rooms.find((r) => r.id === state.shownRoom);
  if (shown && shown.site_id === siteId) {
    renderStage();
    return;
  }
  if (live.length) showRoom(live[0].id);
  else {
    hideRoom();
    renderStage();
  }
}

async function showRoom(roomId) {
  if (state.shownRoom === roomId) return;
  hideRoom();
  state.shownRoom = roomId;
  const seq = ++state.showSeq;
  renderStage();
  try {
    const detail = await state.client.room(roomId);
    if (seq !== state.showSeq) return;
    setRoster(detail.participants);
    reconcileTiles(detail.streams);
  } catch (err) {
    if (seq === state.showSeq) reportError(err);
    return;
  }
  const events = state.events;
  if (!events || events.state !== "open") return; // syncJoin joins once the socket opens
  try {
    const reply = await events.join(roomId, null, { watch: true });
    if (seq !== state.showSeq) {
      events.leave(roomId).catch(() => {});
      return;
    }
    onJoined(reply);
  } catch (err) {
    console.warn("join", roomId, err);
  }
}

function hideRoom() {
  const roomId = state.shownRoom;
  state.showSeq++;
  state.shownRoom = null;
  state.participants.clear();
  state.rosterLoaded = false;
  for (const tile of state.tiles.values()) tile.close();
  state.tiles.clear();
  if (roomId && state.events?.rooms.has(roomId)) state.events.leave(roomId).catch(() => {});
}

function onJoined(reply) {
  if (reply.room?.id !== state.shownRoom) return;
  setRoster(reply.participants);
  reconcileTiles(reply.streams);
}

function setRoster(participants) {
  state.participants = new Map((participants || []).map((p) => [p.id, p]));
  state.rosterLoaded = true;
  renderTree();
  renderStage();
}

function reconcileTiles(streams) {
  const ids = new Set(streams.map((s) => s.id));
  for (const [id, tile] of state.tiles) {
    if (!ids.has(id)) removeTile(id, tile);
  }
  for (const stream of streams) addTile(stream);
}

function addTile(stream) {
  if (state.tiles.has(stream.id) || stream.room_id !== state.shownRoom) return;
  const tile = new Tile(stream);
  state.tiles.set(stream.id, tile);
  $("grid").append(tile.el);
  tile.start();
  renderStage();
}

function removeTile(streamId, tile = state.tiles.get(streamId)) {
  if (!tile) return;
  state.tiles.delete(streamId);
  tile.close();
  renderStage();
}

function renderStage() {
  const siteId = state.selectedSite;
  const header = $("stage-header");
  const grid = $("grid");
  const empty = $("empty");
  if (!siteId) {
    header.hidden = true;
    showEmpty("home.pickSite", "home.pickSiteHint");
    return;
  }
  const site = state.byId.get(siteId);
  header.hidden = false;
  $("stage-level").textContent = i18n.levelLabel(site.level);
  $("stage-level").className = `level level-${site.level}`;
  $("stage-site").textContent = i18n.siteName(site);

  const live = liveRoomsOf(siteId);
  const tabs = $("room-tabs");
  const tabRooms = [...live];
  if (state.shownRoom && !tabRooms.some((r) => r.id === state.shownRoom)) {
    const shown = state.rooms.find((r) => r.id === state.shownRoom);
    if (shown) tabRooms.unshift({ ...shown, live: liveCount(shown) });
  }
  tabs.replaceChildren(
    ...tabRooms.map((room) =>
      el(
        "button",
        {
          type: "button",
          class: `room-tab${room.id === state.shownRoom ? " active" : ""}`,
          dataset: { room: room.id },
          onclick: () => showRoom(room.id),
        },
        room.kind === "standing" || !room.title
          ? t(`room.kind.${room.kind}`)
          : `${t(`room.kind.${room.kind}`)} · ${room.title}`,
      ),
    ),
  );
  tabs.hidden = tabRooms.length < 2;

  const enter = $("enter-room");
  enter.hidden = !state.shownRoom;
  enter.textContent = t("home.enterRoom");
  if (state.shownRoom) enter.href = `/rooms/${encodeURIComponent(state.shownRoom)}`;

  if (!state.shownRoom) {
    $("stage-stats").textContent = "";
    grid.hidden = true;
    showEmpty("home.noLiveRoom", "home.noLiveRoomHint");
    return;
  }
  const others = state.participants.size;
  $("stage-stats").textContent = [
    t(`room.kind.${state.rooms.find((r) => r.id === state.shownRoom)?.kind ?? "standing"}`),
    t("home.participants", { n: others }),
    t("home.streams", { n: state.tiles.size }),
  ].join(" · ");
  grid.hidden = state.tiles.size === 0;
  grid.dataset.count = String(state.tiles.size);
  if (state.tiles.size) empty.hidden = true;
  else showEmpty("home.noStreams", "home.noStreamsHint");
}

function showEmpty(titleKey, hintKey) {
  $("grid").hidden = true;
  $("empty").hidden = false;
  $("empty").dataset.state = titleKey;
  $("empty-title").textContent = t(titleKey);
  $("empty-hint").textContent = t(hintKey);
}

// -- video tiles ----------------------------------------------------------------------

class Tile {
  constructor(stream) {
    this.stream = stream;
    this.session = null;
    this.closed = false;
    this.status = "tile.connecting";
    this.retryTimer = null;
    this.video = el("video", { autoplay: true, playsinline: true, muted: true });
    this.video.muted = true; // autoplay without a gesture needs a muted element
    this.video.addEventListener("playing", () => this.setStatus("tile.live"));
    this.statusEl = el("span", { class: "tile-status" });
    this.nameEl = el("span", { class: "tile-name" });
    this.siteEl = el("span", { class: "tile-site" });
    this.kindEl = el("span", { class: "tile-kind" });
    this.retryEl = el("button", { class: "tile-retry", type: "button", hidden: true, onclick: () => this.restart() });
    this.el = el(
      "figure",
      { class: "tile", dataset: { streamId: stream.id } },
      el("div", { class: "tile-video" }, this.video, this.statusEl, this.retryEl),
      el("figcaption", {}, this.nameEl, this.siteEl, this.kindEl),
    );
    this.render();
  }

  render() {
    const site = state.byId.get(this.stream.site_id);
    this.nameEl.textContent = this.stream.name || this.stream.user || "";
    this.siteEl.textContent = site ? i18n.siteName(site) : t("tile.unknownSite");
    // A screen share and a camera the hub pulls (no participant) say what they are.
    const labelled = this.stream.kind === "screen" || this.stream.kind === "ipcam";
    this.kindEl.textContent = labelled ? t(`stream.kind.${this.stream.kind}`) : "";
    this.kindEl.hidden = !labelled;
    this.statusEl.textContent = t(this.status);
    this.el.dataset.status = this.status.slice("tile.".length);
    this.retryEl.textContent = t("tile.retry");
  }

  setStatus(status) {
    this.status = status;
    this.retryEl.hidden = status !== "tile.failed";
    this.render();
  }

  async start() {
    this.setStatus("tile.connecting");
    try {
      const session = await state.client.whepView(this.stream.id, this.video);
      if (this.closed) {
        session.close().catch(() => {});
        return;
      }
      this.session = session;
      session.pc.addEventListener("connectionstatechange", () => {
        if (this.closed || this.session !== session) return;
        if (session.pc.connectionState === "failed") this.fail();
      });
    } catch (err) {
      if (this.closed) return;
      console.warn("whep", this.stream.id, err);
      if (err instanceof ApiError && err.kind === "not-found") {
        removeTile(this.stream.id, this); // the stream ended before we got to it
      } else if (err instanceof ApiError && err.kind === "unauthorized") {
        reportError(err);
      } else {
        this.fail();
      }
    }
  }

  fail() {
    this.setStatus("tile.failed");
    this.dropSession();
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this.restart(), RETRY_TILE_MS);
  }

  restart() {
    clearTimeout(this.retryTimer);
    if (this.closed) return;
    this.dropSession();
    this.start();
  }

  dropSession() {
    const session = this.session;
    this.session = null;
    session?.close().catch(() => {});
  }

  close() {
    this.closed = true;
    clearTimeout(this.retryTimer);
    this.dropSession();
    this.video.srcObject = null;
    this.el.remove();
  }
}

// -- invitations from lower levels ----------------------------------------------------------

function addInvitation(invitation) {
  if (invitation.from?.user === state.me?.user) return; // a trainer inside the branch they train
  state.invitations = state.invitations.filter((i) => i.room_id !== invitation.room_id);
  state.invitations.push(invitation);
  renderInvitations();
}

function dismissInvitation(roomId) {
  state.invitations = state.invitations.filter((i) => i.room_id !== roomId);
  renderInvitations();
}

function renderInvitations() {
  const siteOf = (id) => state.byId.get(id);
  $("invitations").replaceChildren(
    ...state.invitations.map((inv) => {
      const roomSite = siteOf(inv.room.site_id);
      // A site above the caller's jurisdiction is not in its tree: the event may name it (dispatch: convening).
      const named = inv.from.site_name ? { name: inv.from.site_name, name_en: inv.from.site_name_en } : null;
      const fromSite = siteOf(inv.from.site_id) ?? named ?? roomSite;
      const kind = t(`room.kind.${inv.room.kind}`);
      const room =
        inv.room.kind === "standing" || !inv.room.title
          ? `${roomSite ? i18n.siteName(roomSite) : ""} ${kind}`.trim()
          : `${kind} · ${inv.room.title}`;
      const site = fromSite ? i18n.siteName(fromSite) : t("tile.unknownSite");
      return el(
        "section",
        { class: "invitation", role: "alert", dataset: { roomId: inv.room_id } },
        el("h3", {}, t(inv.room.kind === "training" ? "training.inviteTitle" : "invite.title")),
        el("p", {}, t("invite.from", { name: inv.from.name, site, room })),
        el(
          "div",
          { class: "invitation-actions" },
          el("button", { type: "button", class: "button-ghost", onclick: () => dismissInvitation(inv.room_id) }, t("invite.dismiss")),
          el("a", { class: "button invitation-join", href: `/rooms/${encodeURIComponent(inv.room_id)}` }, t("invite.join")),
        ),
      );
    }),
  );
}

// -- live events --------------------------------------------------------------------------

function openEvents() {
  const events = state.client.events();
  state.events = events;
  setTopbar({ events });
  events.on("state", ({ state: s }) => s === "open" && syncJoin());
  events.on("joined", onJoined);
  events.on("join-failed", ({ room }) => room === state.shownRoom && console.warn("rejoin failed", room));
  events.on("stream-added", (m) => m.room_id === state.shownRoom && addTile(m.stream));
  events.on("stream-removed", (m) => m.room_id === state.shownRoom && removeTile(m.stream_id));
  events.on("participant-joined", (m) => {
    if (m.room_id !== state.shownRoom) return;
    state.participants.set(m.participant.id, m.participant);
    renderTree();
    renderStage();
  });
  events.on("participant-left", (m) => {
    if (m.room_id !== state.shownRoom) return;
    state.participants.delete(m.participant_id);
    renderTree();
    renderStage();
  });
  events.on("room-opened", () => refreshRooms());
  events.on("room-closed", () => refreshRooms());
  events.on("invitation", addInvitation);
  events.connect().catch((err) => console.warn("event socket", err));
}

/** Trainings under way for the caller's branch, offered like the live invitations (which only reach those online). */
async function offerTrainings() {
  const trainings = await state.client.trainings().catch((err) => (console.warn("trainings", err), []));
  for (const tr of trainings.filter((x) => x.invited)) {
    const room = { id: tr.room_id, kind: "training", title: tr.title, site_id: tr.site_id };
    const from = { user: tr.trainer, name: tr.trainer_name, site_id: tr.trainer_site };
    addInvitation({ room_id: tr.room_id, room, from: { ...from, site_name: tr.trainer_site_name, site_name_en: tr.trainer_site_name_en } });
  }
}

/** After (re)connecting: make sure the shown room is joined. */
function syncJoin() {
  const roomId = state.shownRoom;
  const events = state.events;
  if (!roomId || !events || events.rooms.has(roomId)) return; // rejoined by the client itself
  const seq = state.showSeq;
  events
    .join(roomId, null, { watch: true })
    .then((reply) => (seq === state.showSeq ? onJoined(reply) : events.leave(roomId).catch(() => {})))
    .catch((err) => console.warn("join", roomId, err));
}

// -- start-up ---------------------------------------------------------------------------------

function rerenderAll() {
  renderHeader();
  renderBanner(state.banner);
  if (state.sites.length || state.me) {
    renderTree();
    renderStage();
    for (const tile of state.tiles.values()) tile.render();
    renderInvitations();
  }
}

async function boot() {
  state.client = hubClient();
  if (!state.client) return;
  try {
    state.me = await state.client.me();
    const [sites, rooms] = await Promise.all([state.client.sites(), state.client.rooms()]);
    setSites(sites);
    state.rooms = rooms;
  } catch (err) {
    startFailed(err, boot, BOOT_RETRY_MS);
    return;
  }
  hideFatal();
  expandToLiveSites();
  $("layout").hidden = false;
  renderHeader();
  renderTree();
  renderStage();
  openEvents();
  offerTrainings();
  // dispatch: the call-for-help button for the people of a site (web/js/help.js).
  mountHelp(document.querySelector(".topbar-right"), { client: state.client, events: state.events, me: state.me });
  state.refreshTimer = setTimeout(refreshRooms, ROOMS_REFRESH_MS);
}

function init() {
  mountTopbar();
  i18n.apply(document);
  $("tree").addEventListener("click", onTreeClick);
  $("tree").addEventListener("keydown", treeKeys({ select: selectSite, expanded: state.expanded, render: renderTree }));
  $("stage-header").append(el("a", { id: "enter-room", class: "button", hidden: true }));
  document.body.append(el("div", { id: "invitations", class: "invitations", "aria-live": "polite" }));
  i18n.onLangChange(rerenderAll);
  renderHeader();
  window.addEventListener("pagehide", () => {
    // End viewing sessions so the hub frees their forwarders now, not at ICE timeout.
    for (const tile of state.tiles.values()) tile.close();
    state.events?.close();
  });
  boot();
}

init();
