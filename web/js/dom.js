// Small helpers the views share: element lookup and creation, and what to
// tell the user when the hub refuses or cannot be reached.

import { ApiError, HubClient, takeToken } from "./api.js";
import { onLangChange, t } from "./i18n.js";

export const $ = (id) => document.getElementById(id);

/** Create an element: attributes (class, dataset, on<event> handlers) and children. */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

/** The page's hub client from the link's token, or null after saying (`noTokenKey`) there is none. */
export function hubClient(noTokenKey = "error.noToken") {
  const token = takeToken();
  if (token) return new HubClient(token);
  showFatal(noTokenKey);
  return null;
}

/** Show [key, params] in the page's banner (#banner, data-error = key), or hide it for null. */
export function renderBanner(banner) {
  const box = $("banner");
  box.hidden = !banner;
  box.textContent = banner ? t(...banner) : "";
  if (banner) box.dataset.error = banner[0];
  else delete box.dataset.error;
}

/**
 * The i18n key and parameters explaining a failed call. `own` maps an
 * ApiError kind to a view's more specific key (a room says "this room").
 */
export function apiErrorKey(err, own = {}) {
  if (!(err instanceof ApiError)) return ["error.unreachable", {}];
  if (own[err.kind]) return [own[err.kind], {}];
  switch (err.kind) {
    case "unauthorized":
      return ["error.unauthorized", {}];
    case "forbidden":
      return ["error.forbidden", {}];
    case "not-found":
      return ["error.notFound", {}];
    case "unreachable":
    case "timeout":
      return ["error.unreachable", {}];
    default:
      return ["error.server", { status: err.status || "?" }];
  }
}

/**
 * A view's start-up failed: show why in the error box (`own` as for
 * apiErrorKey) and, when the hub may come back (unreachable, timeout, a
 * server error), call `retry` after `delayMs`.
 */
export function startFailed(err, retry, delayMs, own = {}) {
  console.warn(err);
  const [key, params] = apiErrorKey(err, own);
  const retrying = !(err instanceof ApiError) || ["unreachable", "timeout", "http"].includes(err.kind);
  showFatal(key, params, { retrying });
  if (retrying) setTimeout(retry, delayMs);
}

let fatal = null; // [key, params, retrying] of the error box, null when hidden

/**
 * The page's full-screen error box: show why the page cannot be used (and
 * hide its views, every <main>), kept in the current language; hideFatal()
 * takes it away and the view shows itself again.
 */
export function showFatal(key, params = {}, { retrying = false } = {}) {
  fatal = [key, params, retrying];
  let box = $("fatal");
  if (!box) {
    box = el(
      "div",
      { id: "fatal", class: "fatal", role: "alert" },
      el(
        "div",
        { class: "fatal-card" },
        el("h2", { "data-i18n": "error.title" }, t("error.title")),
        el("p", { id: "fatal-message" }),
        el("button", { id: "fatal-reload", type: "button", class: "button", "data-i18n": "error.reload", onclick: () => window.location.reload() }, t("error.reload")),
      ),
    );
    ($("banner") ?? document.querySelector("header.topbar")).after(box);
    onLangChange(renderFatal);
  }
  for (const view of document.querySelectorAll("main")) view.hidden = true;
  renderFatal();
}

export function hideFatal() {
  fatal = null;
  renderFatal();
}

function renderFatal() {
  const box = $("fatal");
  if (!box) return;
  box.hidden = !fatal;
  if (!fatal) return;
  const [key, params, retrying] = fatal;
  const message = $("fatal-message");
  message.textContent = retrying ? `${t(key, params)} ${t("error.retrying")}` : t(key, params);
  message.dataset.error = key;
}

/**
 * Index the sites of a jurisdiction (parents listed first, as GET /api/sites
 * returns them): {byId, children (id -> child ids), roots, depth}. A site
 * whose parent lies outside the list is a root.
 */
export function indexSites(sites) {
  const byId = new Map(sites.map((s) => [s.id, s]));
  const children = new Map(sites.map((s) => [s.id, []]));
  const roots = [];
  const depth = new Map();
  for (const site of sites) {
    if (site.parent && children.has(site.parent)) {
      children.get(site.parent).push(site.id);
      depth.set(site.id, depth.get(site.parent) + 1);
    } else {
      roots.push(site.id);
      depth.set(site.id, 0);
    }
  }
  return { byId, children, roots, depth };
}

/**
 * Keyboard for a site tree whose rows carry data-select: Enter or Space
 * selects the row's site, ArrowRight/ArrowLeft expand/collapse it (the
 * `expanded` set), then `render()` redraws and the row keeps the focus.
 */
// Redraw a site tree in place: live updates redraw it often, and must not
// scroll it away or take the keyboard focus from the row the user is on.
export function replaceTree(tree, nodes) {
  const scroll = tree.parentElement.scrollTop;
  const row = tree.contains(document.activeElement) ? document.activeElement.closest("[data-select]") : null;
  tree.replaceChildren(...nodes);
  tree.parentElement.scrollTop = scroll;
  if (row) tree.querySelector(`[data-select="${CSS.escape(row.dataset.select)}"]`)?.focus();
}

export function treeKeys({ select, expanded, render }) {
  return (event) => {
    const row = event.target.closest("[data-select]");
    if (!row || event.target !== row) return; // keys on a checkbox in the row are the checkbox's
    const id = row.dataset.select;
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      select(id);
    } else if (event.key === "ArrowRight" || event.key === "ArrowLeft") {
      if (event.key === "ArrowRight") expanded.add(id);
      else expanded.delete(id);
      render();
    }
  };
}
