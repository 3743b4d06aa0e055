// The statistics view: a branch and a period; cases by level, status and
// dispute type, success and escalation rates, training attendance by site.
// Charts are plain HTML/CSS bars (no chart library: the hub runs offline).

import { $, apiErrorKey, el, hideFatal, hubClient, renderBanner, startFailed } from "./dom.js";
import * as i18n from "./i18n.js";
import { mountTopbar, setTopbar } from "./topbar.js";

const { t } = i18n;
const STATUSES = ["open", "mediating", "agreement", "failed", "escalated", "closed"];
const DEFAULT_DAYS = 30;
const BOOT_RETRY_MS = 5000;

const state = { client: null, sites: new Map(), stats: null };

function showError(err) {
  console.warn(err);
  renderBanner(apiErrorKey(err));
}

/** A date input's value as epoch seconds of local midnight (plusDays later). */
function dayStart(value, plusDays = 0) {
  if (!value) return "";
  const date = new Date(`${value}T00:00:00`);
  date.setDate(date.getDate() + plusDays);
  return String(date.getTime() / 1000);
}

function isoDay(date) {
  const pad = (n) => String(n).padStart(2, "0");
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}`;
}

function filters() {
  return { site: $("f-site").value, from: dayStart($("f-from").value), to: dayStart($("f-to").value, 1) };
}

function percent(rate) {
  return rate === null || rate === undefined ? "—" : `${Math.round(rate * 1000) / 10}%`;
}

/** Horizontal bars: rows of {label, value (0..max), text}. */
function bars(rows, max, key) {
  return el(
    "div",
    { class: "stats-bars", dataset: { chart: key } },
    ...rows.map((r) =>
      el(
        "div",
        { class: "stats-bar-row", dataset: { item: r.item } },
        el("span", { class: "stats-bar-label" }, r.label),
        el("span", { class: "stats-bar-track" }, el("span", { class: `stats-bar ${r.cls || ""}`, style: `width: ${max > 0 ? (100 * r.value) / max : 0}%` })),
        el("span", { class: "stats-bar-value" }, r.text),
      ),
    ),
  );
}

/** One stacked bar per level, a segment per status. */
function stackedLevels(levels) {
  const max = Math.max(1, ...levels.map((l) => l.cases));
  return el(
    "div",
    { class: "stats-bars", dataset: { chart: "level" } },
    ...levels.map((l) =>
      el(
        "div",
        { class: "stats-bar-row", dataset: { item: l.level } },
        el("span", { class: "stats-bar-label" }, i18n.levelLabel(l.level)),
        el(
          "span",
          { class: "stats-bar-track" },
          ...STATUSES.filter((s) => l.by_status[s]).map((s) =>
            el("span", { class: `stats-bar status-${s}`, title: `${t(`case.status.${s}`)}: ${l.by_status[s]}`, style: `width: ${(100 * l.by_status[s]) / max}%` }),
          ),
        ),
        el("span", { class: "stats-bar-value" }, t("stats.count", { n: l.cases })),
      ),
    ),
    el("div", { class: "stats-legend" }, ...STATUSES.map((s) => el("span", {}, el("i", { class: `status-${s}` }), t(`case.status.${s}`)))),
  );
}

function render() {
  const s = state.stats;
  if (!s) return;
  const total = s.totals;
  const card = (key, value, id) => el("div", { class: "stats-total", dataset: { metric: id } }, el("span", { class: "stats-total-value" }, value), el("span", {}, t(key)));
  $("totals").replaceChildren(
    card("stats.cases", String(total.cases), "cases"),
    card("stats.concluded", String(total.concluded), "concluded"),
    card("stats.successRate", percent(total.success_rate), "success_rate"),
    card("stats.escalationRate", percent(total.escalation_rate), "escalation_rate"),
  );
  const levels = s.by_level.filter((l) => l.handled > 0 || l.cases > 0);
  $("chart-level").replaceChildren(stackedLevels(levels));
  const statusMax = Math.max(1, ...Object.values(s.by_status));
  $("chart-status").replaceChildren(
    bars(STATUSES.map((st) => ({ item: st, label: t(`case.status.${st}`), value: s.by_status[st], text: String(s.by_status[st]), cls: `status-${st}` })), statusMax, "status"),
  );
  $("chart-success").replaceChildren(
    bars(levels.map((l) => ({ item: l.level, label: i18n.levelLabel(l.level), value: l.success_rate ?? 0, text: `${percent(l.success_rate)} (${t("stats.rateOf", { part: l.agreement, whole: l.concluded })})` })), 1, "success"),
  );
  $("chart-escalation").replaceChildren(
    bars(levels.map((l) => ({ item: l.level, label: i18n.levelLabel(l.level), value: l.escalation_rate ?? 0, text: `${percent(l.escalation_rate)} (${t("stats.rateOf", { part: l.escalated, whole: l.handled })})` })), 1, "escalation"),
  );
  const typeMax = Math.max(1, ...Object.values(s.by_type));
  $("chart-type").replaceChildren(bars(Object.entries(s.by_type).map(([k, n]) => ({ item: k, label: t(`case.type.${k}`), value: n, text: String(n) })), typeMax, "type"));
  // Referrals by department kind: the bar is the count, the text its answers.
  const referred = (s.by_referral || []).filter((r) => r.referrals > 0);
  const referralMax = Math.max(1, ...referred.map((r) => r.referrals));
  const answers = (r) => ["accepted", "declined", "pending"].map((o) => `${t(`referral.decision.${o}`)} ${r[o]}`).join(" · ");
  $("chart-referral").replaceChildren(
    referred.length
      ? bars(referred.map((r) => ({ item: r.kind, label: t(`department.kind.${r.kind}`), value: r.referrals, text: `${r.referrals} (${answers(r)})` })), referralMax, "referral")
      : el("p", { class: "rec-empty" }, t("stats.noReferrals")),
  );
  const training = s.training || [];
  const minutesMax = Math.max(1, ...training.map((r) => r.minutes));
  $("chart-training").replaceChildren(
    ...(training.length
      ? [
          bars(training.map((r) => ({ item: r.site_id, label: siteLabel(r.site_id), value: r.minutes, text: `${r.trainings} · ${r.people} · ${r.minutes}` })), minutesMax, "training"),
          el("p", { class: "rec-meta" }, `${t("stats.col.trainings")} · ${t("stats.col.people")} · ${t("stats.col.minutes")}`),
        ]
      : [el("p", { class: "rec-empty" }, t("stats.noTraining"))]),
  );
}

function siteLabel(id) {
  const site = state.sites.get(id);
  return site ? i18n.siteName(site) : id;
}

async function show() {
  const wanted = filters();
  state.stats = await state.client.stats(wanted);
  $("csv").href = state.client.statsCsvUrl(wanted);
  renderBanner(null);
  render();
  document.body.dataset.ready = "1";
}

async function boot() {
  try {
    setTopbar({ me: await state.client.me() });
    for (const site of await state.client.sites()) state.sites.set(site.id, site);
    fillSites();
    await show();
  } catch (err) {
    startFailed(err, boot, BOOT_RETRY_MS);
    return;
  }
  hideFatal();
  $("stats-view").hidden = false;
}

function init() {
  mountTopbar();
  i18n.apply(document);
  i18n.onLangChange(() => {
    fillSites();
    render();
  });
  const today = new Date();
  $("f-to").value = isoDay(today);
  $("f-from").value = isoDay(new Date(today.getTime() - DEFAULT_DAYS * 86400_000));
  $("filters").addEventListener("submit", (event) => {
    event.preventDefault();
    show().catch(showError);
  });
  state.client = hubClient();
  if (!state.client) return;
  boot();
}

function fillSites() {
  const current = $("f-site").value;
  $("f-site").replaceChildren(...[...state.sites.values()].map((s) => el("option", { value: s.id }, `${i18n.siteName(s)} (${i18n.levelLabel(s.level)})`)));
  if (current) $("f-site").value = current;
}

init();
