// The trainings page: a trainer starts a training for a branch of the tree;
// everyone sees the trainings of their branch (and below) and joins a live
// one; the trainer and the operators above it read who attended, and when.

import { $, apiErrorKey, el, hideFatal, hubClient, renderBanner, startFailed } from "./dom.js";
import * as i18n from "./i18n.js";
import { mountTopbar, setTopbar } from "./topbar.js";

const { t } = i18n;

const REFRESH_MS = 10000;
const STARTER_ROLES = ["trainer", "operator", "admin"];

const state = {
  client: null,
  me: null,
  sites: new Map(), // the caller's jurisdiction, for names in both languages
  trainings: [],
  attendance: null, // {training, attendance}
  shown: new URLSearchParams(window.location.search).get("room"),
  banner: null,
};

function setBanner(key = null, params = {}) {
  state.banner = key ? [key, params] : null;
  renderBanner(state.banner);
}

function reportError(err) {
  console.warn(err);
  setBanner(...apiErrorKey(err));
}

function when(epoch) {
  return epoch
    ? new Intl.DateTimeFormat(i18n.lang(), { dateStyle: "short", timeStyle: "medium", hour12: false }).format(new Date(epoch * 1000))
    : "";
}

function siteLabel(siteId, site = state.sites.get(siteId)) {
  return site ? i18n.siteName(site) : siteId;
}

const canManage = (training) =>
  training.trainer === state.me.user || (["operator", "admin"].includes(state.me.role) && state.sites.has(training.site_id));

// -- starting -------------------------------------------------------------------------

function renderStart() {
  $("start-section").hidden = !STARTER_ROLES.includes(state.me.role);
  const select = $("t-branch");
  const chosen = select.value;
  select.replaceChildren(
    ...[...state.sites.values()]
      .filter((s) => s.level !== "village")
      .map((s) => el("option", { value: s.id, selected: s.id === chosen }, `${i18n.levelLabel(s.level)} · ${i18n.siteName(s)}`)),
  );
}

async function start(event) {
  event.preventDefault();
  const button = $("t-submit");
  button.disabled = true;
  try {
    const training = await state.client.startTraining($("t-title").value.trim(), $("t-branch").value);
    window.location.href = `/rooms/${encodeURIComponent(training.room_id)}`;
  } catch (err) {
    reportError(err);
    button.disabled = false;
  }
}

// -- the list ---------------------------------------------------------------------------

async function refresh() {
  try {
    state.trainings = await state.client.trainings(true);
    renderList();
  } catch (err) {
    reportError(err);
  }
}

function renderList() {
  $("training-empty").hidden = state.trainings.length > 0;
  $("training-rows").replaceChildren(
    ...state.trainings.map((tr) => {
      const live = !tr.ended_at;
      const actions = el("td", { class: "training-actions" });
      if (live) actions.append(el("a", { class: "button", href: `/rooms/${encodeURIComponent(tr.room_id)}` }, t("training.join")));
      if (canManage(tr)) {
        actions.append(el("button", { type: "button", class: "button-ghost", onclick: () => showAttendance(tr.room_id) }, t("training.attendance")));
        if (live) actions.append(el("button", { type: "button", class: "button-ghost", onclick: () => end(tr) }, t("training.end")));
      }
      return el(
        "tr",
        { dataset: { roomId: tr.room_id, state: live ? "live" : "ended" } },
        el("td", {}, when(tr.started_at)),
        el("td", {}, tr.title),
        el("td", {}, siteLabel(tr.site_id, tr.site)),
        el("td", {}, tr.trainer_name),
        el("td", {}, el("span", { class: `badge training-state-${live ? "live" : "ended"}` }, t(live ? "training.live" : "training.ended"))),
        el("td", {}, live ? String(tr.participant_count) : ""),
        actions,
      );
    }),
  );
}

async function end(training) {
  if (!window.confirm(t("training.confirmEnd"))) return;
  try {
    await state.client.endTraining(training.room_id);
    await refresh();
  } catch (err) {
    reportError(err);
  }
}

// -- attendance ---------------------------------------------------------------------------

async function showAttendance(roomId) {
  state.shown = roomId;
  history.replaceState(history.state, "", `/trainings?room=${encodeURIComponent(roomId)}`);
  try {
    state.attendance = await state.client.attendance(roomId);
    renderAttendance();
  } catch (err) {
    reportError(err);
  }
}

function renderAttendance() {
  const data = state.attendance;
  $("attendance-section").hidden = !data;
  if (!data) return;
  const rows = data.attendance;
  $("attendance-title").textContent = t("training.attendanceOf", { title: data.training.title });
  const sites = new Set(rows.map((r) => r.site_id));
  const people = new Set(rows.map((r) => r.user));
  $("attendance-summary").textContent = t("training.att.summary", { sites: sites.size, people: people.size });
  $("attendance-csv").href = state.client.attendanceCsvUrl(data.training.room_id);
  $("attendance-rows").replaceChildren(
    ...rows.map((r) =>
      el(
        "tr",
        { dataset: { user: r.user, participantId: r.participant_id } },
        el("td", {}, siteLabel(r.site_id)),
        el("td", {}, r.name),
        el("td", {}, t(`user.role.${r.role}`)),
        el("td", {}, when(r.joined_at)),
        el("td", {}, r.left_at ? `${when(r.left_at)}${r.interrupted ? ` ${t("training.att.interrupted")}` : ""}` : t("training.att.present")),
        el("td", {}, String(r.minutes)),
      ),
    ),
  );
}

// -- start-up -------------------------------------------------------------------------------

function renderAll() {
  i18n.apply(document);
  document.title = `${t("training.pageTitle")} · ${t("app.title")}`;
  if (state.banner) setBanner(...state.banner);
  if (!state.me) return;
  setTopbar({ me: state.me });
  renderStart();
  renderList();
  renderAttendance();
}

async function boot() {
  try {
    state.me = await state.client.me();
    state.sites = new Map((await state.client.sites()).map((s) => [s.id, s]));
  } catch (err) {
    startFailed(err, boot, REFRESH_MS);
    return;
  }
  hideFatal();
  $("trainings").hidden = false;
  renderAll();
  await refresh();
  if (state.shown) await showAttendance(state.shown);
  setInterval(refresh, REFRESH_MS);
}

function init() {
  mountTopbar();
  $("start-form").addEventListener("submit", start);
  i18n.onLangChange(renderAll);
  renderAll();
  state.client = hubClient();
  if (!state.client) return;
  boot();
}

init();
