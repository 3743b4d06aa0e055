// Plays every stream of a recorded session side by side on one timeline.
//
// Each stream is a list of segment files (WebM, each starting at a keyframe
// at media time 0). The player keeps one session clock; every stream shows
// the segment covering that time, seeked to the right spot, and is nudged
// back when it drifts. Streams that start later or end earlier show an empty
// tile outside their span. It knows nothing of the page around it.

const DRIFT = 0.35; // seconds a stream may drift before it is re-seeked

export class SessionPlayer {
  /**
   * @param {HTMLElement} container where the tiles go
   * @param {object} manifest the recording's manifest (GET /api/recordings/{id})
   * @param {(path: string) => string} fileUrl URL of a file of the recording
   */
  constructor(container, manifest, fileUrl) {
    this.streams = manifest.streams
      .filter((s) => s.segments.length && s.offset !== null)
      .map((s) => ({ ...s, video: null, loaded: -1 }));
    this.start = Math.min(...this.streams.map((s) => s.offset));
    const ends = this.streams.map((s) => {
      const last = s.segments[s.segments.length - 1];
      return s.offset + last.start + last.duration;
    });
    this.duration = this.streams.length ? Math.max(...ends) - this.start : 0;
    this.fileUrl = fileUrl;
    this.position = 0;
    this.playing = false;
    this.listeners = new Set();
    this._base = null;
    container.replaceChildren(
      ...this.streams.map((s) => {
        const video = document.createElement("video");
        video.playsInline = true;
        video.preload = "auto";
        video.dataset.stream = s.id;
        s.video = video;
        const name = document.createElement("span");
        name.className = "rec-name";
        name.textContent = s.name || s.user || s.id;
        const tile = document.createElement("figure");
        tile.className = "rec-tile";
        tile.append(video, name);
        return tile;
      }),
    );
    this._timer = setInterval(() => this._tick(), 200);
    this._sync(true);
  }

  /** Call fn(position, duration, playing) on every change. */
  onChange(fn) {
    this.listeners.add(fn);
  }

  play() {
    if (this.position >= this.duration) this.position = 0;
    this.playing = true;
    this._base = { at: performance.now(), position: this.position };
    this._sync(true);
  }

  pause() {
    this._advance();
    this.playing = false;
    for (const s of this.streams) s.video.pause();
    this._emit();
  }

  seek(seconds) {
    this.position = Math.max(0, Math.min(this.duration, seconds));
    if (this.playing) this._base = { at: performance.now(), position: this.position };
    this._sync(true);
  }

  destroy() {
    clearInterval(this._timer);
    for (const s of this.streams) s.video.removeAttribute("src");
  }

  _advance() {
    if (this.playing && this._base) {
      this.position = this._base.position + (performance.now() - this._base.at) / 1000;
    }
  }

  _tick() {
    if (!this.playing) return;
    this._advance();
    if (this.position >= this.duration) {
      this.position = this.duration;
      this.pause();
      return;
    }
    this._sync(false);
  }

  /** Where stream `s` is at session time t: {index, local} or null outside its span. */
  _locate(s, t) {
    const own = t + this.start - s.offset;
    for (let i = 0; i < s.segments.length; i++) {
      const seg = s.segments[i];
      if (own >= seg.start && own < seg.start + seg.duration) return { index: i, local: own - seg.start };
    }
    return null;
  }

  _sync(force) {
    for (const s of this.streams) {
      const where = this._locate(s, this.position);
      const video = s.video;
      video.closest(".rec-tile").classList.toggle("rec-idle", where === null);
      if (where === null) {
        video.pause();
        continue;
      }
      if (where.index !== s.loaded) {
        s.loaded = where.index;
        video.src = this.fileUrl(s.segments[where.index].path);
        const local = where.local;
        video.addEventListener(
          "loadedmetadata",
          () => {
            video.currentTime = local;
            if (this.playing) video.play().catch(() => {});
          },
          { once: true },
        );
        continue;
      }
      if (video.readyState < 1) continue;
      if (force || Math.abs(video.currentTime - where.local) > DRIFT) video.currentTime = where.local;
      if (this.playing && video.paused) video.play().catch(() => {});
      if (!this.playing && !video.paused) video.pause();
    }
    this._emit();
  }

  _emit() {
    for (const fn of this.listeners) fn(this.position, this.duration, this.playing);
  }
}
