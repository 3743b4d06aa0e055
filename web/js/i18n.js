// Every string the app shows, in zh-CN (the default) and English.
//
// Views never write user-facing text directly: they call t(key) or mark
// elements with data-i18n="key" and let apply() fill them in, so a screen is
// always entirely in one language.

const MESSAGES = {
  "zh-CN": {
    "app.title": "综治视联网",
    "app.subtitle": "指挥调度中心",
    "lang.toggle": "English",
    "lang.toggleTitle": "Switch to English",
    "user.role.admin": "管理员",
    "user.role.operator": "值班员",
    "user.role.mediator": "调解员",
    "user.role.trainer": "培训讲师",
    "user.role.terminal": "终端",
    "user.role.guest": "访客",
    "level.province": "省",
    "level.prefecture": "州市",
    "level.county": "县区",
    "level.township": "乡镇街道",
    "level.village": "村社区",
    "room.kind.standing": "常设会议室",
    "room.kind.mediation": "矛盾调解",
    "room.kind.training": "视频培训",
    "room.kind.call": "视频通话",
    "room.kind.conference": "视频会议",
    "stream.kind.camera": "摄像头",
    "stream.kind.screen": "屏幕共享",
    "tree.heading": "辖区站点",
    "tree.expand": "展开",
    "tree.collapse": "收起",
    "tree.live": "在线",
    "tree.liveCount": "{n} 人",
    "tree.empty": "辖区内没有站点",
    "tree.sites": "{n} 个站点",
    "tree.liveSites": "{n} 个在线",
    "home.pickSite": "请在左侧选择一个站点",
    "home.pickSiteHint": "标有“在线”的站点正在进行视频会商，点击即可查看实时画面。",
    "home.noLiveRoom": "该站点当前没有进行中的视频会议",
    "home.noLiveRoomHint": "站点上线后画面将自动显示。",
    "home.noStreams": "会议室中暂无视频画面",
    "home.noStreamsHint": "有终端开始推流后画面将自动显示。",
    "home.rooms": "会议室",
    "home.participants": "参会 {n} 人",
    "home.streams": "画面 {n} 路",
    "tile.connecting": "连接中",
    "tile.live": "实时",
    "tile.failed": "连接失败",
    "tile.ended": "已结束",
    "tile.retry": "重试",
    "tile.unknownSite": "上级站点",
    "conn.live": "实时连接正常",
    "conn.connecting": "正在连接…",
    "conn.lost": "实时连接已断开，正在重连…",
    "error.title": "无法显示",
    "error.noToken": "未提供登录凭证。请使用中心服务器打印的值班员链接打开本页面。",
    "error.unauthorized": "登录凭证已过期或无效，请向管理员重新获取值班员链接。",
    "error.forbidden": "您无权访问该内容：它不在您的辖区范围内。",
    "error.notFound": "请求的内容不存在或已结束。",
    "error.unreachable": "无法连接到视联网中心服务器，请检查网络连接。",
    "error.server": "服务器出错（{status}），请稍后重试。",
    "error.retrying": "将自动重试。",
    "error.reload": "重新加载",
  },
  en: {
    "app.title": "Linked Governance Video Network",
    "app.subtitle": "Command Centre",
    "lang.toggle": "中文",
    "lang.toggleTitle": "切换到中文",
    "user.role.admin": "Administrator",
    "user.role.operator": "Duty operator",
    "user.role.mediator": "Mediator",
    "user.role.trainer": "Trainer",
    "user.role.terminal": "Terminal",
    "user.role.guest": "Guest",
    "level.province": "Province",
    "level.prefecture": "Prefecture",
    "level.county": "County",
    "level.township": "Township",
    "level.village": "Village",
    "room.kind.standing": "Standing room",
    "room.kind.mediation": "Mediation",
    "room.kind.training": "Training",
    "room.kind.call": "Video call",
    "room.kind.conference": "Conference",
    "stream.kind.camera": "Camera",
    "stream.kind.screen": "Screen share",
    "tree.heading": "Sites",
    "tree.expand": "Expand",
    "tree.collapse": "Collapse",
    "tree.live": "LIVE",
    "tree.liveCount": "{n}",
    "tree.empty": "No sites in your jurisdiction",
    "tree.sites": "{n} sites",
    "tree.sites.one": "1 site",
    "tree.liveSites": "{n} live",
    "home.pickSite": "Choose a site on the left",
    "home.pickSiteHint": "Sites marked LIVE are in session; click one to watch.",
    "home.noLiveRoom": "No live room at this site",
    "home.noLiveRoomHint": "Pictures appear here as soon as the site goes live.",
    "home.noStreams": "No video in this room yet",
    "home.noStreamsHint": "Pictures appear here as soon as a terminal publishes.",
    "home.rooms": "Rooms",
    "home.participants": "{n} participants",
    "home.participants.one": "1 participant",
    "home.streams": "{n} streams",
    "home.streams.one": "1 stream",
    "tile.connecting": "Connecting",
    "tile.live": "Live",
    "tile.failed": "Connection failed",
    "tile.ended": "Ended",
    "tile.retry": "Retry",
    "tile.unknownSite": "Higher-level site",
    "conn.live": "Live updates connected",
    "conn.connecting": "Connecting…",
    "conn.lost": "Live updates lost, reconnecting…",
    "error.title": "Cannot continue",
    "error.noToken": "No sign-in token. Open this page with the operator link the hub printed.",
    "error.unauthorized": "Your sign-in token has expired or is invalid. Ask an administrator for a new operator link.",
    "error.forbidden": "You may not see this: it lies outside your jurisdiction.",
    "error.notFound": "What you asked for does not exist or has ended.",
    "error.unreachable": "Cannot reach the video hub server. Check the network connection.",
    "error.server": "The server failed ({status}). Please try again later.",
    "error.retrying": "Retrying automatically.",
    "error.reload": "Reload",
  },
};

export const LANGUAGES = Object.freeze(Object.keys(MESSAGES));
const DEFAULT_LANG = "zh-CN";
const STORAGE_KEY = "hub.lang";

let current = initialLanguage();
const listeners = new Set();

function initialLanguage() {
  try {
    const stored = localStorage.getItem(STORAGE_KEY);
    if (stored && stored in MESSAGES) return stored;
  } catch {
    // storage may be unavailable; fall back to the default
  }
  return DEFAULT_LANG;
}

export function lang() {
  return current;
}

/** Switch language, remember it, re-translate the page and tell listeners. */
export function setLang(next) {
  if (!(next in MESSAGES) || next === current) return;
  current = next;
  try {
    localStorage.setItem(STORAGE_KEY, next);
  } catch {
    // not remembered; still switched
  }
  apply(document);
  for (const fn of listeners) fn(current);
}

/** The other language, for a two-way toggle. */
export function otherLang() {
  return LANGUAGES.find((l) => l !== current) ?? DEFAULT_LANG;
}

export function onLangChange(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

/**
 * Translate `key`, substituting {name} placeholders from `params`. When
 * params.n is 1 and the language has a `key.one` form, that form is used.
 */
export function t(key, params = {}) {
  const one = Number(params.n) === 1 ? MESSAGES[current][`${key}.one`] : undefined;
  const text = one ?? MESSAGES[current][key] ?? MESSAGES[DEFAULT_LANG][key];
  if (text === undefined) {
    console.warn(`i18n: no message ${key}`);
    return key;
  }
  return text.replace(/\{(\w+)\}/g, (m, name) => (name in params ? String(params[name]) : m));
}

/** Fill elements marked data-i18n (text), data-i18n-title and data-i18n-aria-label. */
export function apply(root) {
  document.documentElement.lang = current;
  for (const el of root.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  for (const el of root.querySelectorAll("[data-i18n-title]")) el.title = t(el.dataset.i18nTitle);
  for (const el of root.querySelectorAll("[data-i18n-aria-label]")) {
    el.setAttribute("aria-label", t(el.dataset.i18nAriaLabel));
  }
}

/** A site's name in the current language (English falls back to the Chinese name). */
export function siteName(site) {
  if (!site) return "";
  return current === "en" && site.name_en ? site.name_en : site.name;
}

export function levelLabel(level) {
  return t(`level.${level}`);
}

export function formatClock(date) {
  return new Intl.DateTimeFormat(current, {
    year: "numeric",
    month: "2-digit",
    day: "2-digit",
    hour: "2-digit",
    minute: "2-digit",
    second: "2-digit",
    hour12: false,
  }).format(date);
}
