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
    "room.title": "视频会议室",
    "room.join": "加入会议",
    "room.joining": "正在加入…",
    "room.name": "您的姓名",
    "room.namePlaceholder": "请输入姓名",
    "room.nameRequired": "请先输入您的姓名。",
    "room.camera": "摄像头",
    "room.mic": "麦克风",
    "room.noDevice": "无",
    "room.previewHint": "加入前请确认画面与声音正常。",
    "room.me": "{name}（我）",
    "room.micOn": "关闭麦克风",
    "room.micOff": "打开麦克风",
    "room.camOn": "关闭摄像头",
    "room.camOff": "打开摄像头",
    "room.share": "共享屏幕",
    "room.stopShare": "停止共享",
    "room.hand": "举手",
    "room.lowerHand": "放下手",
    "room.leave": "离开会议",
    "room.record": "开始录制",
    "room.stopRecording": "停止录制",
    "room.recording": "● 录制中",
    "room.left": "您已离开会议。",
    "room.rejoin": "重新加入",
    "room.muted": "已静音",
    "room.cameraOff": "摄像头已关闭",
    "room.handRaised": "举手",
    "room.reconnecting": "网络中断，正在重新连接…",
    "room.soundBlocked": "浏览器阻止了声音播放，点击此处开启声音。",
    "room.tab.people": "参会人员",
    "room.tab.chat": "聊天",
    "room.tab.invite": "邀请",
    "room.people": "参会人员（{n}）",
    "room.chatPlaceholder": "输入消息，按回车发送",
    "room.send": "发送",
    "room.chatEmpty": "暂无消息",
    "room.inviteParty": "邀请当事人",
    "room.inviteHint": "生成访客链接发给当事人，对方无需账号即可加入本会议室，链接到期后失效。",
    "room.expiry": "有效期",
    "room.ttl.1800": "30 分钟",
    "room.ttl.7200": "2 小时",
    "room.ttl.86400": "24 小时",
    "room.createLink": "生成邀请链接",
    "room.copy": "复制",
    "room.copied": "已复制",
    "room.expiresAt": "有效期至 {time}",
    "room.inviteHigher": "邀请上级参加",
    "room.inviteHigherHint": "上级站点的人员将在首页实时收到邀请，一键加入。",
    "room.invite": "邀请",
    "room.invited": "已邀请",
    "room.noHigher": "没有更高级别的站点。",
    "error.noCamera": "未检测到摄像头或麦克风，请连接设备后重试。",
    "error.permission": "浏览器未获得摄像头和麦克风权限，请在地址栏中允许后重试。",
    "error.device": "无法打开摄像头或麦克风（{detail}）。",
    "error.roomUnauthorized": "邀请链接或登录凭证已过期或无效，请向调解员重新获取链接。",
    "error.roomForbidden": "您无权进入该会议室：它不在您的辖区范围内，或您的邀请链接不适用于该会议室。",
    "error.roomNotFound": "该会议室不存在或已结束。",
    "error.roomNoToken": "未提供登录凭证。请使用邀请链接打开本页面。",
    "invite.title": "会商邀请",
    "invite.from": "{name}（{site}）邀请您加入：{room}",
    "invite.join": "立即加入",
    "invite.dismiss": "忽略",
    "home.enterRoom": "进入会议室",
    "rec.title": "录像回放",
    "rec.list": "录像列表",
    "rec.site": "站点",
    "rec.from": "开始日期",
    "rec.to": "结束日期",
    "rec.kind": "类型",
    "rec.anyKind": "全部",
    "rec.text": "关键词",
    "rec.textHint": "标题、站点或参与人员",
    "rec.search": "查询",
    "rec.started": "开始时间",
    "rec.duration": "时长",
    "rec.titleCol": "标题",
    "rec.status": "状态",
    "rec.empty": "没有符合条件的录像",
    "rec.state.recording": "录制中",
    "rec.state.complete": "已完成",
    "rec.state.interrupted": "意外中断",
    "rec.play": "播放",
    "rec.pause": "暂停",
    "rec.seek": "播放进度",
    "rec.verify": "校验完整性",
    "rec.intact": "完整：{n} 个分段均未被改动",
    "rec.altered": "已被改动：{list}",
    "rec.export": "导出为单个文件",
    "rec.exportFailed": "导出失败",
    "rec.download": "下载导出文件",
    "rec.participants": "参与人员",
    "rec.recording": "正在录像",
    "rec.error.unauthorized": "登录凭证无效或已过期，请重新打开链接。",
    "rec.error.forbidden": "该录像不在您的辖区范围内。",
    "rec.error.not-found": "该录像不存在或已按保存期限删除。",
    "rec.error.unreachable": "无法连接服务器，请稍后重试。",
    "rec.error.timeout": "服务器响应超时，请稍后重试。",
    "rec.error.http": "请求失败，请稍后重试。",
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
    "room.title": "Video room",
    "room.join": "Join",
    "room.joining": "Joining…",
    "room.name": "Your name",
    "room.namePlaceholder": "Enter your name",
    "room.nameRequired": "Please enter your name first.",
    "room.camera": "Camera",
    "room.mic": "Microphone",
    "room.noDevice": "None",
    "room.previewHint": "Check your picture and sound before joining.",
    "room.me": "{name} (me)",
    "room.micOn": "Mute microphone",
    "room.micOff": "Unmute microphone",
    "room.camOn": "Turn camera off",
    "room.camOff": "Turn camera on",
    "room.share": "Share screen",
    "room.stopShare": "Stop sharing",
    "room.hand": "Raise hand",
    "room.lowerHand": "Lower hand",
    "room.leave": "Leave",
    "room.record": "Record",
    "room.stopRecording": "Stop recording",
    "room.recording": "● Recording",
    "room.left": "You left the room.",
    "room.rejoin": "Join again",
    "room.muted": "Muted",
    "room.cameraOff": "Camera off",
    "room.handRaised": "Hand raised",
    "room.reconnecting": "Connection lost, reconnecting…",
    "room.soundBlocked": "The browser blocked sound. Click here to turn it on.",
    "room.tab.people": "People",
    "room.tab.chat": "Chat",
    "room.tab.invite": "Invite",
    "room.people": "People ({n})",
    "room.chatPlaceholder": "Type a message, Enter to send",
    "room.send": "Send",
    "room.chatEmpty": "No messages yet",
    "room.inviteParty": "Invite a party",
    "room.inviteHint": "Send a guest link to a party: they join this room without an account until the link expires.",
    "room.expiry": "Valid for",
    "room.ttl.1800": "30 minutes",
    "room.ttl.7200": "2 hours",
    "room.ttl.86400": "24 hours",
    "room.createLink": "Create invite link",
    "room.copy": "Copy",
    "room.copied": "Copied",
    "room.expiresAt": "Valid until {time}",
    "room.inviteHigher": "Bring in a higher level",
    "room.inviteHigherHint": "Users of the higher-level site see the invitation live on their home page and join with one click.",
    "room.invite": "Invite",
    "room.invited": "Invited",
    "room.noHigher": "There is no higher-level site.",
    "error.noCamera": "No camera or microphone found. Connect one and try again.",
    "error.permission": "The browser was not allowed to use the camera and microphone. Allow it in the address bar and try again.",
    "error.device": "Cannot open the camera or microphone ({detail}).",
    "error.roomUnauthorized": "The invite link or sign-in token has expired or is invalid. Ask the mediator for a new link.",
    "error.roomForbidden": "You may not enter this room: it lies outside your jurisdiction, or your invite link is for another room.",
    "error.roomNotFound": "This room does not exist or has ended.",
    "error.roomNoToken": "No sign-in token. Open this page with your invite link.",
    "invite.title": "Invitation",
    "invite.from": "{name} ({site}) invites you to join: {room}",
    "invite.join": "Join now",
    "invite.dismiss": "Dismiss",
    "home.enterRoom": "Enter room",
    "rec.title": "Recordings",
    "rec.list": "All recordings",
    "rec.site": "Site",
    "rec.from": "From",
    "rec.to": "To",
    "rec.kind": "Type",
    "rec.anyKind": "Any",
    "rec.text": "Text",
    "rec.textHint": "Title, site or participant",
    "rec.search": "Search",
    "rec.started": "Started",
    "rec.duration": "Length",
    "rec.titleCol": "Title",
    "rec.status": "Status",
    "rec.empty": "No recordings match",
    "rec.state.recording": "Recording",
    "rec.state.complete": "Complete",
    "rec.state.interrupted": "Interrupted",
    "rec.play": "Play",
    "rec.pause": "Pause",
    "rec.seek": "Position",
    "rec.verify": "Verify integrity",
    "rec.intact": "Intact: none of the {n} segments was altered",
    "rec.altered": "Altered: {list}",
    "rec.export": "Export as one file",
    "rec.exportFailed": "Export failed",
    "rec.download": "Download the export",
    "rec.participants": "Participants",
    "rec.recording": "Recording",
    "rec.error.unauthorized": "Your sign-in token is invalid or has expired; open your link again.",
    "rec.error.forbidden": "This recording is outside your jurisdiction.",
    "rec.error.not-found": "This recording does not exist or was deleted after its retention period.",
    "rec.error.unreachable": "Cannot reach the server; try again later.",
    "rec.error.timeout": "The server did not answer in time; try again later.",
    "rec.error.http": "The request failed; try again later.",
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

/** Fill elements marked data-i18n (text), data-i18n-title, data-i18n-placeholder and data-i18n-aria-label. */
export function apply(root) {
  document.documentElement.lang = current;
  for (const el of root.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  for (const el of root.querySelectorAll("[data-i18n-title]")) el.title = t(el.dataset.i18nTitle);
  for (const el of root.querySelectorAll("[data-i18n-placeholder]")) el.placeholder = t(el.dataset.i18nPlaceholder);
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
