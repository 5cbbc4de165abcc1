// The gateway's REST API: JSON calls, Server-Sent Events from a POST, images as blob URLs.
// Every call carries the API key kept in localStorage (when there is one).

const KEY_STORAGE = "sdstack.apiKey";

export function apiKey() {
  return localStorage.getItem(KEY_STORAGE) || "";
}

export function setApiKey(key) {
  if (key) localStorage.setItem(KEY_STORAGE, key);
  else localStorage.removeItem(KEY_STORAGE);
  imageCache.clear();
}

function headers(extra = {}) {
  const all = { ...extra };
  const key = apiKey();
  if (key) all.Authorization = `Bearer ${key}`;
  return all;
}

export class ApiError extends Error {
  constructor(status, body) {
    const error = body && body.error ? body.error : {};
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code || "";
    this.details = error.details || [];
  }
}

/** Listeners told about every 401 (to ask for a key). */
export const unauthorized = new EventTarget();

async function failure(response) {
  const body = await response.json().catch(() => null);
  if (response.status === 401) unauthorized.dispatchEvent(new Event("unauthorized"));
  return new ApiError(response.status, body);
}

/** `method path` with a JSON body; the parsed JSON answer (null for 204). */
export async function api(path, { method = "GET", body, signal } = {}) {
  const init = { method, signal, headers: headers() };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (!response.ok) throw await failure(response);
  if (response.status === 204) return null;
  return response.json();
}

/** POST `body` to `path` and yield its Server-Sent Events as {event, data}. */
export function postEvents(path, body, { signal } = {}) {
  return events(path, {
    method: "POST",
    signal,
    headers: headers({ "Content-Type": "application/json", Accept: "text/event-stream" }),
    body: JSON.stringify(body),
  });
}

/** Upload a multipart form (files); the parsed JSON answer. */
export async function upload(path, form) {
  const response = await fetch(path, { method: "POST", headers: headers(), body: form });
  if (!response.ok) throw await failure(response);
  return response.json();
}

/** GET `path` as Server-Sent Events, yielded as {event, data}. */
export function getEvents(path, { signal } = {}) {
  return events(path, { signal, headers: headers({ Accept: "text/event-stream" }) });
}

async function* events(path, init) {
  const response = await fetch(path, init);
  if (!response.ok) throw await failure(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const parsed = parseEvent(block);
      if (parsed) yield parsed;
    }
  }
}

function parseEvent(block) {
  let event = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") event = value;
    else if (field === "data") data.push(value);
  }
  if (!data.length) return null;
  return { event, data: JSON.parse(data.join("\n")) };
}

// Images need the key too, so they are fetched and shown as blob URLs.
const imageCache = new Map();

/** A blob URL of the image at `path` (cached). */
export function imageUrl(path) {
  if (!imageCache.has(path)) {
    const pending = fetch(path, { headers: headers() }).then(async (response) => {
      if (!response.ok) throw await failure(response);
      return URL.createObjectURL(await response.blob());
    });
    pending.catch(() => imageCache.delete(path));
    imageCache.set(path, pending);
  }
  return imageCache.get(path);
}
