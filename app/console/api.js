// The console's only way to Lethe: the JSON API, with the operator's key as a bearer header.
// The key lives in sessionStorage (this tab only) and never in a URL, a query string or a log.
const KEY = "lethe.console.key";

export const session = {
  key: () => sessionStorage.getItem(KEY),
  set: (key) => sessionStorage.setItem(KEY, key),
  clear: () => sessionStorage.removeItem(KEY),
};

/** An RFC 9457 problem (or a network failure) as an Error the pages can show. */
export class Problem extends Error {
  constructor(status, body) {
    const detail = (body && (body.detail || body.title)) || `HTTP ${status}`;
    super(detail);
    this.status = status;
    this.body = body || {};
    this.code = this.body.code || "";
  }
  get text() {
    const code = this.code ? ` (${this.code})` : "";
    return `${this.status} ${this.body.title || "Error"}${code}: ${this.message}`;
  }
}

async function call(method, path, body) {
  const headers = { Accept: "application/json, application/problem+json" };
  const key = session.key();
  if (key) headers.Authorization = `Bearer ${key}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body),
                                  credentials: "omit", cache: "no-store", referrerPolicy: "no-referrer" });
  const type = res.headers.get("content-type") || "";
  const data = type.includes("json") ? await res.json().catch(() => null) : null;
  if (!res.ok) {
    if (res.status === 401) window.dispatchEvent(new CustomEvent("lethe:unauthorized"));
    throw new Problem(res.status, data);
  }
  return data;
}

export const api = {
  get: (path, params) => call("GET", withQuery(path, params)),
  post: (path, body) => call("POST", path, body ?? {}),
  del: (path) => call("DELETE", path),
  /** Download a streamed export with the header (a plain link could not carry the key). */
  async download(path, filename) {
    const res = await fetch(path, { headers: { Authorization: `Bearer ${session.key()}` }, credentials: "omit",
                                    cache: "no-store" });
    if (!res.ok) throw new Problem(res.status, await res.json().catch(() => null));
    const url = URL.createObjectURL(await res.blob());
    const a = Object.assign(document.createElement("a"), { href: url, download: filename });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  },
};

export function withQuery(path, params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) {
    if (v !== undefined && v !== null && v !== "" && v !== false) q.set(k, String(v));
  }
  const s = q.toString();
  return s ? `${path}?${s}` : path;
}
