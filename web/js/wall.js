// The video wall: an n×n grid of panes, each playing one feed over WHEP,
// and patrol (轮巡), which cycles a group of feeds through the panes.
//
// A feed is {stream_id} | {camera_id} | {site_id}; the console resolves it to
// the stream to play now (a camera's stream, a site's first live stream), so
// a pane follows a camera or site across reconnects. Viewing goes through
// api.js (HubClient.whepView), like every other page.

import { ApiError } from "./api.js";
import { el } from "./dom.js";

/** Drag-and-drop type carrying a feed as JSON. */
export const FEED_MIME = "application/x-hub-feed";

export function feedKey(feed) {
  if (!feed) return "";
  if (feed.stream_id) return `stream:${feed.stream_id}`;
  if (feed.camera_id) return `camera:${feed.camera_id}`;
  return `site:${feed.site_id}`;
}

/** A pane whose playback failed tries again after this long. */
const RETRY_MS = 3000;

/** Sides a wall offers in its picker; any n from 1 to 8 is valid. */
export const GRID_SIDES = [1, 2, 3, 4, 5, 6, 7, 8];

class Pane {
  constructor(wall, index) {
    this.wall = wall;
    this.index = index;
    this.feed = null;
    this.streamId = null; // what is playing (or being connected)
    this.session = null;
    this.status = "empty";
    this.seq = 0;
    this.retryTimer = null;
    this.video = el("video", { autoplay: true, playsinline: true, muted: true });
    this.video.muted = true; // autoplay without a gesture needs a muted element
    this.video.addEventListener("playing", () => this.setStatus("live"));
    this.label = el("span", { class: "pane-label" });
    this.statusEl = el("span", { class: "pane-status" });
    this.full = el("button", {
      type: "button",
      class: "pane-full",
      onclick: (event) => {
        event.stopPropagation();
        this.fullscreen();
      },
    });
    this.el = el(
      "div",
      {
        class: "pane",
        tabindex: "0",
        dataset: { index: String(index), status: "empty" },
        onclick: () => wall.select(index),
        ondragover: (event) => {
          if (event.dataTransfer.types.includes(FEED_MIME)) {
            event.preventDefault();
            this.el.classList.add("drop");
          }
        },
        ondragleave: () => this.el.classList.remove("drop"),
        ondrop: (event) => {
          this.el.classList.remove("drop");
          const raw = event.dataTransfer.getData(FEED_MIME);
          if (!raw) return;
          event.preventDefault();
          wall.stopPatrol();
          wall.assign(index, JSON.parse(raw));
        },
      },
      this.video,
      this.label,
      this.statusEl,
      this.full,
    );
  }

  fullscreen() {
    if (document.fullscreenElement === this.el) document.exitFullscreen().catch(() => {});
    else this.el.requestFullscreen().catch((err) => console.warn("fullscreen", err));
  }

  setStatus(status) {
    this.status = status;
    this.el.dataset.status = status;
    this.render();
  }

  render() {
    const t = this.wall.t;
    const resolved = this.feed ? this.wall.resolve(this.feed) : null;
    this.label.textContent = resolved?.label ?? "";
    this.statusEl.textContent = this.status === "live" ? "" : t(`wall.pane.${this.status}`);
    this.full.textContent = t("wall.fullscreen");
    this.full.title = t("wall.fullscreen");
    this.el.dataset.feed = feedKey(this.feed);
    this.el.dataset.streamId = this.streamId ?? "";
  }

  /** Show a feed (null: empty). Keeps the running session when the stream is the same. */
  show(feed) {
    this.feed = feed;
    this.sync();
  }

  /** Re-resolve the feed (status changed) and (re)connect when its stream changed. */
  sync() {
    const streamId = this.feed ? (this.wall.resolve(this.feed)?.streamId ?? null) : null;
    // Same stream: keep the session (a failed one is retried on the next status change).
    if (streamId === this.streamId && this.status !== "failed") {
      if (!this.feed) this.setStatus("empty");
      else if (!streamId) this.setStatus("offline");
      else this.render();
      return;
    }
    this.stop();
    this.streamId = streamId;
    this.el.dataset.switchedAt = String(performance.now());
    this.wall.onSwitch?.(this.index, this.feed, streamId);
    if (!this.feed) this.setStatus("empty");
    else if (!streamId) this.setStatus("offline");
    else this.play(streamId);
  }

  async play(streamId) {
    const seq = ++this.seq;
    this.setStatus("connecting");
    try {
      const session = await this.wall.client.whepView(streamId, this.video, { tileSize: this.wall.layers });
      if (seq !== this.seq) {
        session.close().catch(() => {});
        return;
      }
      this.session = session;
      session.pc.addEventListener("connectionstatechange", () => {
        if (seq === this.seq && session.pc.connectionState === "failed") this.fail();
      });
    } catch (err) {
      if (seq !== this.seq) return;
      console.warn("wall whep", streamId, err);
      const kind = err instanceof ApiError ? err.kind : "";
      if (kind === "forbidden" || kind === "not-found") this.setStatus(kind === "forbidden" ? "forbidden" : "offline");
      else this.fail();
    }
  }

  /** Playback failed (network, hub restarting): show it and try again shortly. */
  fail() {
    this.setStatus("failed");
    const seq = this.seq;
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => seq === this.seq && this.sync(), RETRY_MS);
  }

  stop() {
    this.seq++;
    clearTimeout(this.retryTimer);
    const session = this.session;
    this.session = null;
    this.streamId = null;
    session?.close().catch(() => {});
    this.video.srcObject = null;
  }
}

export class Wall {
  /**
   * @param {HTMLElement} container
   * @param {object} options
   * @param {import("./api.js").HubClient} options.client
   * @param {(feed) => ({streamId: string|null, label: string}|null)} options.resolve
   * @param {(key: string) => string} options.t translation
   * @param {() => void} [options.onChange] the layout (grid, panes, patrol) changed
   * @param {boolean} [options.layers] panes state their size (false: every pane gets the top layer)
   */
  constructor(container, { client, resolve, t, onChange = () => {}, layers = true }) {
    this.container = container;
    this.client = client;
    /** Whether panes tell the hub their size, so that it sends each the simulcast layer it needs. */
    this.layers = layers;
    this.resolve = resolve;
    this.t = t;
    this.onChange = onChange;
    this.onSwitch = null;
    this.panes = [];
    this.selected = 0;
    this.patrol = null; // {feeds, seconds, offset, timer}
    this.setGrid(4);
  }

  get grid() {
    return this.panes.length;
  }

  /** n panes (a square number); keeps the feeds of the panes that remain. */
  setGrid(n) {
    const side = Math.max(1, Math.min(8, Math.round(Math.sqrt(n))));
    const count = side * side;
    while (this.panes.length > count) this.panes.pop().stop();
    while (this.panes.length < count) this.panes.push(new Pane(this, this.panes.length));
    this.container.style.setProperty("--side", String(side));
    this.container.dataset.grid = String(count);
    this.container.replaceChildren(...this.panes.map((p) => p.el));
    this.selected = Math.min(this.selected, count - 1);
    this.renderSelection();
    if (this.patrol) this.patrolStep(false);
    this.onChange();
  }

  select(index) {
    this.selected = index;
    this.renderSelection();
  }

  renderSelection() {
    this.panes.forEach((p, i) => p.el.classList.toggle("selected", i === this.selected));
  }

  /** Put a feed on a pane (the selected one by default) and select the next. */
  assign(index, feed) {
    const i = index ?? this.selected;
    this.panes[i]?.show(feed);
    this.select((i + 1) % this.panes.length);
    this.onChange();
  }

  clear() {
    this.stopPatrol();
    for (const pane of this.panes) pane.show(null);
    this.onChange();
  }

  /** Status changed: panes following a camera or a site may switch streams. */
  refresh() {
    for (const pane of this.panes) pane.sync();
  }

  rerender() {
    for (const pane of this.panes) pane.render();
  }

  // -- patrol ----------------------------------------------------------------------

  /**
   * Cycle `feeds` through the panes every `seconds`: each step pane i shows
   * feeds[(offset + i) % feeds.length] and the offset advances by a page (the
   * number of panes), so more feeds than panes page through all of them and
   * fewer rotate across the panes.
   */
  startPatrol(feeds, seconds) {
    this.stopPatrol(false);
    if (!feeds.length) return;
    this.patrol = { feeds, seconds, offset: 0, timer: null, step: 0, started: performance.now() };
    this.patrolStep(true);
    this.onChange();
  }

  patrolStep(schedule) {
    const patrol = this.patrol;
    const count = Math.min(this.panes.length, patrol.feeds.length);
    this.panes.forEach((pane, i) => pane.show(i < count ? patrol.feeds[(patrol.offset + i) % patrol.feeds.length] : null));
    if (!schedule) return;
    // Steps fall on start + k·seconds: a late timer does not push the later ones back.
    patrol.step += 1;
    const due = patrol.started + patrol.step * patrol.seconds * 1000;
    patrol.timer = setTimeout(() => {
      if (this.patrol !== patrol) return;
      patrol.offset = (patrol.offset + this.panes.length) % patrol.feeds.length;
      this.patrolStep(true);
    }, Math.max(0, due - performance.now()));
  }

  stopPatrol(notify = true) {
    if (!this.patrol) return;
    clearTimeout(this.patrol.timer);
    this.patrol = null;
    if (notify) this.onChange();
  }

  // -- layouts ---------------------------------------------------------------------

  /** The wall as a saved layout's fields: {grid, panes, patrol?}. */
  toLayout() {
    const layout = { grid: this.panes.length, panes: this.panes.map((p) => (this.patrol ? null : p.feed)) };
    if (this.patrol) layout.patrol = { feeds: this.patrol.feeds, seconds: this.patrol.seconds };
    return layout;
  }

  /** Show a saved layout; onChange fires once, at the end (a listener may save the wall). */
  applyLayout(layout) {
    const { grid = 4, panes = [], patrol = null } = structuredClone(layout);
    const onChange = this.onChange;
    this.onChange = () => {};
    try {
      this.stopPatrol(false);
      this.setGrid(grid);
      this.panes.forEach((pane, i) => pane.show(panes[i] ?? null));
      if (patrol?.feeds?.length) this.startPatrol(patrol.feeds, patrol.seconds);
    } finally {
      this.onChange = onChange;
    }
    onChange();
  }

  close() {
    this.stopPatrol(false);
    for (const pane of this.panes) pane.stop();
  }
}
