// Local devices: open the camera and microphone, list them, and say what went
// wrong in a way the views can translate. No view code here.

/**
 * A local capture that failed. `kind` is "no-device" (nothing to open),
 * "permission" (the user or the browser refused) or "device" (anything else,
 * e.g. the camera is in use by another program).
 */
export class DeviceError extends Error {
  constructor(kind, message) {
    super(message);
    this.name = "DeviceError";
    this.kind = kind;
  }
}

function deviceError(err) {
  if (!navigator.mediaDevices?.getUserMedia) return new DeviceError("device", "getUserMedia is unavailable (needs https)");
  switch (err?.name) {
    case "NotFoundError":
    case "OverconstrainedError":
      return new DeviceError("no-device", err.message);
    case "NotAllowedError":
    case "SecurityError":
      return new DeviceError("permission", err.message);
    default:
      return new DeviceError("device", err?.message || String(err));
  }
}

function constraint(deviceId) {
  return deviceId ? { deviceId: { exact: deviceId } } : true;
}

/**
 * Open the camera and microphone (the given devices, else the defaults).
 * With one of the two missing, returns what there is; rejects with a
 * DeviceError only when neither can be opened.
 */
export async function openCamera({ cameraId = null, micId = null } = {}) {
  if (!navigator.mediaDevices?.getUserMedia) throw deviceError(null);
  const video = { ...(cameraId ? constraint(cameraId) : {}), width: { ideal: 1280 }, height: { ideal: 720 } };
  const audio = constraint(micId);
  try {
    return await navigator.mediaDevices.getUserMedia({ video, audio });
  } catch (err) {
    if (err?.name !== "NotFoundError" && err?.name !== "OverconstrainedError") throw deviceError(err);
  }
  // One kind of device is missing: take the other alone.
  for (const only of [{ audio }, { video }]) {
    try {
      return await navigator.mediaDevices.getUserMedia(only);
    } catch {
      // try the other
    }
  }
  throw new DeviceError("no-device", "no camera and no microphone");
}

/** Cameras and microphones: {cameras: [{id, label}], mics: [{id, label}]}. Labels need a granted capture. */
export async function listDevices() {
  const devices = navigator.mediaDevices?.enumerateDevices ? await navigator.mediaDevices.enumerateDevices() : [];
  const pick = (kind) => devices.filter((d) => d.kind === kind && d.deviceId).map((d) => ({ id: d.deviceId, label: d.label }));
  return { cameras: pick("videoinput"), mics: pick("audioinput") };
}

/** Ask for a screen to share; resolves to null when the user cancels. */
export async function openScreen() {
  try {
    return await navigator.mediaDevices.getDisplayMedia({ video: { frameRate: 15 }, audio: false });
  } catch (err) {
    if (err?.name === "NotAllowedError" || err?.name === "AbortError") return null;
    throw deviceError(err);
  }
}

export function stopTracks(stream) {
  for (const track of stream?.getTracks() ?? []) track.stop();
}

/**
 * The loudness (0..1) of what a peer connection sends or receives, from
 * getStats: `audioLevel` of the inbound audio (WHEP) or of the audio media
 * source (WHIP). 0 when there is none.
 */
export async function audioLevel(pc) {
  if (!pc || pc.connectionState === "closed") return 0;
  let level = 0;
  const stats = await pc.getStats();
  stats.forEach((report) => {
    const audio = report.kind === "audio" && (report.type === "inbound-rtp" || report.type === "media-source");
    if (audio && typeof report.audioLevel === "number") level = Math.max(level, report.audioLevel);
  });
  return level;
}
