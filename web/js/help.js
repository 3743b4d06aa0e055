// The home page's "call for help" (一键求助) button for the people of a site:
// one click rings the operators above the site; the page shows the call
// ringing, who answered, and then enters the call room with the camera on.
// Operators and administrators answer calls (on the console) and get no button.
//   mountHelp(container, {client, events, me})

import { ApiError } from "./api.js";
import { apiErrorKey, el } from "./dom.js";
import * as i18n from "./i18n.js";

const { t } = i18n;

const CALLER_ROLES = new Set(["mediator", "trainer", "terminal"]);
/** Time to read who answered before the page moves into the call room. */
const ENTER_DELAY_MS = 1500;

export function mountHelp(container, { client, events, me }) {
  if (!CALLER_ROLES.has(me.role) || !me.site) return;
  const state = { call: null, answeredBy: null, roomId: null, outcome: null, error: null, busy: false };

  const box = el("div", { class: "help", "aria-live": "assertive" });
  container.prepend(box);

  const ours = (call) => call.site_id === me.site.id && call.from.user === me.user;

  function render() {
    const children = [];
    if (state.roomId) {
      children.push(
        el("span", { class: "help-status answered" }, t("help.answered", { name: state.answeredBy?.name ?? "" })),
        el("a", { class: "button help-enter", href: roomLink(state.roomId) }, t("help.enter")),
      );
    } else if (state.call) {
      children.push(
        el("span", { class: "help-status ringing" }, t("help.ringing")),
        el("button", { type: "button", class: "button-ghost help-cancel", onclick: cancel, disabled: state.busy }, t("help.cancel")),
      );
    } else {
      if (state.outcome === "missed") children.push(el("span", { class: "help-status" }, t("help.missed")));
      if (state.error) children.push(el("span", { class: "help-status error" }, t(...state.error)));
      children.push(el("button", { type: "button", class: "button help-call", onclick: call, disabled: state.busy }, t("help.call")));
    }
    box.dataset.state = state.roomId ? "answered" : state.call ? "ringing" : "idle";
    box.replaceChildren(...children);
  }

  async function call() {
    state.busy = true;
    state.error = null;
    state.outcome = null;
    render();
    try {
      state.call = await client.callForHelp();
    } catch (err) {
      // The site already rings (another tab, another terminal): follow that call if it is ours.
      const ringing = err instanceof ApiError && err.status === 409 ? err.problem?.call : null;
      if (ringing?.id && ours(ringing)) state.call = ringing;
      else state.error = apiErrorKey(err);
    } finally {
      state.busy = false;
      render();
    }
  }

  async function cancel() {
    if (!state.call) return;
    state.busy = true;
    render();
    try {
      await client.cancelCall(state.call.id);
      state.call = null;
    } catch (err) {
      if (!(err instanceof ApiError && err.status === 409)) state.error = apiErrorKey(err);
      // 409: answered meanwhile; the call-answered event takes the page there.
    } finally {
      state.busy = false;
      render();
    }
  }

  function answered(message) {
    // Matched by caller, not by id: the answer may arrive before our POST returns.
    if (!ours(message.call) || state.roomId) return;
    state.call = message.call;
    state.answeredBy = message.answered_by;
    state.roomId = message.room_id;
    render();
    setTimeout(() => window.location.assign(roomLink(state.roomId)), ENTER_DELAY_MS);
  }

  function ended(message) {
    if (!ours(message.call) || state.call?.id !== message.call.id) return;
    state.call = null;
    state.outcome = message.call.state;
    render();
  }

  events.on("call-answered", answered);
  events.on("call-ended", ended);
  events.on("call-missed", ended);
  i18n.onLangChange(render);
  // After a reload: pick up our call if it still rings.
  client
    .calls()
    .then((calls) => {
      const ringing = calls.find((c) => c.state === "ringing" && ours(c));
      if (ringing && !state.call) {
        state.call = ringing;
        render();
      }
    })
    .catch((err) => console.warn("calls", err));
  render();
}

function roomLink(roomId) {
  return `/rooms/${encodeURIComponent(roomId)}?autojoin=1`;
}
