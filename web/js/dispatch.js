// The console's dispatch panel: emergency calls ringing at this operator
// (banner, ring tone, Answer) and convening the sites ticked on the tree
// (a conference with a live roll call). Mounted by console.js:
//   mountDispatch(section, {client, tree, selectedSites, events?})
// `tree` is the site list, `selectedSites()` the ticked site ids; `events`
// is the console's event socket if it shares one, else the panel opens its own.

import { ApiError } from "./api.js";
import { apiErrorKey, el } from "./dom.js";
import * as i18n from "./i18n.js";

const { t } = i18n;

/** Finished calls stay listed this long, so the loser sees who answered. */
const KEEP_ENDED_MS = 10 * 60 * 1000;
const RECENT_SHOWN = 5;

export function mountDispatch(section, { client, tree = [], selectedSites = () => [], events = null } = {}) {
  const sites = new Map(tree.map((s) => [s.id, s]));
  const state = {
    calls: new Map(), // call id -> call (ringing first, then ended ones)
    mine: new Map(), // call id -> room id of calls this console answered
    pending: new Set(), // call ids being answered
    conference: null, // {room, roll}
    notice: null, // [key, params]
  };
  const ring = new Ring();
  const ownSocket = !events;
  const socket = events ?? client.events();

  // -- rendering ---------------------------------------------------------------

  const siteLabel = (call) => {
    const site = sites.get(call.site_id);
    if (site) return i18n.siteName(site);
    return i18n.lang() === "en" && call.site_name_en ? call.site_name_en : call.site_name || call.site_id;
  };

  const alerts = el("div", { class: "call-alerts", role: "alert", "aria-live": "assertive" });
  const list = el("ul", { class: "dispatch-calls" });
  const notice = el("p", { class: "dispatch-notice", hidden: true });
  const titleInput = el("input", { type: "text", maxlength: "100", class: "dispatch-title" });
  const conveneButton = el("button", { type: "button", class: "button dispatch-convene", onclick: convene });
  const conference = el("div", { class: "dispatch-conference", hidden: true });
  const heading = el("h2", {});
  const callsHeading = el("h3", {});
  section.replaceChildren(
    heading,
    alerts,
    callsHeading,
    list,
    el("div", { class: "dispatch-convene-form" }, titleInput, conveneButton),
    notice,
    conference,
  );

  function callLine(call, tag = "li") {
    const from = t("dispatch.from", { site: siteLabel(call), name: call.from.name });
    const roomId = state.mine.get(call.id);
    let status;
    if (call.state === "ringing") {
      const seconds = Math.max(0, Math.round(Date.now() / 1000 - call.at));
      const busy = state.pending.has(call.id);
      status = [
        el("span", { class: "call-elapsed", dataset: { at: call.at } }, t("dispatch.elapsed", { s: seconds })),
        el(
          "button",
          { type: "button", class: "button call-answer", disabled: busy, onclick: () => answer(call.id) },
          t(busy ? "dispatch.answering" : "dispatch.answer"),
        ),
      ];
    } else if (call.state === "answered" && roomId) {
      status = [
        el("span", { class: "call-outcome mine" }, t("dispatch.answeredByYou")),
        el("a", { class: "button call-enter", href: roomLink(roomId), target: "_blank" }, t("dispatch.enterCall")),
      ];
    } else if (call.state === "answered") {
      const name = call.answered_by?.name ?? "?";
      status = [el("span", { class: "call-outcome" }, t("dispatch.answeredBy", { name }))];
    } else {
      status = [el("span", { class: "call-outcome" }, t(call.state === "missed" ? "dispatch.missed" : "dispatch.cancelled"))];
    }
    if (call.note) status.unshift(el("span", { class: "call-note" }, call.note));
    return el(
      tag,
      { class: `call call-${call.state}`, dataset: { callId: call.id, state: call.state } },
      el("strong", { class: "call-from" }, from),
      ...status,
    );
  }

  function render() {
    heading.textContent = t("dispatch.heading");
    callsHeading.textContent = t("dispatch.calls");
    titleInput.placeholder = t("dispatch.conveneTitle");
    titleInput.setAttribute("aria-label", t("dispatch.conveneTitle"));
    conveneButton.textContent = t("dispatch.convene");
    const all = [...state.calls.values()].sort((a, b) => b.at - a.at);
    const ringing = all.filter((c) => c.state === "ringing");
    const ended = all.filter((c) => c.state !== "ringing").slice(0, RECENT_SHOWN);
    alerts.replaceChildren(
      ...ringing.map((call) => el("div", { class: "call-alert" }, el("strong", {}, t("dispatch.alert")), callLine(call, "div"))),
    );
    alerts.hidden = !ringing.length;
    const empty = all.length ? [] : [el("li", { class: "dispatch-empty" }, t("dispatch.noCalls"))];
    list.replaceChildren(...ended.map((call) => callLine(call)), ...empty);
    notice.hidden = !state.notice;
    notice.textContent = state.notice ? t(...state.notice) : "";
    renderConference();
    if (ringing.length) ring.start();
    else ring.stop();
  }

  function renderConference() {
    const conf = state.conference;
    conference.hidden = !conf;
    if (!conf) return;
    const rows = conf.roll?.sites ?? conf.room.admit.map((id) => ({ site_id: id, joined: false, participants: [] }));
    const present = rows.filter((r) => r.joined).length;
    conference.replaceChildren(
      el("h3", {}, conf.room.title || t("room.kind.conference")),
      el("p", { class: "rollcall-count" }, t("dispatch.rollcall", { joined: present, total: rows.length })),
      el(
        "ul",
        { class: "rollcall" },
        ...rows.map((row) => {
          const site = sites.get(row.site_id) ?? { name: row.name || row.site_id, name_en: row.name_en };
          const who = row.participants.map((p) => p.name).join(i18n.lang() === "en" ? ", " : "、");
          const since = row.since ? i18n.formatClock(new Date(row.since * 1000)).split(" ").pop() : "";
          return el(
            "li",
            { class: row.joined ? "joined" : "absent", dataset: { siteId: row.site_id } },
            el("span", { class: "rollcall-site" }, i18n.siteName(site)),
            el("span", { class: "rollcall-state" }, t(row.joined ? "dispatch.joined" : "dispatch.notJoined")),
            row.joined ? el("span", { class: "rollcall-who" }, `${who} · ${since}`) : null,
          );
        }),
      ),
      el("a", { class: "button dispatch-enter", href: roomLink(conf.room.id), target: "_blank" }, t("dispatch.enterConference")),
    );
  }

  // -- calls ---------------------------------------------------------------------

  function remember(call) {
    state.calls.set(call.id, call);
    const now = Date.now() / 1000;
    for (const [id, c] of state.calls) {
      if (c.state !== "ringing" && (now - (c.ended_at ?? c.at)) * 1000 > KEEP_ENDED_MS) state.calls.delete(id);
    }
    render();
  }

  async function answer(callId) {
    state.pending.add(callId);
    render();
    try {
      const { call, room } = await client.answerCall(callId);
      state.mine.set(call.id, room.id);
      state.notice = null;
      remember(call);
    } catch (err) {
      if (err instanceof ApiError && err.status === 409 && err.problem?.call) {
        remember({ ...state.calls.get(callId), ...err.problem.call });
      } else {
        console.warn(err);
        state.notice = apiErrorKey(err);
      }
    } finally {
      state.pending.delete(callId);
      render();
    }
  }

  async function loadCalls() {
    try {
      for (const call of await client.calls()) if (!state.calls.has(call.id)) state.calls.set(call.id, call);
      render();
    } catch (err) {
      console.warn("calls", err);
    }
  }

  // -- convening -----------------------------------------------------------------

  async function convene() {
    const chosen = selectedSites();
    if (!chosen.length) {
      state.notice = ["dispatch.noSelection", {}];
      render();
      return;
    }
    conveneButton.disabled = true;
    try {
      const room = await client.convene(titleInput.value.trim(), chosen);
      if (state.conference) socket.leave(state.conference.room.id).catch(() => {});
      state.conference = { room, roll: null };
      state.notice = null;
      await socket.join(room.id, null, { watch: true }).catch((err) => console.warn("watch", err));
      await refreshRoll();
    } catch (err) {
      console.warn(err);
      state.notice = apiErrorKey(err);
    } finally {
      conveneButton.disabled = false;
      render();
    }
  }

  async function refreshRoll() {
    const conf = state.conference;
    if (!conf) return;
    try {
      const roll = await client.rollcall(conf.room.id);
      if (state.conference === conf) conf.roll = roll;
    } catch (err) {
      console.warn("rollcall", err);
    }
    render();
  }

  // -- live events ---------------------------------------------------------------

  const onRoom = (m) => (m.room_id ?? m.room?.id) === state.conference?.room.id && refreshRoll();
  socket.on("call-ringing", (m) => remember(m.call));
  socket.on("call-answered", (m) => remember(m.call));
  socket.on("call-ended", (m) => remember(m.call));
  socket.on("call-missed", (m) => remember(m.call));
  socket.on("participant-joined", onRoom);
  socket.on("participant-left", onRoom);
  socket.on("joined", onRoom); // a rejoin after a reconnect: the roster may have changed meanwhile
  socket.on("state", ({ state: s }) => s === "open" && loadCalls());
  i18n.onLangChange(render);
  // Tick the elapsed time in place: re-rendering would replace an Answer button under the pointer.
  setInterval(() => {
    for (const span of alerts.querySelectorAll(".call-elapsed")) {
      span.textContent = t("dispatch.elapsed", { s: Math.max(0, Math.round(Date.now() / 1000 - span.dataset.at)) });
    }
  }, 1000);
  if (ownSocket) socket.connect().catch((err) => console.warn("event socket", err));
  if (socket.state === "open") loadCalls();
  render();
}

function roomLink(roomId) {
  return `/rooms/${encodeURIComponent(roomId)}?autojoin=1`;
}

/**
 * The ring tone: a two-tone beep from a WebAudio oscillator every 1.5 s while
 * a call rings. Browsers start audio only after a user gesture on the page;
 * until then the banner alone alerts (the context is resumed on any click).
 */
class Ring {
  constructor() {
    this.ctx = null;
    this.timer = null;
    document.addEventListener("pointerdown", () => this.ctx?.resume().catch(() => {}), { capture: true });
  }

  start() {
    if (this.timer) return;
    try {
      this.ctx ??= new AudioContext();
    } catch {
      return; // no WebAudio: the banner still shows
    }
    this.ctx.resume().catch(() => {});
    this.beep();
    this.timer = setInterval(() => this.beep(), 1500);
  }

  beep() {
    const ctx = this.ctx;
    if (ctx.state !== "running") return;
    const gain = ctx.createGain();
    gain.gain.value = 0.15;
    gain.connect(ctx.destination);
    [880, 660].forEach((freq, i) => {
      const osc = ctx.createOscillator();
      osc.frequency.value = freq;
      osc.connect(gain);
      osc.start(ctx.currentTime + i * 0.35);
      osc.stop(ctx.currentTime + i * 0.35 + 0.3);
    });
  }

  stop() {
    clearInterval(this.timer);
    this.timer = null;
  }
}
