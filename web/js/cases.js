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
const ASKS = ["judicial_confirmation", "police_handling", "legal_advice", "petition_handling"];
const PARTY_ROLES = ["applicant", "respondent", "other"];
const BOOT_RETRY_MS = 5000;

const state = {
  client: null,
  me: null,
  sites: new Map(), // id -> site, from the jurisdiction and from the cases' own site lists
  departments: new Map(), // id -> department, from referrals and the referable list
  referable: [], // departments the selected case may be referred to
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
  for (const r of state.detail.referrals ?? []) if (r.department) state.departments.set(r.department_id, r.department);
  // Who the case may be referred to: departments beside its current site and the sites above it.
  state.referable = state.detail.actions.refer ? await state.client.departments(state.detail.site_id) : [];
  for (const d of state.referable) state.departments.set(d.id, d);
  $("case-form").hidden = true;
  renderList();
  renderDetail();
}

function departmentLabel(id) {
  const department = state.departments.get(id);
  return department ? i18n.siteName(department) : id;
}

function historyText(h) {
  const status = (s) => (s ? t(`case.status.${s}`) : "");
  switch (h.action) {
    case "referred":
      return t("case.action.referred", { department: departmentLabel(h.department) });
    case "referral-answered":
      return t("case.action.referral-answered", { department: departmentLabel(h.department) });
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

/** A referral's line: to whom, what is asked, and the answer (or that it is awaited). */
function referralItem(r) {
  const answer = r.decision
    ? [t(`referral.decision.${r.decision}`), r.outcome, r.document_no].filter(Boolean).join(" · ")
    : t("referral.decision.pending");
  return el(
    "li",
    { class: "case-referral", dataset: { referralId: r.id, departmentId: r.department_id, decision: r.decision ?? "pending" } },
    el("strong", {}, departmentLabel(r.department_id)),
    ` · ${t(`referral.ask.${r.ask}`)}${r.note ? ` — ${r.note}` : ""} · `,
    el("span", { class: "referral-answer" }, answer),
  );
}

/** Refer the case: a department beside its site or above, what is asked, a note. */
function referForm(c) {
  const department = el("select", { id: "refer-department", "aria-label": t("case.referTo") },
    ...state.referable.map((d) => el("option", { value: d.id }, `${i18n.siteName(d)} (${t(`department.kind.${d.kind}`)})`)),
  );
  const ask = el("select", { id: "refer-ask", "aria-label": t("case.referAsk") }, ...ASKS.map((a) => el("option", { value: a }, t(`referral.ask.${a}`))));
  const note = el("input", { id: "refer-note", maxlength: 1000, placeholder: t("case.referHint") });
  const go = () => act(() => state.client.referCase(c.id, { department_id: department.value, ask: ask.value, note: note.value, version: c.version }));
  return el("div", { class: "case-refer" }, department, ask, note, el("button", { id: "refer", class: "button-ghost", type: "button", onclick: go }, t("case.refer")));
}

/** A department's answer to the referral it has yet to answer. */
function answerForm(c, referralId) {
  const decision = el("select", { id: "answer-decision", "aria-label": t("case.answer") }, ...["accepted", "declined"].map((d) => el("option", { value: d }, t(`referral.decision.${d}`))));
  const outcome = el("input", { id: "answer-outcome", maxlength: 2000, placeholder: t("case.answerHint") });
  const documentNo = el("input", { id: "answer-document", maxlength: 64, placeholder: t("case.documentHint") });
  const go = () => act(() => state.client.answerReferral(c.id, referralId, { decision: decision.value, outcome: outcome.value, document_no: documentNo.value }));
  return el("div", { class: "case-answer", dataset: { referralId } }, decision, outcome, documentNo, el("button", { id: "answer", class: "button", type: "button", onclick: go }, t("case.answer")));
}

function controls(c) {
  const a = c.actions;
  if (a.answer?.length) return el("div", { class: "case-controls" }, ...a.answer.map((id) => answerForm(c, id)));
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
  if (a.refer && state.referable.length) box.append(referForm(c));
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
    c.referrals?.length ? el("h3", {}, t("case.referrals")) : null,
    c.referrals?.length ? el("ul", { id: "case-referrals", class: "case-sessions" }, ...c.referrals.map(referralItem)) : null,
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
  if (event.type === "case-escalated" && event.case.site_id === state.me.site?.id) {
    setBanner("case.arrived", { title: event.case.title, site: siteLabel(event.from_site) });
  }
  if (event.type === "case-referred" && event.referral.department_id === state.me.department?.id) {
    setBanner("case.referredHere", { title: event.case.title });
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
  $("new-case").hidden = Boolean(state.me.department); // a department answers referrals, it opens no case
  $("c-site").replaceChildren(...[...state.sites.values()].map((s) => el("option", { value: s.id }, i18n.siteName(s))));
  $("cases-view").hidden = false;
  const events = state.client.events();
  setTopbar({ events });
  events.on("case-updated", onCaseEvent);
  events.on("case-escalated", onCaseEvent);
  events.on("case-referred", onCaseEvent);
  events.on("referral-answered", onCaseEvent);
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
