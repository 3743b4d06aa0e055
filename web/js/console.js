// The command-centre console: the jurisdiction's site tree with live status
// and per-branch rollups, a thumbnail grid of the selected branch's feeds,
// the video wall with saved layouts and patrol, and the dispatch panel.
// Status is loaded once (GET /api/console/status?compact=1) and then kept by
// the event socket's deltas (livestatus.js); it is loaded again only when a
// reconnected socket's sequence number says events were missed. A big tree
// (over BIG_TREE sites) is loaded by counts per branch instead: the root and
// its children (GET /api/console/branch), then a branch's children when it
// is opened; deltas change the counts.

import { ApiError } from "./api.js";
import { mountDispatch } from "./dispatch.js";
import { $, apiErrorKey as errorKey, el, hideFatal, hubClient, indexSites, renderBanner, replaceTree, showFatal, startFailed, treeKeys } from "./dom.js";
import * as i18n from "./i18n.js";
import { BranchStatus, LiveStatus, STATUS_EVENTS } from "./livestatus.js";
import { mountTopbar, setTopbar } from "./topbar.js";
import { FEED_MIME, GRID_SIDES, Wall, feedKey } from "./wall.js";

const { t } = i18n;

const BOOT_RETRY_MS = 5000;
const RENDER_DEBOUNCE_MS = 100; // events come in bursts (join + publish); one render per burst
const SAVE_DEBOUNCE_MS = 800;
const BIG_TREE = 500; // sites in the jurisdiction from which it is loaded branch by branch
const STALE_RELOAD_MS = 5000; // a big tree's counts that deltas could not change (room activity deep in an unopened branch) are loaded again after this: at most one load of the branches per 5 s, however busy the tree

const state = {
  client: null,
  events: null,
  me: null,
  sites: [],
  byId: new Map(),
  children: new Map(),
  roots: [],
  depth: new Map(),
  status: new Map(), // site id -> status row (live.rows())
  live: null, // LiveStatus (or BranchStatus, for a big tree): the status kept by deltas
  big: false, // the tree is loaded branch by branch
  staleTimer: null,
  loading: null, // the status load in flight (events meanwhile wait in `held`)
  held: [],
  expanded: new Set(),
  checked: new Set(), // sites ticked for dispatch
  selected: null, // the branch shown in the thumbnail grid
  search: "",
  patrolPicks: new Set(), // feed keys ticked for patrol
  snapshots: new Map(), // stream id -> last snapshot time (cache-busting)
  thumbs: new Map(), // feed key -> {signature, node} of the thumbnails shown
  layouts: { layouts: [], current: null },
  wall: null,
  banner: null,
  renderTimer: null,
  saveTimer: null,
};

// -- messages ---------------------------------------------------------------------

function setBanner(key = null, params = {}) {
  state.banner = key ? [key, params] : null;
  renderBanner(state.banner);
}

function reportError(err) {
  console.warn(err);
  const [key, params] = errorKey(err);
  if (err instanceof ApiError && err.kind === "unauthorized") {
    state.events?.close();
    state.wall?.close();
    showFatal(key, params);
  } else {
    setBanner(key, params);
  }
}

// -- header -----------------------------------------------------------------------

function renderHeader() {
  document.title = `${t("console.title")} · ${t("app.title")}`;
  setTopbar({ me: state.me, events: state.events });
}

// -- sites and status ---------------------------------------------------------------

function setSites(sites, open = 2) {
  const known = new Set(state.sites.map((s) => s.id));
  state.sites = sites;
  Object.assign(state, indexSites(sites));
  for (const site of sites) if (!known.has(site.id) && state.depth.get(site.id) < open) state.expanded.add(site.id);
}

/** Whether a site has children, loaded or not (a big tree's). */
function hasChildren(siteId) {
  return state.children.get(siteId).length > 0 || (state.big && state.live.childCount(siteId) > 0);
}

/** A big tree: the root's branch and every opened branch, loaded again. */
async function loadBranches() {
  const opened = state.sites.filter((s) => s.id !== state.me.site.id && state.children.get(s.id)?.length).map((s) => s.id);
  const [root, ...rest] = await Promise.all([state.me.site.id, ...opened].map((id) => state.client.consoleBranch(id)));
  state.live.load(root);
  for (const branch of rest) state.live.addBranch(branch);
  setSites([...state.live.sites], 1);
}

/** A big tree's branch opened for the first time: its children are loaded. */
function openBranch(siteId) {
  if (state.loading) return state.loading.then(() => openBranch(siteId));
  state.loading = (async () => {
    try {
      state.live.addBranch(await state.client.consoleBranch(siteId));
      for (const event of state.held.splice(0)) state.live.apply(event);
      setSites([...state.live.sites], 1);
      state.status = state.live.rows();
    } finally {
      state.loading = null;
    }
    renderAll();
  })();
  return state.loading.catch(reportError);
}

/** Load the status (compact) and apply the events that arrived meanwhile and are newer than it. */
function loadStatus() {
  if (state.loading) return state.loading;
  state.loading = (async () => {
    try {
      if (state.big) await loadBranches();
      else state.live.load(await state.client.consoleStatus(state.me.site.id, { compact: true }));
      for (const event of state.held.splice(0)) state.live.apply(event);
      state.status = state.live.rows();
      if (state.banner && ["error.unreachable", "error.server"].includes(state.banner[0])) setBanner(null);
      if (state.wall) scheduleRender();
    } finally {
      state.loading = null;
    }
  })();
  return state.loading;
}

/** One event that may change the status: applied as a delta, rendered soon. */
function onStatusEvent(event) {
  if (state.loading) {
    state.held.push(event);
    return;
  }
  if (state.live.apply(event)) {
    state.status = state.live.rows();
    scheduleRender();
  }
  if (state.live.stale && state.staleTimer === null) {
    state.staleTimer = setTimeout(() => {
      state.staleTimer = null;
      loadStatus().catch(reportError);
    }, STALE_RELOAD_MS);
  }
}

/** The monitor ack of a (re)connected socket: load again only if events went by unseen. */
function onMonitorAck(ack) {
  if (ack.of !== "monitor") return;
  if (ack.node === state.live.node && ack.seq === state.live.seq) return;
  loadStatus().catch(reportError);
}

/** Shared live state is back: what changed while it was down was announced to no one, so the status is read again (after a load already under way, which may predate the outage's end). */
function onRestored() {
  if (state.banner?.[0] === "live.degraded") setBanner(null);
  const again = () => loadStatus().catch(reportError);
  if (state.loading) state.loading.then(again, again);
  else again();
}

function scheduleRender() {
  if (state.renderTimer !== null) return;
  state.renderTimer = setTimeout(() => {
    state.renderTimer = null;
    renderAll();
    state.wall.refresh();
  }, RENDER_DEBOUNCE_MS);
}


// -- feeds ---------------------------------------------------------------------------

/** Every feed of a branch: live streams and cameras, each {feed, key, label, site, streamId, ...}. */
function feedsOf(rootId) {
  const out = [];
  for (const site of branchSites(rootId)) {
    const row = state.status.get(site.id);
    if (!row) continue;
    const siteLabel = i18n.siteName(site);
    const cameraStreams = new Set(row.cameras.map((c) => c.stream_id).filter(Boolean));
    for (const stream of row.streams) {
      if (cameraStreams.has(stream.id)) continue; // shown as its camera
      const feed = { stream_id: stream.id };
      out.push({ feed, key: feedKey(feed), streamId: stream.id, site, label: `${siteLabel} · ${stream.name || stream.user || ""}`, live: true });
    }
    for (const camera of row.cameras) {
      const feed = { camera_id: camera.id };
      out.push({
        feed,
        key: feedKey(feed),
        streamId: camera.status === "online" ? camera.stream_id : null,
        site,
        label: `${siteLabel} · ${camera.name}`,
        live: camera.status === "online",
        camera,
      });
    }
  }
  return out;
}

function branchSites(rootId) {
  const out = [];
  const stack = rootId && state.byId.has(rootId) ? [rootId] : [...state.roots];
  while (stack.length) {
    const id = stack.pop();
    out.push(state.byId.get(id));
    stack.push(...[...state.children.get(id)].reverse());
  }
  return out;
}

/** What a wall pane plays for a feed now: {streamId, label} (streamId null: no picture). */
function resolveFeed(feed) {
  if (feed.stream_id) {
    for (const [siteId, row] of state.status) {
      const stream = row.streams.find((s) => s.id === feed.stream_id);
      if (stream) return { streamId: stream.id, label: `${i18n.siteName(state.byId.get(siteId))} · ${stream.name || ""}` };
    }
    // Not (or no longer) listed in our jurisdiction: try it; the hub decides (403/404).
    return { streamId: feed.stream_id, label: feed.stream_id };
  }
  if (feed.camera_id) {
    for (const [siteId, row] of state.status) {
      const camera = row.cameras.find((c) => c.id === feed.camera_id);
      if (camera) {
        const label = `${i18n.siteName(state.byId.get(siteId))} · ${camera.name}`;
        return { streamId: camera.status === "online" ? camera.stream_id || null : null, label };
      }
    }
    return { streamId: null, label: feed.camera_id };
  }
  const site = state.byId.get(feed.site_id);
  const row = state.status.get(feed.site_id);
  if (!site || !row) return { streamId: null, label: feed.site_id };
  const standing = row.streams.find((s) => s.room_id === site.room_id) ?? row.streams[0];
  return { streamId: standing?.id ?? null, label: i18n.siteName(site) };
}

// -- the tree ---------------------------------------------------------------------------

function matches(site, query) {
  return [site.name, site.name_en, site.id].some((s) => s && s.toLowerCase().includes(query));
}

/** With a search: the matching sites and their ancestors; null without one. */
function visibleSites() {
  const query = state.search.trim().toLowerCase();
  if (!query) return null;
  const shown = new Set();
  for (const site of state.sites) {
    if (!matches(site, query)) continue;
    let current = site;
    while (current && !shown.has(current.id)) {
      shown.add(current.id);
      current = current.parent ? state.byId.get(current.parent) : null;
    }
  }
  return shown;
}

function renderTree() {
  const tree = $("tree");
  const visible = visibleSites();
  replaceTree(tree, state.roots.filter((id) => !visible || visible.has(id)).map((id) => renderNode(id, visible)));
  if (!tree.children.length) tree.append(el("li", { class: "tree-empty" }, t(state.sites.length ? "console.noMatch" : "tree.empty")));
  const root = state.status.get(state.roots[0]);
  $("tree-summary").textContent = root
    ? `${t("tree.sites", { n: root.rollup.sites })} · ${t("tree.liveSites", { n: root.rollup.sites_online })}`
    : "";
}

function rollupText(rollup) {
  const parts = [];
  if (rollup.villages) parts.push(t("console.villagesOnline", { n: rollup.villages_online, total: rollup.villages }));
  else parts.push(t("console.sitesOnline", { n: rollup.sites_online, total: rollup.sites }));
  parts.push(t("console.inSession", { n: rollup.sites_in_session }));
  if (rollup.cameras) parts.push(t("console.camerasOnline", { n: rollup.cameras_online, total: rollup.cameras }));
  if (rollup.alerts) parts.push(t("console.alerts", { n: rollup.alerts }));
  return parts.join(" · ");
}

function renderNode(siteId, visible) {
  const site = state.byId.get(siteId);
  const row = state.status.get(siteId);
  const kids = state.children.get(siteId).filter((id) => !visible || visible.has(id));
  const open = visible ? true : state.expanded.has(siteId);
  const participants = row ? row.rooms.reduce((n, r) => n + r.participants, 0) : 0;
  const badges = [];
  if (row?.in_session) badges.push(el("span", { class: "badge-live", title: t("tree.liveCount", { n: participants }) }, t("console.session", { n: participants })));
  if (row?.streams.length) badges.push(el("span", { class: "badge badge-streams" }, t("console.streams", { n: row.streams.length })));
  if (row?.cameras.length) {
    const online = row.cameras.filter((c) => c.status === "online").length;
    badges.push(el("span", { class: "badge badge-cameras" }, t("console.cameras", { n: online, total: row.cameras.length })));
  }
  if (row?.alerts) badges.push(el("span", { class: "badge badge-alarm" }, t("console.alerts", { n: row.alerts })));
  const node = el(
    "div",
    {
      class: `node${state.selected === siteId ? " selected" : ""}${row?.online ? " online" : ""}`,
      style: `--depth:${state.depth.get(siteId)}`,
      dataset: { select: siteId, online: row?.online ? "true" : "false", inSession: row?.in_session ? "true" : "false" },
      tabindex: "0",
      draggable: "true",
    },
    kids.length || (!visible && hasChildren(siteId))
      ? el("button", { class: "twisty", type: "button", "aria-label": t(open ? "tree.collapse" : "tree.expand"), dataset: { toggle: siteId } })
      : el("span", { class: "twisty leaf", "aria-hidden": "true" }),
    el("input", { type: "checkbox", class: "node-check", checked: state.checked.has(siteId), dataset: { check: siteId }, "aria-label": i18n.siteName(site) }),
    el("span", { class: "dot", title: t(row?.online ? "console.online" : "console.offline") }),
    el("span", { class: `level level-${site.level}` }, i18n.levelLabel(site.level)),
    el("span", { class: "name", title: i18n.siteName(site) }, i18n.siteName(site)),
    ...badges,
  );
  const item = el("li", { role: "treeitem", "aria-expanded": hasChildren(siteId) ? String(open) : null, dataset: { siteId } }, node);
  if (row?.departments?.length) item.append(renderDepartments(siteId, row.departments));
  if (row && hasChildren(siteId)) item.append(el("div", { class: "rollup", style: `--depth:${state.depth.get(siteId)}`, dataset: { rollup: siteId } }, rollupText(row.rollup)));
  if (kids.length && open) item.append(el("ul", { role: "group" }, ...kids.map((id) => renderNode(id, visible))));
  return item;
}

/** The departments beside a site, each with its online dot (presence of its people). */
function renderDepartments(siteId, departments) {
  return el(
    "ul",
    { class: "departments", style: `--depth:${state.depth.get(siteId)}` },
    ...departments.map((d) =>
      el(
        "li",
        { class: `department${d.online ? " online" : ""}`, dataset: { departmentId: d.id, online: String(d.online) } },
        el("span", { class: "dot", title: t(d.online ? "department.online" : "department.offline") }),
        el("span", { class: "level" }, t(`department.kind.${d.kind}`)),
        el("span", { class: "name" }, i18n.siteName(d)),
      ),
    ),
  );
}

function onTreeClick(event) {
  const check = event.target.closest("[data-check]");
  if (check) {
    if (check.checked) state.checked.add(check.dataset.check);
    else state.checked.delete(check.dataset.check);
    return;
  }
  const toggle = event.target.closest("[data-toggle]");
  if (toggle) {
    const id = toggle.dataset.toggle;
    if (state.expanded.has(id)) state.expanded.delete(id);
    else state.expanded.add(id);
    if (state.big && state.expanded.has(id) && !state.children.get(id).length) openBranch(id);
    else renderTree();
    return;
  }
  const row = event.target.closest("[data-select]");
  if (row) selectBranch(row.dataset.select);
}

function onTreeDragStart(event) {
  const row = event.target.closest("[data-select]");
  if (!row) return;
  event.dataTransfer.setData(FEED_MIME, JSON.stringify({ site_id: row.dataset.select }));
  event.dataTransfer.effectAllowed = "copy";
}

/** Ids of the sites ticked in the tree (tree order), for the dispatch panel. */
export function selectedSites() {
  return state.sites.filter((s) => state.checked.has(s.id)).map((s) => s.id);
}

function selectBranch(siteId) {
  state.selected = siteId;
  renderAll();
}

// -- the branch header and thumbnails ------------------------------------------------------

function renderBranch() {
  const site = state.byId.get(state.selected);
  const row = state.status.get(state.selected);
  $("branch-level").textContent = site ? i18n.levelLabel(site.level) : "";
  $("branch-level").className = site ? `level level-${site.level}` : "level";
  $("branch-name").textContent = site ? i18n.siteName(site) : "";
  $("branch-rollup").textContent = row ? rollupText(row.rollup) : "";
}

function renderFeeds() {
  const feeds = feedsOf(state.selected);
  $("feeds-count").textContent = `(${feeds.length})`;
  const grid = $("feeds");
  if (!feeds.length) {
    grid.replaceChildren(el("p", { class: "console-empty" }, t("console.noFeeds")));
    return;
  }
  // Keep the thumbnails that did not change: rebuilding one reloads its picture.
  const kept = new Map();
  grid.replaceChildren(
    ...feeds.map((item) => {
      const signature = JSON.stringify([item.label, item.live, item.streamId, item.camera?.status, item.camera?.alarm, i18n.lang()]);
      const old = state.thumbs.get(item.key);
      const node = old && old.signature === signature && !old.node.querySelector(".thumb-none") ? old.node : renderThumb(item);
      kept.set(item.key, { signature, node });
      return node;
    }),
  );
  state.thumbs = kept;
}

function renderThumb(item) {
  const at = item.streamId ? state.snapshots.get(item.streamId) : undefined;
  const picture = item.streamId
    ? el("img", {
        alt: "",
        loading: "lazy",
        src: `${state.client.snapshotUrl(item.streamId)}${at ? `&at=${at}` : ""}`,
        onerror: (event) => event.target.replaceWith(placeholder(item)),
      })
    : placeholder(item);
  const status = item.camera
    ? t(`console.camera.${item.camera.alarm ? "alarm" : item.camera.status}`)
    : t("console.camera.online");
  return el(
    "figure",
    {
      class: `thumb${item.live ? "" : " offline"}${item.camera?.alarm ? " alarm" : ""}`,
      draggable: "true",
      dataset: { feed: item.key, streamId: item.streamId ?? "" },
      ondragstart: (event) => {
        event.dataTransfer.setData(FEED_MIME, JSON.stringify(item.feed));
        event.dataTransfer.effectAllowed = "copy";
      },
      onclick: (event) => {
        if (event.target.closest("input")) return;
        state.wall.stopPatrol();
        state.wall.assign(null, item.feed);
      },
    },
    el("div", { class: "thumb-picture" }, picture),
    el(
      "figcaption",
      {},
      el("input", {
        type: "checkbox",
        class: "thumb-patrol",
        title: t("patrol.pick"),
        "aria-label": t("patrol.pick"),
        checked: state.patrolPicks.has(item.key),
        onchange: (event) => {
          if (event.target.checked) state.patrolPicks.add(item.key);
          else state.patrolPicks.delete(item.key);
        },
      }),
      el("span", { class: "thumb-label", title: item.label }, item.label),
      el("span", { class: "thumb-status" }, status),
    ),
  );
}

function placeholder(item) {
  return el("div", { class: "thumb-none" }, t(item.live ? "console.noSnapshot" : "console.noSignal"));
}

function onSnapshot(event) {
  state.snapshots.set(event.stream_id, event.at ?? Date.now());
  for (const img of document.querySelectorAll(`.thumb[data-stream-id="${CSS.escape(event.stream_id)}"] img`)) {
    img.src = `${state.client.snapshotUrl(event.stream_id)}&at=${encodeURIComponent(state.snapshots.get(event.stream_id))}`;
  }
  const thumb = document.querySelector(`.thumb[data-stream-id="${CSS.escape(event.stream_id)}"] .thumb-none`);
  if (thumb) renderFeeds(); // a first snapshot replaces the placeholder
}

// -- the wall toolbar, layouts and patrol ------------------------------------------------------

function renderToolbar() {
  const grid = $("wall-grid");
  const options = GRID_SIDES.map((n) => el("option", { value: String(n * n), selected: n * n === state.wall.grid }, t("wall.gridOption", { n, count: n * n })));
  grid.replaceChildren(...options);
  const select = $("layout-select");
  select.replaceChildren(
    el("option", { value: "" }, t("wall.unsaved")),
    ...state.layouts.layouts.map((l) => el("option", { value: l.name, selected: l.name === state.layouts.current }, l.name)),
  );
  $("layout-delete").disabled = !state.layouts.current;
  const patrol = state.wall.patrol;
  $("patrol-toggle").textContent = t(patrol ? "patrol.stop" : "patrol.start");
  $("patrol-toggle").dataset.on = patrol ? "true" : "false";
  $("patrol-status").textContent = patrol ? t("patrol.running", { n: patrol.feeds.length, s: patrol.seconds }) : "";
}

async function saveLayouts() {
  try {
    state.layouts = await state.client.saveConsoleLayouts(state.layouts);
    renderToolbar();
  } catch (err) {
    reportError(err);
  }
}

function onWallChange() {
  if (!state.wall) return;
  renderToolbar();
  // Keep the current saved layout up to date as the operator changes the wall.
  const current = state.layouts.layouts.find((l) => l.name === state.layouts.current);
  if (!current) return;
  Object.assign(current, state.wall.toLayout());
  if (!state.wall.patrol) delete current.patrol;
  clearTimeout(state.saveTimer);
  state.saveTimer = setTimeout(saveLayouts, SAVE_DEBOUNCE_MS);
}

function saveAs() {
  const name = $("layout-name").value.trim() || state.layouts.current || t("wall.defaultName");
  const layout = { name, ...state.wall.toLayout() };
  state.layouts.layouts = [...state.layouts.layouts.filter((l) => l.name !== name), layout];
  state.layouts.current = name;
  $("layout-name").value = "";
  clearTimeout(state.saveTimer);
  saveLayouts();
}

function deleteLayout() {
  const name = state.layouts.current;
  if (!name) return;
  state.layouts.layouts = state.layouts.layouts.filter((l) => l.name !== name);
  state.layouts.current = null;
  saveLayouts();
}

function pickLayout(name) {
  const layout = state.layouts.layouts.find((l) => l.name === name);
  state.layouts.current = layout ? name : null;
  if (layout) state.wall.applyLayout(layout);
  clearTimeout(state.saveTimer);
  saveLayouts();
}

function togglePatrol() {
  if (state.wall.patrol) {
    state.wall.stopPatrol();
    return;
  }
  const feeds = feedsOf(state.selected);
  const picked = feeds.filter((f) => state.patrolPicks.has(f.key));
  const group = (picked.length ? picked : feeds).map((f) => f.feed);
  if (!group.length) {
    setBanner("patrol.none");
    return;
  }
  const seconds = Math.max(1, Math.min(3600, Math.round(Number($("patrol-seconds").value) || 10)));
  $("patrol-seconds").value = String(seconds);
  state.wall.startPatrol(group, seconds);
}

// -- live events --------------------------------------------------------------------------------

function openEvents() {
  state.events?.close(); // a retried start-up opens a new one
  const events = state.client.events();
  state.events = events;
  setTopbar({ events });
  for (const type of STATUS_EVENTS) events.on(type, onStatusEvent);
  events.on("ack", onMonitorAck); // also after a reconnect: catch up on what was missed
  events.on("snapshot", onSnapshot);
  events.on("degraded", () => setBanner("live.degraded"));
  events.on("restored", onRestored);
  // Monitoring starts before the status is read, so no event falls between them.
  return events
    .connect()
    .then(() => events.monitor(true))
    .catch((err) => console.warn("event socket", err));
}

// -- start-up ------------------------------------------------------------------------------------

function renderAll() {
  renderHeader();
  renderBanner(state.banner);
  if (!state.me) return;
  renderTree();
  renderBranch();
  renderFeeds();
  if (state.wall) {
    renderToolbar();
    state.wall.rerender();
  }
}

async function boot() {
  state.client = hubClient();
  if (!state.client) return;
  try {
    state.me = await state.client.me();
    const [first, layouts] = await Promise.all([state.client.consoleBranch(state.me.site.id), state.client.consoleLayouts()]);
    state.big = first.site.counts.sites > BIG_TREE;
    if (state.big) {
      state.live = new BranchStatus();
      state.live.load(first);
      setSites([...state.live.sites], 1);
    } else {
      const sites = await state.client.sites();
      setSites(sites);
      state.live = new LiveStatus(sites);
    }
    state.layouts = layouts;
    await openEvents(); // its monitor ack starts the status load
    await loadStatus();
  } catch (err) {
    startFailed(err, boot, BOOT_RETRY_MS);
    return;
  }
  hideFatal();
  state.selected = state.roots[0] ?? null;
  // ?layers=off: every pane pulls the publishers' top layer (to compare what layers save).
  const layers = new URLSearchParams(window.location.search).get("layers") !== "off";
  state.wall = new Wall($("wall"), { client: state.client, resolve: resolveFeed, t, onChange: onWallChange, layers });
  const current = state.layouts.layouts.find((l) => l.name === state.layouts.current);
  if (current) state.wall.applyLayout(current);
  $("layout").hidden = false;
  renderAll();
  mountDispatch($("dispatch"), { client: state.client, tree: state.sites, selectedSites, events: state.events });
}

function init() {
  mountTopbar();
  i18n.apply(document);
  $("tree").addEventListener("click", onTreeClick);
  $("tree").addEventListener("dragstart", onTreeDragStart);
  $("tree").addEventListener("keydown", treeKeys({ select: selectBranch, expanded: state.expanded, render: renderTree }));
  $("search").addEventListener("input", (event) => {
    state.search = event.target.value;
    renderTree();
  });
  $("wall-grid").addEventListener("change", (event) => state.wall.setGrid(Number(event.target.value)));
  $("layout-select").addEventListener("change", (event) => pickLayout(event.target.value));
  $("layout-save").addEventListener("click", saveAs);
  $("layout-delete").addEventListener("click", deleteLayout);
  $("wall-clear").addEventListener("click", () => state.wall.clear());
  $("patrol-toggle").addEventListener("click", togglePatrol);
  i18n.onLangChange(renderAll);
  renderHeader();
  window.addEventListener("pagehide", () => {
    state.wall?.close(); // end viewing sessions now, not at ICE timeout
    state.events?.close();
  });
  boot();
}

init();
