// The room view: a mediator, a party or a village terminal in one room.
// Preview and device choice, then join: the event socket gives us a
// participant, WHIP publishes our camera under it, and every other stream is
// watched with WHEP. It talks to the hub only through api.js.

import { ApiError } from "./api.js";
import { $, apiErrorKey, el, hideFatal, hubClient, renderBanner as showBanner, showFatal, startFailed } from "./dom.js";
import * as i18n from "./i18n.js";
import { DeviceError, audioLevel, listDevices, openCamera, openScreen, stopTracks } from "./media.js";
import { mountTopbar, setTopbar } from "./topbar.js";
import * as training from "./training.js";

const { t } = i18n;

const BOOT_RETRY_MS = 5000;
const RETRY_MS = 3000;
const DISCONNECTED_GRACE_MS = 5000;
const SPEAKER_POLL_MS = 400;
const SPEAKING_LEVEL = 0.02;
const SITE_INVITER_ROLES = ["admin", "operator", "mediator"];
/** The camera goes out in three layers (api.js SIMULCAST_LAYERS) unless the link says ?simulcast=off. */
const SIMULCAST = new URLSearchParams(window.location.search).get("simulcast") !== "off";

/** This page's messages for some failed API calls: they concern the room. */
const ROOM_ERRORS = {
  unauthorized: "error.roomUnauthorized",
  forbidden: "error.roomForbidden",
  "not-found": "error.roomNotFound",
};

/** The message for a failed API call on this page. */
function errorKey(err) {
  if (err instanceof DeviceError) {
    return { "no-device": ["error.noCamera", {}], permission: ["error.permission", {}] }[err.kind] ?? [
      "error.device",
      { detail: err.message },
    ];
  }
  return apiErrorKey(err, ROOM_ERRORS);
}

/** A WebSocket `error` reply as an ApiError, so it is explained like an HTTP one. */
function socketError(err) {
  const kind = { forbidden: "forbidden", "not-found": "not-found" }[err?.code] ?? "http";
  return new ApiError(kind, err?.message || "event socket error");
}

// -- state --------------------------------------------------------------------------

const state = {
  roomId: decodeURIComponent(window.location.pathname.split("/").filter(Boolean).pop() || ""),
  autojoin: new URLSearchParams(window.location.search).get("autojoin") === "1",
  client: null,
  events: null,
  me: null,
  room: null,
  sites: new Map(), // the room's site and those above it
  branchSites: new Map(), // a training's branch, whose attendees may come from beside us
  local: null, // MediaStream of camera + microphone
  cameraId: null,
  micId: null,
  audioOn: true,
  videoOn: true,
  recording: false, // the room is being recorded (everyone sees it)
  hand: false,
  screen: null, // MediaStream being shared
  participantId: null,
  camera: null, // WHIP MediaSession of our camera
  cameraSeq: 0, // guards against late answers to an earlier publish
  screenSession: null,
  screenSeq: 0,
  participants: new Map(),
  tiles: new Map(), // stream id -> RemoteTile
  selfTile: null,
  chatUnread: 0,
  panel: "people",
  joined: false,
  banner: null,
  degraded: false, // the hub said its shared live state is unreachable ("degraded" until "restored")
  soundBlocked: false,
  invite: null, // {url, expires_at}
  invitedSites: new Set(),
  departments: new Map(), // department id -> department: beside the room's site and above, and the participants'
  invitedDepartments: new Set(),
  speakerTimer: null,
};

// -- messages ------------------------------------------------------------------------

function setBanner(key = null, params = {}) {
  // While the hub's live state is down, its 503s say nothing new: the outage's banner stays.
  if (state.degraded && (key === null || key === "error.server")) [key, params] = ["live.degraded", {}];
  state.banner = key ? [key, params] : null;
  renderBanner();
}

function renderBanner() {
  // With nothing to report, the banner offers to unblock the sound (a click on it).
  showBanner(state.banner ?? (state.soundBlocked ? ["room.soundBlocked", {}] : null));
  $("banner").classList.toggle("banner-action", !state.banner && state.soundBlocked);
}

/** A failure while in the room: an expired token or a lost room end it, anything else is a banner. */
function reportError(err) {
  console.warn(err);
  const [key, params] = errorKey(err);
  if (err instanceof ApiError && ["unauthorized", "forbidden"].includes(err.kind)) {
    teardown();
    showFatal(key, params);
  } else {
    setBanner(key, params);
  }
}

// -- header --------------------------------------------------------------------------

/** A site's name, or a department's: a department user's home (and a participant's `site_id`) is its department. */
function siteLabel(siteId) {
  const site = state.sites.get(siteId) ?? state.branchSites.get(siteId) ?? state.departments.get(siteId);
  return site ? i18n.siteName(site) : t("tile.unknownSite");
}

function learnDepartments(participants) {
  for (const p of participants) if (p.department) state.departments.set(p.department.id, p.department);
}

function roomTitle() {
  const room = state.room;
  if (!room) return t("room.title");
  if (room.kind === "standing") return `${siteLabel(room.site_id)} · ${t("room.kind.standing")}`;
  return room.title ? `${t(`room.kind.${room.kind}`)} · ${room.title}` : t(`room.kind.${room.kind}`);
}

function renderHeader() {
  document.title = `${roomTitle()} - ${t("app.title")}`;
  $("page-title").textContent = roomTitle();
  setTopbar({
    me: state.me,
    events: state.joined ? state.events : null,
    name: state.participants.get(state.participantId)?.name ?? null,
    showUser: state.me?.role !== "guest" || state.joined, // a guest's name is theirs to type first
  });
}

// -- preview and devices ---------------------------------------------------------------

async function startPreview() {
  stopTracks(state.local);
  state.local = null;
  $("prejoin-error").hidden = true;
  try {
    state.local = await openCamera({ cameraId: state.cameraId, micId: state.micId });
  } catch (err) {
    showDeviceError(err);
  }
  $("preview").srcObject = state.local;
  $("preview-off").hidden = Boolean(state.local?.getVideoTracks().length);
  await fillDevices();
}

function showDeviceError(err) {
  console.warn("devices", err);
  const [key, params] = errorKey(err instanceof DeviceError ? err : new DeviceError("device", String(err)));
  const box = $("prejoin-error");
  box.textContent = t(key, params);
  box.dataset.error = key;
  box.hidden = false;
}

async function fillDevices() {
  let devices = { cameras: [], mics: [] };
  try {
    devices = await listDevices();
  } catch (err) {
    console.warn("enumerateDevices", err);
  }
  const current = (kind) => state.local?.[kind === "video" ? "getVideoTracks" : "getAudioTracks"]()[0]?.getSettings().deviceId;
  fillSelect($("camera-select"), devices.cameras, current("video"), "room.camera");
  fillSelect($("mic-select"), devices.mics, current("audio"), "room.mic");
}

function fillSelect(select, devices, selected, labelKey) {
  select.replaceChildren(
    ...devices.map((d, i) => el("option", { value: d.id, selected: d.id === selected }, d.label || `${t(labelKey)} ${i + 1}`)),
  );
  if (!devices.length) select.append(el("option", { value: "" }, t("room.noDevice")));
  select.disabled = devices.length < 2;
}

// -- joining -------------------------------------------------------------------------------

async function join(event) {
  event?.preventDefault();
  const guest = state.me.role === "guest";
  const name = $("name").value.trim();
  if (guest && !name) {
    const box = $("prejoin-error");
    box.textContent = t("room.nameRequired");
    box.dataset.error = "room.nameRequired";
    box.hidden = false;
    $("name").focus();
    return;
  }
  $("join").disabled = true;
  $("join").textContent = t("room.joining");
  const events = state.client.events();
  state.events = events;
  events.on("state", onSocketState);
  events.on("joined", onJoined);
  events.on("join-failed", ({ error }) => reportError(socketError(error)));
  events.on("participant-joined", (m) => m.room_id === state.roomId && putParticipant(m.participant));
  events.on("participant-updated", (m) => m.room_id === state.roomId && putParticipant(m.participant));
  events.on("participant-left", (m) => m.room_id === state.roomId && dropParticipant(m.participant_id));
  events.on("stream-added", (m) => m.room_id === state.roomId && addTile(m.stream));
  events.on("stream-removed", (m) => m.room_id === state.roomId && removeTile(m.stream_id));
  events.on("roster", (m) => m.room_id === state.roomId && state.joined && syncRoom(m));
  events.on("degraded", () => {
    state.degraded = true;
    setBanner("live.degraded");
  });
  events.on("restored", () => {
    state.degraded = false;
    if (state.banner?.[0] === "live.degraded") setBanner(null);
  });
  events.on("chat", (m) => m.room_id === state.roomId && addChat(m));
  events.on("recording-started", (m) => m.room_id === state.roomId && setRecording(true));
  events.on("recording-stopped", (m) => m.room_id === state.roomId && setRecording(false));
  events.on("training-ended", (m) => m.room_id === state.roomId && trainingEnded());
  try {
    await events.connect();
    await events.join(state.roomId, name && name !== state.me.name ? name : null);
  } catch (err) {
    events.close();
    state.events = null;
    $("join").disabled = false;
    $("join").textContent = t("room.join");
    const apiErr = err instanceof ApiError ? err : socketError(err);
    if (["forbidden", "not-found"].includes(apiErr.kind)) showFatal(...errorKey(apiErr));
    else {
      setBanner(...errorKey(apiErr));
      // An autojoin that failed would otherwise leave only the banner, with no button to try again.
      if ($("prejoin").hidden) await showPrejoin();
    }
  }
}

/** The hub's `joined` reply: the first one, or a fresh snapshot after the socket reconnected. */
function onJoined(reply) {
  if (reply.room?.id !== state.roomId || !reply.participant) return;
  const rejoined = state.joined;
  state.joined = true;
  state.participantId = reply.participant.id;
  if (!rejoined) enterRoom();
  syncRoom(reply);
  if (state.banner?.[0] === "room.reconnecting") setBanner(null);
  // A new participant: our old streams ended with the old one, so publish again.
  publishCamera();
  if (state.screen) publishScreen();
  if (!state.audioOn || !state.videoOn) sendState();
  if (state.hand) state.events.raiseHand(state.roomId, true).catch((err) => console.warn("hand", err));
  // A recording started before we joined (or while we were away) is announced by the API.
  state.client
    .recordingState(state.roomId)
    .then((r) => setRecording(r.on))
    .catch((err) => console.warn("recording state", err));
}

/** Show a room's participants and streams as a snapshot (`joined`, or `roster` after an outage) has them. */
function syncRoom({ participants, streams }) {
  learnDepartments(participants);
  state.participants = new Map(participants.map((p) => [p.id, p]));
  const ids = new Set(streams.map((s) => s.id));
  for (const id of state.tiles.keys()) if (!ids.has(id)) removeTile(id);
  for (const stream of streams) addTile(stream);
  renderAll();
}

function setRecording(on) {
  state.recording = on;
  renderControls();
}

function toggleRecording() {
  state.events?.record(state.roomId, !state.recording).catch((err) => reportError(socketError(err)));
}

function enterRoom() {
  $("prejoin").hidden = true;
  $("room").hidden = false;
  $("preview").srcObject = null;
  state.selfTile = new SelfTile();
  $("room-grid").prepend(state.selfTile.el);
  $("tab-invite").hidden = state.me.role === "guest";
  $("higher").hidden = !SITE_INVITER_ROLES.includes(state.me.role);
  renderHigherSites();
  renderDepartments();
  state.speakerTimer = setInterval(updateSpeaker, SPEAKER_POLL_MS);
}

function onSocketState({ state: s }) {
  renderHeader();
  if (!state.joined) return;
  if (s !== "open") {
    setBanner("room.reconnecting");
    // A socket that cannot come back may mean the token expired: ask the API.
    state.client.me().catch((err) => err instanceof ApiError && err.kind === "unauthorized" && reportError(err));
  }
}

// -- publishing ----------------------------------------------------------------------------

/** (Re)publish our camera; only the latest call may keep its session. */
async function publishCamera() {
  closeSession(state.camera);
  state.camera = null;
  const seq = ++state.cameraSeq;
  if (!state.local || !state.joined || !mayPublish()) return;
  try {
    const session = await state.client.whipPublish(state.roomId, state.local, {
      participant: state.participantId,
      simulcast: SIMULCAST,
    });
    if (!state.joined || seq !== state.cameraSeq) {
      closeSession(session);
      return;
    }
    state.camera = session;
    watchPublication(session, publishCamera);
    if (state.banner?.[0] === "error.unreachable") setBanner(null);
  } catch (err) {
    if (!state.joined || seq !== state.cameraSeq) return;
    if (err instanceof ApiError && err.kind === "not-found") return; // our participant is gone; the rejoin publishes
    reportError(err);
    setTimeout(() => seq === state.cameraSeq && publishCamera(), RETRY_MS);
  }
}

/** In a training only the trainer and the attendees they let speak publish; elsewhere everyone does. */
function mayPublish() {
  return training.mayPublish(state.room, state.me, state.participants.get(state.participantId));
}

function trainingContext() {
  // The trainer's clicks must not end the room on a refusal: a banner says why.
  const onError = (err) => setBanner(...errorKey(err));
  return { client: state.client, room: state.room, me: state.me, participantId: state.participantId, onError };
}

async function publishScreen() {
  closeSession(state.screenSession);
  state.screenSession = null;
  const seq = ++state.screenSeq;
  if (!state.screen || !state.joined) return;
  try {
    const participant = state.participantId;
    const session = await state.client.whipPublish(state.roomId, state.screen, { kind: "screen", participant });
    if (!state.screen || seq !== state.screenSeq) {
      closeSession(session);
      return;
    }
    state.screenSession = session;
    watchPublication(session, publishScreen);
  } catch (err) {
    if (seq === state.screenSeq) reportError(err);
  }
}

/** Publish again when the media path fails (the network went away), keeping our participant. */
function watchPublication(session, republish) {
  let grace = null;
  session.pc.addEventListener("connectionstatechange", () => {
    if (session.closed) return;
    const s = session.pc.connectionState;
    clearTimeout(grace);
    if (s === "failed") republish();
    else if (s === "disconnected") grace = setTimeout(() => !session.closed && republish(), DISCONNECTED_GRACE_MS);
  });
}

function closeSession(session) {
  session?.close().catch(() => {});
}

function sendState() {
  state.events?.sendState(state.roomId, state.audioOn, state.videoOn).catch((err) => console.warn("state", err));
}

// -- controls -------------------------------------------------------------------------------

function toggleMic() {
  state.audioOn = !state.audioOn;
  for (const track of state.local?.getAudioTracks() ?? []) track.enabled = state.audioOn;
  sendState();
  renderControls();
  state.selfTile?.render();
}

function toggleCamera() {
  state.videoOn = !state.videoOn;
  for (const track of state.local?.getVideoTracks() ?? []) track.enabled = state.videoOn;
  sendState();
  renderControls();
  state.selfTile?.render();
}

async function toggleShare() {
  if (state.screen) {
    stopShare();
    return;
  }
  try {
    const screen = await openScreen();
    if (!screen) return;
    state.screen = screen;
    screen.getVideoTracks()[0]?.addEventListener("ended", stopShare);
    renderControls();
    await publishScreen();
  } catch (err) {
    setBanner(...errorKey(err));
  }
}

function stopShare() {
  stopTracks(state.screen);
  state.screen = null;
  closeSession(state.screenSession);
  state.screenSession = null;
  renderControls();
}

function toggleHand() {
  state.hand = !state.hand;
  state.events?.raiseHand(state.roomId, state.hand).catch((err) => console.warn("hand", err));
  renderControls();
}

function renderControls() {
  const set = (id, on, onKey, offKey, disabled = false) => {
    const button = $(id);
    button.classList.toggle("off", !on);
    button.querySelector(".ctl-label").textContent = t(on ? onKey : offKey);
    button.setAttribute("aria-pressed", String(!on));
    button.disabled = disabled;
  };
  set("btn-mic", state.audioOn, "room.micOn", "room.micOff", !state.local?.getAudioTracks().length);
  set("btn-cam", state.videoOn, "room.camOn", "room.camOff", !state.local?.getVideoTracks().length);
  const share = $("btn-share");
  share.classList.toggle("active", Boolean(state.screen));
  share.querySelector(".ctl-label").textContent = t(state.screen ? "room.stopShare" : "room.share");
  share.hidden = !navigator.mediaDevices?.getDisplayMedia || !mayPublish();
  const hand = $("btn-hand");
  hand.classList.toggle("active", state.hand);
  hand.querySelector(".ctl-label").textContent = t(state.hand ? "room.lowerHand" : "room.hand");
  const rec = $("btn-rec");
  rec.hidden = !state.me || state.me.role === "guest";
  rec.classList.toggle("active", state.recording);
  rec.querySelector(".ctl-label").textContent = t(state.recording ? "room.stopRecording" : "room.record");
  $("rec-badge").hidden = !state.recording || !state.joined;
}

async function leave() {
  state.joined = false; // no republishing while we go
  await state.events?.leave(state.roomId).catch(() => {});
  teardown();
  $("room").hidden = true;
  $("left").hidden = false;
}

function trainingEnded() {
  teardown();
  $("room").hidden = true;
  $("left-message").textContent = t("training.endedMessage");
  $("left-message").dataset.i18n = "training.endedMessage";
  $("rejoin").hidden = true;
  $("left").hidden = false;
}

/** Stop everything this page runs in the room (media, socket, timers). */
function teardown() {
  state.joined = false;
  clearInterval(state.speakerTimer);
  stopShare();
  closeSession(state.camera);
  state.camera = null;
  for (const id of [...state.tiles.keys()]) removeTile(id);
  stopTracks(state.local);
  state.events?.close();
  state.events = null;
  renderHeader();
}

// -- participants and chat ------------------------------------------------------------------

function putParticipant(participant) {
  learnDepartments([participant]);
  const before = state.participants.get(participant.id);
  state.participants.set(participant.id, participant);
  if (participant.id === state.participantId && Boolean(before?.speaker) !== Boolean(participant.speaker)) {
    // The trainer let us speak (publish now) or returned us to watching (the hub ended our streams).
    if (participant.speaker) state.hand = false;
    else stopShare();
    publishCamera();
    renderControls();
    state.selfTile?.render();
    renderGrid();
  }
  for (const tile of state.tiles.values()) if (tile.stream.participant_id === participant.id) tile.render();
  renderPeople();
  renderHeader();
}

function dropParticipant(participantId) {
  state.participants.delete(participantId);
  renderPeople();
}

function renderPeople() {
  const people = [...state.participants.values()].sort(
    (a, b) => Number(Boolean(b.hand)) - Number(Boolean(a.hand)) || a.joined_at - b.joined_at,
  );
  $("people-count").textContent = t("room.people", { n: people.length });
  $("people").replaceChildren(
    ...people.map((p) =>
      el(
        "li",
        { class: `person${p.id === state.participantId ? " me" : ""}`, dataset: { participantId: p.id } },
        el("span", { class: "avatar", "aria-hidden": "true" }, initial(p.name)),
        el(
          "span",
          { class: "person-text" },
          el("span", { class: "person-name" }, p.id === state.participantId ? t("room.me", { name: p.name }) : p.name),
          el("span", { class: "person-site" }, `${t(`user.role.${p.role}`)} · ${siteLabel(p.site_id)}`),
        ),
        p.hand ? el("span", { class: "badge badge-hand", title: t("room.handRaised") }, t("room.handRaised")) : null,
        p.audio === false ? el("span", { class: "icon-muted", title: t("room.muted") }) : null,
        p.video === false ? el("span", { class: "icon-cam-off", title: t("room.cameraOff") }) : null,
        ...training.personExtras(trainingContext(), p),
      ),
    ),
  );
  training.renderBar($("training-bar"), trainingContext(), state.participants);
}

function initial(name) {
  return [...(name || "?").trim()][0]?.toUpperCase() ?? "?";
}

function addChat(message) {
  const mine = message.participant_id === state.participantId;
  const time = new Intl.DateTimeFormat(i18n.lang(), { hour: "2-digit", minute: "2-digit", hour12: false }).format(
    new Date(message.at * 1000),
  );
  const log = $("chat-log");
  log.append(
    el(
      "li",
      { class: `chat-msg${mine ? " mine" : ""}` },
      el("div", { class: "chat-meta" }, el("span", { class: "chat-name" }, message.name), el("time", {}, time)),
      el("div", { class: "chat-text" }, message.text),
    ),
  );
  log.scrollTop = log.scrollHeight;
  $("chat-empty").hidden = true;
  if (state.panel !== "chat") {
    state.chatUnread += 1;
    renderUnread();
  }
}

function renderUnread() {
  $("chat-unread").hidden = state.chatUnread === 0;
  $("chat-unread").textContent = String(state.chatUnread);
}

async function sendChat(event) {
  event.preventDefault();
  const input = $("chat-input");
  const text = input.value.trim();
  if (!text || !state.events) return;
  input.value = "";
  try {
    await state.events.chat(state.roomId, text);
  } catch (err) {
    input.value = text;
    console.warn("chat", err);
  }
}

function showPanel(panel) {
  state.panel = panel;
  for (const tab of document.querySelectorAll(".side-tab")) tab.classList.toggle("active", tab.dataset.panel === panel);
  for (const name of ["people", "chat", "invite"]) $(`panel-${name}`).hidden = name !== panel;
  if (panel === "chat") {
    state.chatUnread = 0;
    renderUnread();
    $("chat-input").focus();
  }
}

// -- invitations ----------------------------------------------------------------------------------

async function createInvite() {
  const button = $("invite-create");
  button.disabled = true;
  try {
    const invite = await state.client.createInvite(state.roomId, Number($("invite-ttl").value));
    state.invite = { ...invite, url: new URL(invite.url, window.location.origin).href };
    renderInvite();
  } catch (err) {
    reportError(err);
  } finally {
    button.disabled = false;
  }
}

function renderInvite() {
  const invite = state.invite;
  $("invite-result").hidden = !invite;
  if (!invite) return;
  $("invite-url").value = invite.url;
  const time = new Intl.DateTimeFormat(i18n.lang(), { dateStyle: "short", timeStyle: "short", hour12: false }).format(
    new Date(invite.expires_at * 1000),
  );
  $("invite-expiry").textContent = t("room.expiresAt", { time });
}

async function copyInvite() {
  const input = $("invite-url");
  try {
    await navigator.clipboard.writeText(input.value);
  } catch {
    input.select();
    document.execCommand("copy"); // clipboard API needs a secure context; this works on plain http
  }
  const button = $("invite-copy");
  button.textContent = t("room.copied");
  setTimeout(() => (button.textContent = t("room.copy")), 2000);
}

function renderHigherSites() {
  const room = state.room;
  const higher = [...state.sites.values()].filter((s) => s.id !== room.site_id);
  const list = $("higher-sites");
  list.replaceChildren(
    ...higher.map((site) =>
      el(
        "li",
        { class: "higher-site", dataset: { siteId: site.id } },
        el("span", { class: `level level-${site.level}` }, i18n.levelLabel(site.level)),
        el("span", { class: "name" }, i18n.siteName(site)),
        el(
          "button",
          {
            type: "button",
            class: `button-ghost${state.invitedSites.has(site.id) ? " done" : ""}`,
            onclick: () => inviteSite(site.id),
          },
          t(state.invitedSites.has(site.id) ? "room.invited" : "room.invite"),
        ),
      ),
    ),
  );
  if (!higher.length) list.append(el("li", { class: "side-empty" }, t("room.noHigher")));
}

/** Departments beside the room's site and the sites above it: an opened room may invite them (a standing room may not). */
function renderDepartments() {
  const offered = state.room.kind !== "standing" ? [...state.sites.values()].flatMap((s) => s.departments ?? []) : [];
  $("departments").hidden = !offered.length;
  $("department-list").replaceChildren(
    ...offered.map((department) =>
      el(
        "li",
        { class: "higher-site", dataset: { departmentId: department.id } },
        el("span", { class: "level" }, t(`department.kind.${department.kind}`)),
        el("span", { class: "name" }, i18n.siteName(department)),
        el(
          "button",
          {
            type: "button",
            class: `button-ghost${state.invitedDepartments.has(department.id) ? " done" : ""}`,
            onclick: () => inviteDepartment(department.id),
          },
          t(state.invitedDepartments.has(department.id) ? "room.invited" : "room.invite"),
        ),
      ),
    ),
  );
}

async function inviteDepartment(departmentId) {
  try {
    await state.events.inviteDepartment(state.roomId, departmentId);
    state.invitedDepartments.add(departmentId);
    renderDepartments();
  } catch (err) {
    reportError(socketError(err));
  }
}

async function inviteSite(siteId) {
  try {
    await state.events.inviteSite(state.roomId, siteId);
    state.invitedSites.add(siteId);
    renderHigherSites();
  } catch (err) {
    reportError(socketError(err));
  }
}

// -- tiles ------------------------------------------------------------------------------------------

/** A tile's caption: name, site name, then badges (null ones left out). */
function captionOf(name, siteId, kind, ...badges) {
  return [
    el("span", { class: "tile-name" }, name),
    el("span", { class: "tile-site" }, siteLabel(siteId)),
    kind === "screen" || kind === "ipcam" ? el("span", { class: "tile-kind" }, t(`stream.kind.${kind}`)) : null,
    ...badges,
  ].filter(Boolean);
}

function camOff(name) {
  return el("div", { class: "cam-off" }, el("span", { class: "avatar avatar-large" }, initial(name)));
}

/** Our own camera, from the local capture (no round trip through the hub). */
class SelfTile {
  constructor() {
    this.video = el("video", { autoplay: true, playsinline: true, muted: true });
    this.video.muted = true;
    this.video.srcObject = state.local;
    this.body = el("div", { class: "tile-video" }, this.video);
    this.caption = el("figcaption", {});
    this.el = el("figure", { class: "tile room-tile self" }, this.body, this.caption);
    this.render();
  }

  render() {
    const me = state.participants.get(state.participantId);
    const name = t("room.me", { name: me?.name ?? state.me.name });
    this.body.querySelector(".cam-off")?.remove();
    if (!state.videoOn || !state.local?.getVideoTracks().length) this.body.append(camOff(me?.name ?? state.me.name));
    this.caption.replaceChildren(
      ...captionOf(
        name,
        me?.site_id ?? state.me.site?.id,
        "camera",
        state.audioOn ? null : el("span", { class: "icon-muted", title: t("room.muted") }),
      ),
    );
    this.el.dataset.audio = String(state.audioOn);
    this.el.dataset.video = String(state.videoOn);
    // A training's attendee sends nothing until let speak: the stage is the trainer's.
    this.el.hidden = !mayPublish();
  }

  async level() {
    return state.audioOn ? audioLevel(state.camera?.pc) : 0;
  }
}

/** Another participant's stream, watched with WHEP; retried when the media path fails. */
class RemoteTile {
  constructor(stream) {
    this.stream = stream;
    this.session = null;
    this.closed = false;
    this.status = "tile.connecting";
    this.retryTimer = null;
    this.video = el("video", { autoplay: true, playsinline: true });
    this.video.addEventListener("playing", () => this.setStatus("tile.live"));
    this.statusEl = el("span", { class: "tile-status" });
    this.body = el("div", { class: "tile-video" }, this.video, this.statusEl);
    this.caption = el("figcaption", {});
    this.el = el(
      "figure",
      { class: "tile room-tile", dataset: { streamId: stream.id, participantId: stream.participant_id ?? "", kind: stream.kind } },
      this.body,
      this.caption,
    );
    this.render();
  }

  get participant() {
    return state.participants.get(this.stream.participant_id);
  }

  render() {
    const p = this.participant;
    const name = p?.name ?? this.stream.name;
    const audio = p?.audio !== false;
    const video = p?.video !== false || this.stream.kind === "screen";
    this.el.dataset.audio = String(audio);
    this.el.dataset.video = String(video);
    this.el.dataset.status = this.status.slice("tile.".length);
    this.statusEl.textContent = t(this.status);
    this.body.querySelector(".cam-off")?.remove();
    if (!video) this.body.append(camOff(name));
    this.caption.replaceChildren(
      ...captionOf(
        name,
        this.stream.site_id,
        this.stream.kind,
        p?.hand && this.stream.kind === "camera" ? el("span", { class: "badge badge-hand" }, t("room.handRaised")) : null,
        audio || this.stream.kind === "screen" ? null : el("span", { class: "icon-muted", title: t("room.muted") }),
      ),
    );
  }

  setStatus(status) {
    this.status = status;
    this.render();
  }

  async start() {
    this.setStatus("tile.connecting");
    try {
      const session = await state.client.whepView(this.stream.id, this.video);
      if (this.closed) {
        closeSession(session);
        return;
      }
      this.session = session;
      this.play();
      let grace = null;
      session.pc.addEventListener("connectionstatechange", () => {
        if (this.closed || this.session !== session) return;
        clearTimeout(grace);
        const s = session.pc.connectionState;
        if (s === "failed") this.fail();
        else if (s === "disconnected") grace = setTimeout(() => this.session === session && this.fail(), DISCONNECTED_GRACE_MS);
      });
    } catch (err) {
      if (this.closed) return;
      console.warn("whep", this.stream.id, err);
      if (err instanceof ApiError && err.kind === "not-found") removeTile(this.stream.id);
      else if (err instanceof ApiError && err.kind === "unauthorized") reportError(err);
      else this.fail();
    }
  }

  /** Play with sound; where the browser wants a click first, play muted and ask for one. */
  play() {
    this.video.muted = state.soundBlocked;
    this.video.play().catch((err) => {
      if (err?.name !== "NotAllowedError" || this.closed) return;
      this.video.muted = true;
      this.video.play().catch(() => {});
      state.soundBlocked = true;
      renderBanner();
    });
  }

  fail() {
    this.setStatus("tile.failed");
    const session = this.session;
    this.session = null;
    closeSession(session);
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => !this.closed && this.start(), RETRY_MS);
  }

  async level() {
    return this.participant?.audio === false ? 0 : audioLevel(this.session?.pc);
  }

  close() {
    this.closed = true;
    clearTimeout(this.retryTimer);
    closeSession(this.session);
    this.session = null;
    this.video.srcObject = null;
    this.el.remove();
  }
}

function addTile(stream) {
  if (state.tiles.has(stream.id) || stream.participant_id === state.participantId) return;
  const tile = new RemoteTile(stream);
  state.tiles.set(stream.id, tile);
  $("room-grid").append(tile.el);
  tile.start();
  renderGrid();
}

function removeTile(streamId) {
  const tile = state.tiles.get(streamId);
  if (!tile) return;
  state.tiles.delete(streamId);
  tile.close();
  renderGrid();
}

function renderGrid() {
  const grid = $("room-grid");
  const count = [...grid.children].filter((tile) => !tile.hidden).length;
  grid.dataset.count = String(count);
  grid.style.setProperty("--cols", String(count <= 1 ? 1 : count <= 4 ? 2 : count <= 9 ? 3 : 4));
}

/** Highlight the loudest tile that is speaking at all. */
async function updateSpeaker() {
  const tiles = [state.selfTile, ...state.tiles.values()].filter(Boolean);
  const levels = await Promise.all(tiles.map((tile) => tile.level().catch(() => 0)));
  const loudest = Math.max(0, ...levels);
  tiles.forEach((tile, i) => tile.el.classList.toggle("speaking", loudest >= SPEAKING_LEVEL && levels[i] === loudest));
}

function enableSound() {
  state.soundBlocked = false;
  renderBanner();
  for (const tile of state.tiles.values()) tile.play();
}

// -- start-up ---------------------------------------------------------------------------------------

function renderAll() {
  i18n.apply(document);
  renderHeader();
  renderBanner();
  if (!state.me) return;
  $("prejoin-room").textContent = roomTitle();
  $("prejoin-site").textContent = state.room ? siteLabel(state.room.site_id) : "";
  if (!state.joined && !$("join").disabled) $("join").textContent = t("room.join");
  renderControls();
  renderPeople();
  renderInvite();
  if (state.joined) renderHigherSites();
  state.selfTile?.render();
  for (const tile of state.tiles.values()) tile.render();
}

async function boot() {
  state.client = hubClient("error.roomNoToken");
  if (!state.client) return;
  if (!state.roomId) {
    showFatal("error.roomNotFound");
    return;
  }
  try {
    state.me = await state.client.me();
    const [room, sites] = await Promise.all([state.client.room(state.roomId), state.client.roomSites(state.roomId)]);
    state.room = room;
    state.sites = new Map(sites.map((s) => [s.id, s]));
    for (const department of sites.flatMap((s) => s.departments ?? [])) state.departments.set(department.id, department);
    if (state.me.department) state.departments.set(state.me.department.id, state.me.department);
    learnDepartments(room.participants);
    state.branchSites = new Map((await training.branchSites(state.client, room)).map((s) => [s.id, s]));
    state.participants = new Map(room.participants.map((p) => [p.id, p]));
  } catch (err) {
    startFailed(err, boot, BOOT_RETRY_MS, ROOM_ERRORS);
    return;
  }
  hideFatal();
  if (state.me.role !== "guest") $("name").value = state.me.name;
  renderAll();
  // A guest must type a name before joining, so a kiosk link skips the card only for users the hub names.
  if (state.autojoin && state.me.role !== "guest") {
    state.local = await openCamera().catch((err) => {
      setBanner(...errorKey(err));
      return null;
    });
    await join();
    return;
  }
  await showPrejoin();
}

/** The card before joining: the first screen, and where a kiosk's join that failed comes back to. */
async function showPrejoin() {
  $("prejoin").hidden = false;
  if (state.me.role === "guest") $("name").focus();
  await startPreview();
}

function init() {
  mountTopbar();
  i18n.apply(document);
  $("rejoin").addEventListener("click", () => window.location.reload());
  $("prejoin-form").addEventListener("submit", join);
  $("camera-select").addEventListener("change", (e) => {
    state.cameraId = e.target.value || null;
    startPreview();
  });
  $("mic-select").addEventListener("change", (e) => {
    state.micId = e.target.value || null;
    startPreview();
  });
  $("btn-mic").addEventListener("click", toggleMic);
  $("btn-cam").addEventListener("click", toggleCamera);
  $("btn-share").addEventListener("click", toggleShare);
  $("btn-hand").addEventListener("click", toggleHand);
  $("btn-rec").addEventListener("click", toggleRecording);
  $("btn-leave").addEventListener("click", leave);
  $("chat-form").addEventListener("submit", sendChat);
  $("invite-create").addEventListener("click", createInvite);
  $("invite-copy").addEventListener("click", copyInvite);
  $("banner").addEventListener("click", () => state.soundBlocked && !state.banner && enableSound());
  for (const tab of document.querySelectorAll(".side-tab")) tab.addEventListener("click", () => showPanel(tab.dataset.panel));
  i18n.onLangChange(renderAll);
  window.addEventListener("pagehide", () => {
    // End our streams and viewing sessions now, not at ICE timeout.
    closeSession(state.camera);
    closeSession(state.screenSession);
    for (const tile of state.tiles.values()) tile.close();
    state.events?.close();
  });
  renderAll();
  boot();
}

init();
