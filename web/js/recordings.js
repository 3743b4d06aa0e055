// The playback view: search recordings of the caller's jurisdiction, and
// play one session with all its streams on one timeline (player.js).

import { $, apiErrorKey, el, hubClient, renderBanner, startFailed } from "./dom.js";
import * as i18n from "./i18n.js";
import { SessionPlayer } from "./player.js";
import { mountTopbar, setTopbar } from "./topbar.js";

const { t } = i18n;
const BOOT_RETRY_MS = 5000;
/** This page's messages for some failed calls: they concern a recording. */
const REC_ERRORS = { forbidden: "rec.error.forbidden", "not-found": "rec.error.not-found" };

function clock(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  const m = Math.floor(s / 60);
  return `${m}:${String(s % 60).padStart(2, "0")}`;
}

function when(epoch) {
  return epoch ? i18n.formatClock(new Date(epoch * 1000)) : "";
}

function showError(err) {
  console.warn(err);
  renderBanner(apiErrorKey(err, REC_ERRORS));
}

/** Epoch seconds of a date input (local midnight), or "" when empty. */
function dayStart(value, plusDays = 0) {
  if (!value) return "";
  const date = new Date(`${value}T00:00:00`);
  date.setDate(date.getDate() + plusDays);
  return String(date.getTime() / 1000);
}

// -- list -------------------------------------------------------------------------

async function showList(client) {
  $("list-view").hidden = false;
  const sites = await client.sites();
  const byId = new Map(sites.map((s) => [s.id, s]));
  const fillSites = () => {
    const chosen = $("f-site").value;
    $("f-site").replaceChildren(...sites.map((s) => el("option", { value: s.id, selected: s.id === chosen }, i18n.siteName(s))));
  };
  fillSites();
  const search = async () => {
    const form = new FormData($("filters"));
    const rows = await client.recordings({
      site: form.get("site") || "",
      from: dayStart(form.get("from")),
      to: dayStart(form.get("to"), 1),
      kind: form.get("kind") || "",
      q: form.get("q") || "",
    });
    $("rec-empty").hidden = rows.length > 0;
    $("rec-rows").replaceChildren(
      ...rows.map((r) => {
        const link = el("a", { href: `/recordings/${encodeURIComponent(r.id)}` }, r.title || r.room_id);
        const duration = r.ended_at ? clock(r.ended_at - r.started_at) : "";
        return el(
          "tr",
          { "data-id": r.id },
          el("td", {}, when(r.started_at)),
          el("td", {}, duration),
          el("td", {}, byId.has(r.site_id) ? i18n.siteName(byId.get(r.site_id)) : r.site_name || r.site_id),
          el("td", {}, t(`room.kind.${r.kind}`)),
          el("td", {}, link),
          el("td", {}, t(`rec.state.${r.status}`)),
        );
      }),
    );
  };
  $("filters").addEventListener("submit", (event) => {
    event.preventDefault();
    search().catch(showError);
  });
  // Site names and dates in the other language (the catalogue names sites in Chinese only).
  i18n.onLangChange(() => {
    fillSites();
    search().catch(showError);
  });
  await search();
}

// -- one recording -------------------------------------------------------------------

async function showDetail(client, id) {
  $("detail-view").hidden = false;
  const manifest = await client.recording(id);
  $("rec-heading").textContent = manifest.title || manifest.site_name || manifest.room_id;
  const span = manifest.ended_at ? ` – ${when(manifest.ended_at)}` : "";
  $("rec-meta").textContent =
    `${t(`room.kind.${manifest.kind}`)} · ${manifest.site_name} · ${when(manifest.started_at)}${span} · ` +
    t(`rec.state.${manifest.status}`);
  $("rec-participants").replaceChildren(
    ...manifest.participants.map((p) => el("li", {}, `${p.name} · ${when(p.joined_at)} – ${when(p.left_at)}`)),
  );

  const player = new SessionPlayer($("player"), manifest, (path) => client.recordingFileUrl(id, path));
  const seek = $("seek");
  let dragging = false;
  player.onChange((position, duration, playing) => {
    $("time").textContent = `${clock(position)} / ${clock(duration)}`;
    $("play").textContent = t(playing ? "rec.pause" : "rec.play");
    if (!dragging && duration > 0) seek.value = String(Math.round((position / duration) * 1000));
  });
  $("play").addEventListener("click", () => (player.playing ? player.pause() : player.play()));
  seek.addEventListener("input", () => (dragging = true));
  seek.addEventListener("change", () => {
    dragging = false;
    player.seek((Number(seek.value) / 1000) * player.duration);
  });

  $("verify").addEventListener("click", async () => {
    try {
      const v = await client.verifyRecording(id);
      $("verify-result").textContent = v.intact
        ? t("rec.intact", { n: v.segments })
        : t("rec.altered", { list: [...v.changed, ...v.missing].join(", ") || "manifest" });
      $("verify-result").className = v.intact ? "rec-ok" : "rec-bad";
    } catch (err) {
      showError(err);
    }
  });

  $("export").addEventListener("click", async () => {
    try {
      let job = await client.exportRecording(id);
      const bar = $("export-progress");
      bar.hidden = false;
      while (job.state === "running") {
        bar.value = job.progress;
        await new Promise((r) => setTimeout(r, 1000));
        job = await client.exportStatus(id);
      }
      bar.value = 1;
      if (job.state === "done") {
        const link = $("export-link");
        link.href = client.recordingExportUrl(id);
        link.hidden = false;
      } else {
        $("verify-result").textContent = t("rec.exportFailed");
      }
    } catch (err) {
      showError(err);
    }
  });
}

async function main() {
  mountTopbar();
  i18n.apply(document);
  const client = hubClient();
  if (!client) return;
  const match = window.location.pathname.match(/^\/recordings\/([^/]+)$/);
  try {
    setTopbar({ me: await client.me() });
    if (match) await showDetail(client, decodeURIComponent(match[1]));
    else await showList(client);
  } catch (err) {
    // The views wire their controls as they load: a retry starts the page afresh (the token is kept).
    startFailed(err, () => window.location.reload(), BOOT_RETRY_MS, REC_ERRORS);
  }
}

main();
