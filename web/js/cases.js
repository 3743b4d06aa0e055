// The cases view: my site's queue and the cases below it, opening a case,
// one case's history, sessions and recordings, and what the caller may do
// with it (the hub says which: detail.actions). Live: case-updated and
// case-escalated events refresh the list and the open case.

import { ApiError } from "./api.js";
import { $, apiErrorKey, el, hideFatal, hubClient, renderBanner, startFailed } from "./dom.js";
import * as i18n from "./i18n.js";
import { mountTopbar, setTopbar } from "./topbar.js";

const { t } = i18n;
const DISPUTE_TYPES = ["family", "neighbour", "land", "wages", "contract", "other"];
const STATUSES = ["open", "mediating", "agreement", "failed", "escalated", "closed"];
const PARTY_ROLES = ["applicant", "respondent", "other"];
const BOOT_RETRY_MS = 5000;

const state = {
  client: null,
  me: null,
  sites: new Map(), // id -> site, from the jurisdiction and from the cases' own site lists
  cases: [],
  selected: null, // case id
  detail: null,
  banner: null, // [key, params]
};

function when(epoch) {
  return epoch ? i18n.formatClock(new Date(epoch * 1000)) : "";
}

function siteLabel(id) {
  const site = state.sites.get(id);
  return site ? i18n.siteName(site) : id;
}

function setBanner(key = null, params = {}) {
  state.banner = key ? [key, params] : null;
  renderBanner(state.banner);
}

function showError(err) {
  console.warn(err);
  if (err instanceof ApiError && err.status === 409) setBanner("case.error.conflict");
  else if (err instanceof ApiError && err.status === 400) setBanner("case.error.invalid", { detail: err.problem?.detail || "" });
  else setBanner(...apiErrorKey(err));
}

function remember(cases) {
  for (const c of cases) for (const [id, site] of Object.entries(c.sites || {})) state.sites.set(id, site);
}

// -- list -------------------------------------------------------------------------------

async function loadList() {
  state.cases = await state.client.cases({ queue: $("f-queue").value, status: $("f-status").value });
  remember(state.cases);
  renderList();
}

function renderList() {
  $("cases-empty").hidden = state.cases.length > 0;
  $("case-rows").replaceChildren(
    ...state.cases.map((c) =>
      el(
        "tr",
        {
          class: c.id === state.selected ? "case-row selected" : "case-row",
          dataset: { caseId: c.id, status: c.status },
          onclick: () => select(c.id).catch(showError),
        },
        el("td", {}, el("a", { href: `?case=${encodeURIComponent(c.id)}`, onclick: (e) => e.preventDefault() }, c.title)),
        el("td", {}, el("span", { class: `case-status status-${c.status}` }, t(`case.status.${c.status}`))),
        el("td", {}, siteLabel(c.site_id)),
        el("td", {}, when(c.updated_at)),
      ),
    ),
  );
}

// -- one case ---------------------------------------------------------------------------

async function select(caseId) {
  state.selected = caseId;
  history.replaceState(null, "", `/cases?case=${encodeURIComponent(caseId)}`);
  state.detail = await state.client.caseDetail(caseId);
  remember([state.detail]);
  $("case-form").hidden = true;
  renderList();
  renderDetail();
}

function historyText(h) {
  const status = (s) => (s ? t(`case.status.${s}`) : "");
  switch (h.action) {
    case "status":
      return t("case.action.status", { from: status(h.from_status), to: status(h.to_status) });
    case "escalated":
      return t("case.action.escalated", { from: siteLabel(h.from_site), to: siteLabel(h.to_site) });
    default:
      return t(`case.action.${h.action}`);
  }
}

function sessionItem(s) {
  const span = s.started_at
    ? `${when(s.started_at)} – ${s.ended_at ? when(s.ended_at) : t("case.session.live")}`
    : t("case.session.notStarted");
  const recordings = s.recordings.length
    ? s.recordings.map((r) =>
        r.playable
          ? el("a", { class: "case-recording", href: `/recordings/${encodeURIComponent(r.id)}` }, t("case.recording", { when: when(r.started_at) }))
          : el("span", { class: "case-recording" }, t("case.recordingElsewhere")),
      )
    : [el("span", { class: "muted" }, t("case.noRecordings"))];
  const enter = s.ended_at ? null : el("a", { class: "button-ghost", href: `/rooms/${encodeURIComponent(s.room_id)}` }, t("case.join"));
  return el(
    "li",
    { class: "case-session", dataset: { roomId: s.room_id, siteId: s.site_id } },
    el("strong", {}, siteLabel(s.site_id)),
    ` · ${span} `,
    enter,
    el("div", { class: "case-recordings" }, ...recordings),
  );
}

function controls(c) {
  const a = c.actions;
  if (!a.statuses.length && !a.session && !a.escalate) {
    return c.status === "closed" ? null : el("p", { class: "case-readonly" }, t("case.readonly", { site: siteLabel(c.site_id) }));
  }
  const box = el("div", { class: "case-controls" });
  if (a.session) {
    box.append(el("button", { id: "hold-session", class: "button", type: "button", onclick: () => holdSession(c.id) }, t("case.hold")));
  }
  if (a.statuses.length) {
    const select = el("select", { id: "status-select", "aria-label": t("case.setStatus") },
      el("option", { value: "" }, t("case.setStatus")),
      ...a.statuses.map((s) => el("option", { value: s }, t(`case.status.${s}`))),
    );
    const outcome = el("textarea", { id: "outcome-input", rows: 2, maxlength: 2000, placeholder: t("case.outcomeHint") });
    outcome.value = c.outcome;
    const save = async () => {
      // The outcome text was edited over this version: another's edit meanwhile is a 409, not overwritten.
      const changes = { outcome: outcome.value, version: c.version };
      if (select.value) changes.status = select.value;
      await act(() => state.client.updateCase(c.id, changes));
    };
    box.append(el("div", { class: "case-status-edit" }, select, outcome, el("button", { id: "save-status", class: "button-ghost", type: "button", onclick: save }, t("case.save"))));
  }
  if (a.escalate) {
    const note = el("input", { id: "escalate-note", maxlength: 1000, placeholder: t("case.escalateHint") });
    const go = () => act(() => state.client.escalateCase(c.id, note.value, c.version));
    box.append(el("div", { class: "case-escalate" }, note, el("button", { id: "escalate", class: "button", type: "button", onclick: go }, t("case.escalate"))));
  }
  return box;
}

function renderDetail() {
  const c = state.detail;
  $("case-pick").hidden = Boolean(c) || !$("case-form").hidden;
  const box = $("case-detail");
  box.hidden = !c;
  if (!c) return;
  box.dataset.caseId = c.id;
  box.dataset.status = c.status;
  box.dataset.siteId = c.site_id;
  const parts = [
    el("h2", {}, c.title, " ", el("span", { id: "case-status", class: `case-status status-${c.status}` }, t(`case.status.${c.status}`))),
    el("p", { class: "rec-meta" }, [
      t(`case.type.${c.dispute_type}`),
      t("case.origin", { site: siteLabel(c.origin_site_id) }),
      t("case.at", { site: siteLabel(c.site_id) }),
      t("case.opened", { user: c.created_by, when: when(c.created_at) }),
    ].join(" · ")),
    controls(c),
    el("h3", {}, t("case.parties")),
    el("ul", { class: "case-parties-list" }, ...c.parties.map((p) => el("li", {}, [p.name, t(`case.party.${p.role}`), p.phone].filter(Boolean).join(" · ")))),
    c.summary ? el("h3", {}, t("case.summary")) : null,
    c.summary ? el("p", { class: "case-text" }, c.summary) : null,
    c.outcome ? el("h3", {}, t("case.outcome")) : null,
    c.outcome ? el("p", { id: "case-outcome", class: "case-text" }, c.outcome) : null,
    el("h3", {}, t("case.sessions")),
    c.sessions.length ? el("ul", { id: "case-sessions", class: "case-sessions" }, ...c.sessions.map(sessionItem)) : el("p", { class: "muted" }, t("case.noSessions")),
    el("h3", {}, t("case.history")),
    el("ol", { id: "case-history", class: "case-history" }, ...c.history.map((h) =>
      el("li", { dataset: { action: h.action } }, `${when(h.at)} · ${h.user} · ${historyText(h)}`, h.note ? el("span", { class: "case-note" }, ` — ${h.note}`) : null),
    )),
  ];
  box.replaceChildren(...parts.filter(Boolean));
}

async function act(call) {
  try {
    await call();
    setBanner();
  } catch (err) {
    showError(err);
  }
  // The event refreshes everyone else; this caller sees its own change (or the current state after a 409) now.
  await refresh().catch(showError);
}

async function holdSession(caseId) {
  try {
    const session = await state.client.holdSession(caseId);
    window.location.href = `/rooms/${encodeURIComponent(session.room_id)}`;
  } catch (err) {
    showError(err);
    await refresh().catch(showError);
  }
}

async function refresh() {
  await loadList();
  if (state.selected) await select(state.selected);
}

// -- a new case --------------------------------------------------------------------------

function partyRow() {
  return el(
    "div",
    { class: "case-party" },
    el("input", { class: "p-name", maxlength: 64, placeholder: t("case.form.partyName"), "aria-label": t("case.form.partyName") }),
    el("select", { class: "p-role", "aria-label": t("case.form.partyRole") }, ...PARTY_ROLES.map((r) => el("option", { value: r }, t(`case.party.${r}`)))),
    el("input", { class: "p-phone", maxlength: 32, placeholder: t("case.form.partyPhone"), "aria-label": t("case.form.partyPhone") }),
  );
}

function showForm() {
  state.selected = null;
  state.detail = null;
  $("case-form").reset();
  $("c-site").value = state.me.site.id;
  $("c-parties").replaceChildren(partyRow(), partyRow());
  $("c-error").hidden = true;
  $("case-form").hidden = false;
  renderDetail();
  renderList();
}

async function submitForm(event) {
  event.preventDefault();
  const parties = [...$("c-parties").querySelectorAll(".case-party")]
    .map((row) => ({ name: row.querySelector(".p-name").value.trim(), role: row.querySelector(".p-role").value, phone: row.querySelector(".p-phone").value.trim() }))
    .filter((p) => p.name);
  const body = { site_id: $("c-site").value, title: $("c-title").value.trim(), dispute_type: $("c-type").value, parties, summary: $("c-summary").value };
  try {
    const created = await state.client.openCase(body);
    $("case-form").hidden = true;
    await loadList();
    await select(created.id);
  } catch (err) {
    const [key, params] = err instanceof ApiError && err.status === 400 ? ["case.error.invalid", { detail: err.problem?.detail || "" }] : apiErrorKey(err);
    $("c-error").textContent = t(key, params);
    $("c-error").hidden = false;
  }
}

// -- setup -------------------------------------------------------------------------------

function fillSelects() {
  const status = $("f-status").value;
  $("f-status").replaceChildren(el("option", { value: "" }, t("case.statusAll")), ...STATUSES.map((s) => el("option", { value: s }, t(`case.status.${s}`))));
  $("f-status").value = status;
  const type = $("c-type").value;
  $("c-type").replaceChildren(...DISPUTE_TYPES.map((d) => el("option", { value: d }, t(`case.type.${d}`))));
  if (type) $("c-type").value = type;
}

function rerender() {
  fillSelects();
  renderBanner(state.banner);
  renderList();
  renderDetail();
}

function onCaseEvent(event) {
  remember([event.case]);
  if (event.type === "case-escalated" && event.case.site_id === state.me.site.id) {
    setBanner("case.arrived", { title: event.case.title, site: siteLabel(event.from_site) });
  }
  loadList().catch(showError);
  if (state.selected === event.case.id) select(state.selected).catch(showError);
}

async function boot() {
  try {
    state.me = await state.client.me();
    setTopbar({ me: state.me });
    for (const site of await state.client.sites()) state.sites.set(site.id, site);
    await loadList();
  } catch (err) {
    startFailed(err, boot, BOOT_RETRY_MS);
    return;
  }
  hideFatal();
  $("c-site").replaceChildren(...[...state.sites.values()].map((s) => el("option", { value: s.id }, i18n.siteName(s))));
  $("cases-view").hidden = false;
  const events = state.client.events();
  setTopbar({ events });
  events.on("case-updated", onCaseEvent);
  events.on("case-escalated", onCaseEvent);
  // After a reconnect, events sent meanwhile are lost: read the list again.
  let connectedOnce = false;
  events.on("state", ({ state: socket }) => {
    if (socket !== "open") return;
    if (connectedOnce) refresh().catch(showError);
    connectedOnce = true;
  });
  window.addEventListener("pagehide", () => events.close());
  try {
    await events.connect();
    const wanted = new URLSearchParams(window.location.search).get("case");
    if (wanted) await select(wanted);
  } catch (err) {
    showError(err);
  }
  document.body.dataset.ready = "1";
}

function init() {
  mountTopbar();
  i18n.apply(document);
  fillSelects();
  i18n.onLangChange(rerender);
  $("f-queue").addEventListener("change", () => loadList().catch(showError));
  $("f-status").addEventListener("change", () => loadList().catch(showError));
  $("new-case").addEventListener("click", showForm);
  $("c-add-party").addEventListener("click", () => $("c-parties").append(partyRow()));
  $("c-cancel").addEventListener("click", () => {
    $("case-form").hidden = true;
    renderDetail();
  });
  $("case-form").addEventListener("submit", submitForm);
  state.client = hubClient();
  if (!state.client) return;
  boot();
}

init();
