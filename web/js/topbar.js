// The page header every view shares: brand and page subtitle, the live
// connection indicator, a clock, the links to the other pages the caller's
// role may use, who is signed in, and the language toggle. A page holds a
// placeholder `<header class="topbar" data-page="…" data-subtitle="i18n key">`
// whose own children (a page's extra badges) go first on the right.

import { el } from "./dom.js";
import * as i18n from "./i18n.js";

const { t } = i18n;

const CASE_ROLES = ["admin", "operator", "mediator"]; // hub/cases.py CASE_ROLES
const DUTY_ROLES = ["admin", "operator"]; // the command console's users
const STAFF_ROLES = ["admin", "operator", "mediator", "trainer", "terminal"]; // everyone but guests

/** The pages and who gets a link to them (`sites`: not a department user); a page never links to itself. */
const NAV = [
  { page: "home", href: "/", key: "nav.home", roles: null },
  { page: "console", href: "/console", key: "console.open", roles: DUTY_ROLES },
  { page: "cases", href: "/cases", key: "nav.cases", roles: CASE_ROLES },
  { page: "stats", href: "/stats", key: "nav.stats", roles: CASE_ROLES, sites: true },
  { page: "trainings", href: "/trainings", key: "nav.trainings", roles: STAFF_ROLES },
  { page: "recordings", href: "/recordings", key: "rec.title", roles: STAFF_ROLES },
];

const CONN_KEYS = { open: "conn.live", connecting: "conn.connecting" };

const bar = { page: null, me: null, events: null, name: null, showUser: true };
const watched = new WeakSet(); // Events whose state changes redraw the indicator

/** Build the header into the page's placeholder and keep it current: call once, first. */
export function mountTopbar() {
  const header = document.querySelector("header.topbar");
  bar.page = header.dataset.page;
  const extras = [...header.childNodes];
  header.replaceChildren(
    el(
      "div",
      { class: "brand" },
      el("span", { class: "brand-mark", "aria-hidden": "true" }),
      el(
        "div",
        { class: "brand-text" },
        el("h1", { id: "app-title", "data-i18n": "app.title" }),
        el("span", { id: "page-title", class: "brand-sub", "data-i18n": header.dataset.subtitle }),
      ),
    ),
    el(
      "div",
      { class: "topbar-right" },
      ...extras,
      el("span", { id: "conn", class: "conn", hidden: true }, el("span", { class: "conn-dot", "aria-hidden": "true" }), el("span", { id: "conn-text" })),
      el("time", { id: "clock", class: "clock" }),
      el("nav", { id: "nav", class: "nav-links", hidden: true }),
      el("span", { id: "user", class: "user", hidden: true }),
      el("button", {
        id: "lang-toggle",
        class: "lang-toggle",
        type: "button",
        "data-i18n": "lang.toggle",
        "data-i18n-title": "lang.toggleTitle",
        onclick: () => i18n.setLang(i18n.otherLang()),
      }),
    ),
  );
  i18n.apply(header);
  i18n.onLangChange(renderTopbar);
  setInterval(renderClock, 1000);
  renderTopbar();
}

/**
 * Tell the header what changed: `me` (GET /api/me) shows the user and the
 * role's links; `events` (null hides it) the connection indicator; `name`
 * replaces the user's name (a room's chosen name); `showUser` false hides them.
 */
export function setTopbar(changes) {
  Object.assign(bar, changes);
  if (bar.events && !watched.has(bar.events)) {
    watched.add(bar.events);
    const events = bar.events;
    events.on("state", () => bar.events === events && renderConn());
  }
  renderTopbar();
}

function renderTopbar() {
  renderClock();
  renderConn();
  const { me } = bar;
  const user = document.getElementById("user");
  user.hidden = !me || !bar.showUser;
  const nav = document.getElementById("nav");
  nav.hidden = true;
  if (!me) return;
  const home = me.department ?? me.site; // a department user's home is its department
  const site = me.role !== "guest" && home ? i18n.siteName(home) : "";
  user.textContent = [bar.name ?? me.name, t(`user.role.${me.role}`), site].filter(Boolean).join(" · ");
  // A token bound to one room (a terminal's or guest's link) leads nowhere else.
  const links = me.room ? [] : NAV.filter((n) => n.page !== bar.page && (!n.roles || n.roles.includes(me.role)) && !(n.sites && me.department));
  nav.replaceChildren(...links.map((n) => el("a", { href: n.href, dataset: { page: n.page } }, t(n.key))));
  nav.hidden = links.length === 0;
}

function renderClock() {
  document.getElementById("clock").textContent = i18n.formatClock(new Date());
}

function renderConn() {
  const conn = document.getElementById("conn");
  const { events } = bar;
  conn.hidden = !events;
  if (!events) return;
  conn.dataset.state = events.state;
  document.getElementById("conn-text").textContent = t(CONN_KEYS[events.state] ?? "conn.lost");
}
