// Small DOM helpers: build elements without innerHTML (API strings are never parsed as HTML).

export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export const when = (iso) => {
  if (!iso) return "—";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso) : d.toISOString().replace("T", " ").slice(0, 16) + " UTC";
};

export const pct = (x, digits = 1) => (x === null || x === undefined ? "—" : `${(x * 100).toFixed(digits)} %`);
export const num = (x, digits = 3) => (x === null || x === undefined ? "—" : Number(x).toFixed(digits));
export const short = (id, n = 8) => (id ? String(id).slice(0, n) : "—");

// app.services.requests.lifecycle.OPEN: owed and on the clock (awaiting_identity has its clock paused).
export const OPEN = new Set(["received", "queued", "running", "verifying", "deploying", "scheduled", "failed"]);
export const isOverdue = (r) => OPEN.has(r.status) && r.due_at && new Date(r.due_at) < new Date();

export function badge(status) {
  return h("span", { class: `badge s-${status}` }, String(status).replace(/_/g, " "));
}

export function card(title, ...body) {
  return h("section", { class: "card" }, title ? h("h2", {}, title) : null, ...body);
}

export function kv(pairs) {
  return h("dl", { class: "kv" }, pairs.filter(Boolean).map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

export function problemBox(err) {
  const text = err && err.text ? err.text : String(err && err.message ? err.message : err);
  return h("p", { class: "problem", role: "alert" }, text);
}

let toastTimer;
export function toast(message, ok = true) {
  const el = document.getElementById("toast");
  el.textContent = message;
  el.className = `toast ${ok ? "ok" : "bad"}`;
  el.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { el.hidden = true; }, 6000);
}

let generation = 0;

/** Render a page: a loading line, then the page or the API's problem. Only the newest render
 *  writes: a slower page started earlier (a re-render after an action, a click on another page
 *  while one loads) must not land over the page the operator moved to. */
export async function render(view, build) {
  const mine = ++generation;
  view.replaceChildren(h("p", { class: "muted" }, "Loading…"));
  let nodes;
  try {
    nodes = [await build()].flat(Infinity).filter((n) => n !== null && n !== undefined && n !== false);
  } catch (err) {
    nodes = [problemBox(err)];
  }
  if (mine === generation) view.replaceChildren(...nodes);
}
