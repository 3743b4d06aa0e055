// Training rooms, for the room view (room.js): attendees watch the trainer
// and raise a hand; the trainer lets one speak and returns them to watching.
// The hub enforces who may publish; this module only keeps the page from
// trying, and gives the trainer the buttons. It talks to the hub through api.js.

import { el } from "./dom.js";
import { t } from "./i18n.js";

export const isTraining = (room) => room?.kind === "training";

export const isTrainer = (room, me) => isTraining(room) && Boolean(me) && room.trainer === me.user;

/** Whether this page publishes into the room: anywhere but a training, where only the trainer and speakers do. */
export function mayPublish(room, me, self) {
  return !isTraining(room) || isTrainer(room, me) || Boolean(self?.speaker);
}

/** The sites of a training's branch, to name its attendees (none for other rooms). */
export async function branchSites(client, room) {
  return isTraining(room) ? client.trainingSites(room.id) : [];
}

/**
 * What a training adds to a person's row: a "speaking" badge, and for the
 * trainer a "let speak" button beside a raised hand or "back to watching"
 * beside a speaker. `ctx`: {client, room, me, participantId, onError}.
 */
export function personExtras(ctx, person) {
  if (!isTraining(ctx.room)) return [];
  const extras = [];
  if (person.speaker) extras.push(el("span", { class: "badge badge-speaker" }, t("training.speaker")));
  const mine = person.id === ctx.participantId || person.user === ctx.me?.user;
  if (isTrainer(ctx.room, ctx.me) && !mine && (person.hand || person.speaker)) {
    const speak = !person.speaker;
    const act = () =>
      (speak ? ctx.client.letSpeak(ctx.room.id, person.id) : ctx.client.stopSpeaking(ctx.room.id, person.id)).catch(
        ctx.onError,
      );
    extras.push(
      el(
        "button",
        { type: "button", class: `button-ghost speaker-toggle${speak ? "" : " on"}`, dataset: { action: speak ? "let-speak" : "stop-speaking" }, onclick: act },
        t(speak ? "training.letSpeak" : "training.backToWatching"),
      ),
    );
  }
  return extras;
}

/**
 * The bar above the grid of a training room: for attendees, whether they
 * watch or may speak; for the trainer, the raised hands, the attendance and
 * "end training". Hidden in other rooms.
 */
export function renderBar(bar, ctx, participants) {
  bar.hidden = !isTraining(ctx.room);
  if (bar.hidden) return;
  if (!isTrainer(ctx.room, ctx.me)) {
    const speaking = Boolean(participants.get(ctx.participantId)?.speaker);
    bar.dataset.mode = speaking ? "speaking" : "watching";
    bar.replaceChildren(el("p", { class: "training-hint" }, t(speaking ? "training.youSpeak" : "training.watching")));
    return;
  }
  const hands = [...participants.values()].filter((p) => p.hand && !p.speaker).length;
  bar.dataset.mode = "trainer";
  bar.replaceChildren(
    el("p", { class: "training-hint" }, t("training.hands", { n: hands })),
    el("a", { class: "button-ghost", href: `/trainings?room=${encodeURIComponent(ctx.room.id)}`, target: "_blank" }, t("training.attendance")),
    el(
      "button",
      {
        type: "button",
        class: "button training-end",
        onclick: () => window.confirm(t("training.confirmEnd")) && ctx.client.endTraining(ctx.room.id).catch(ctx.onError),
      },
      t("training.end"),
    ),
  );
}
