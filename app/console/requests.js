// Requests: a filterable, paginated list and one request's detail, timeline and operator actions.
import { api } from "./api.js";
import { badge, card, h, isOverdue, kv, problemBox, short, toast, when } from "./ui.js";

// app.services.requests.lifecycle.RequestStatus (tests/app/test_console.py checks they stay equal).
export const STATUSES = ["awaiting_identity", "received", "queued", "running", "verifying", "deploying", "scheduled", "completed",
                         "no_data", "failed", "cancelled", "rejected"];
export const SOURCES = ["api", "opendsr", "fides"];
export const DIALECTS = ["opengdpr", "opendsr", "opencompliance"];  // OpenDSR-family requests only
const PAGE = 25;

const state = { filters: { status: "", source: "", dialect: "", overdue: false, order: "due" }, cursors: [null] };

export async function listPage() {
  const { status, source, dialect, overdue, order } = state.filters;
  const cursor = state.cursors[state.cursors.length - 1];
  const page = await api.get("/v1/erasure-requests", { status, source, dialect, overdue, order, cursor, limit: PAGE });
  const items = page.items;
  const rerender = () => document.dispatchEvent(new CustomEvent("lethe:rerender"));
  const select = (name, options) => h("select", { name, id: `f-${name}`, onchange: (e) => {
    state.filters[name] = e.target.value; state.cursors = [null]; rerender(); } },
    h("option", { value: "" }, `any ${name}`),
    options.map((o) => h("option", { value: o, selected: state.filters[name] === o }, o.replace(/_/g, " "))));
  const toolbar = h("div", { class: "toolbar" },
    select("status", STATUSES), select("source", SOURCES), select("dialect", DIALECTS),
    h("label", { class: "check" }, h("input", { type: "checkbox", id: "f-overdue", checked: state.filters.overdue,
      onchange: (e) => { state.filters.overdue = e.target.checked; state.cursors = [null]; rerender(); } }), "overdue only"),
    h("select", { id: "f-order", onchange: (e) => { state.filters.order = e.target.value; state.cursors = [null]; rerender(); } },
      [["due", "due date, overdue first"], ["received", "newest first"]].map(([v, label]) =>
        h("option", { value: v, selected: state.filters.order === v }, label))),
    h("span", { class: "spacer" }),
    h("button", { type: "button", class: "ghost", disabled: state.cursors.length === 1,
                  onclick: () => { state.cursors.pop(); rerender(); } }, "‹ Newer"),
    h("button", { type: "button", class: "ghost", disabled: !page.next_cursor,
                  onclick: () => { state.cursors.push(page.next_cursor); rerender(); } }, "Older ›"));
  const rows = items.map((r) => h("tr", { class: isOverdue(r) ? "overdue" : "", "data-request": r.id },
    h("td", {}, h("a", { href: `#/requests/${r.id}`, class: "mono" }, short(r.id))),
    h("td", {}, badge(r.status)),
    h("td", {}, r.stage, r.percent > 0 && r.percent < 100 ? ` · ${r.percent}%` : ""),
    h("td", {}, r.source), h("td", {}, r.policy),
    h("td", {}, when(r.received_at)),
    h("td", { class: isOverdue(r) ? "late" : "" }, when(r.due_at), isOverdue(r) ? " · overdue" : "",
      r.extended ? " · extended" : ""),
    h("td", {}, r.models.map((m) => h("span", { class: "chip" }, `${m.model}: ${m.status}`)))));
  const table = h("table", { class: "grid-table", id: "requests" },
    h("thead", {}, h("tr", {}, ["Request", "Status", "Stage", "Source", "Policy", "Received", "Due", "Models"]
      .map((t) => h("th", {}, t)))),
    h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: 8, class: "muted" }, "No requests match."))));
  return [h("h1", {}, "Erasure requests"), toolbar, card(null, table),
          h("p", { class: "muted" }, `Page ${state.cursors.length} · ${items.length} shown · ` +
            (order === "due" ? "unfinished requests by due date (overdue first), then finished ones" : "newest first"))];
}

function action(label, run, opts = {}) {
  return h("button", { type: "button", class: opts.danger ? "danger" : "", id: opts.id, onclick: async (e) => {
    const out = e.target.closest(".actions").querySelector(".result");
    e.target.disabled = true;
    try {
      const body = await run();
      if (body === undefined) return;
      out.replaceChildren(h("p", { class: "ok" }, `${label}: done — status ${body.status}`));
      toast(`${label}: request is now ${body.status}`);
      setTimeout(() => document.dispatchEvent(new CustomEvent("lethe:rerender")), 900);
    } catch (err) {
      out.replaceChildren(problemBox(err));
      toast(err.text || String(err), false);
    } finally {
      e.target.disabled = false;
    }
  } }, label);
}

function actions(r) {
  const base = `/v1/erasure-requests/${r.id}`;
  const note = h("input", { type: "text", id: "note", placeholder: "note or reason (no personal data)", maxlength: 2000 });
  const text = () => note.value.trim();
  return card("Actions",
    h("div", { class: "actions" },
      h("div", { class: "row" }, note),
      h("div", { class: "row" },
        action("Retry", () => api.post(`${base}/retry`), { id: "act-retry" }),
        action("Identity verified", () => api.post(`${base}/identity`, { verified: true, note: text() || null }),
               { id: "act-verify" }),
        action("Identity rejected", () => api.post(`${base}/identity`, { verified: false, note: text() || null }),
               { id: "act-reject", danger: true }),
        action("Extend deadline", () => {
          if (text().length < 10) { toast("Give the reason for the extension (10+ characters) in the note.", false); return undefined; }
          return api.post(`${base}/extend`, { reason: text() });
        }, { id: "act-extend" }),
        action("Cancel", () => api.del(base), { id: "act-cancel", danger: true })),
      h("div", { class: "result" }),
      h("p", { class: "muted" }, "Each button calls the API with your key; refusals are shown as the API states them.")));
}

async function timeline(id) {
  try {
    const page = await api.get("/v1/audit/events", { request_id: id, limit: 200 });
    return card("Timeline (audit events)", h("ol", { class: "timeline", id: "timeline" }, page.items.map((e) =>
      h("li", {}, h("span", { class: "when" }, when(e.ts)), h("strong", {}, e.type.replace(/_/g, " ")),
        h("span", { class: "muted" }, ` · ${e.actor} · #${e.seq ?? "pending"}`),
        summary(e.payload)))));
  } catch (err) {
    return card("Timeline (audit events)", problemBox(err));
  }
}

function summary(payload) {
  const keep = Object.entries(payload || {}).filter(([, v]) => v !== null && typeof v !== "object");
  if (!keep.length) return null;
  const parts = keep.map(([k, v]) => (k === "job_id"
    ? h("span", {}, "job: ", h("a", { href: `#/jobs/${v}`, class: "mono" }, short(v)))
    : h("span", {}, `${k}: ${v}`)));
  return h("div", { class: "payload" }, parts.flatMap((p, i) => (i ? [" · ", p] : [p])));
}

// A Fides request's integration state (README "Fides"): a token that expired or a refused resume is
// shown as a problem, with the next step the API gives.
const FIDES_TROUBLE = ["token_expired", "resume_refused"];

function fidesRows(r) {
  if (!r.fides) return r.external_id ? [["External id", h("span", { class: "mono" }, r.external_id)]] : [];
  const f = r.fides;
  const waiting = ["halted", "resuming"].includes(f.state) && f.token_expires_at;
  return [
    ["Fides request", h("span", { class: "mono" }, f.privacy_request_id || "—")],
    ["Fides state", h("span", { class: FIDES_TROUBLE.includes(f.state) ? "late" : "" },
      f.state.replaceAll("_", " "), f.fides_status ? ` (Fides: ${f.fides_status})` : "",
      waiting ? ` · token expires ${when(f.token_expires_at)}` : "")],
    f.next_step ? ["Next step", h("span", { class: FIDES_TROUBLE.includes(f.state) ? "late" : "" }, f.next_step)] : null,
  ];
}

export async function detailPage(id) {
  const r = await api.get(`/v1/erasure-requests/${id}`);
  const models = h("table", { class: "grid-table" },
    h("thead", {}, h("tr", {}, ["Model", "Status", "Attempts", "Job", "Not before"].map((t) => h("th", {}, t)))),
    h("tbody", {}, r.models.map((m) => h("tr", {}, h("td", {}, m.model), h("td", {}, badge(m.status)),
      h("td", {}, m.attempts),
      h("td", {}, m.job_id ? h("a", { href: `#/jobs/${m.job_id}`, class: "mono job-link" }, short(m.job_id)) : "—"),
      h("td", {}, when(m.not_before))))));
  const res = r.result && Object.keys(r.result).length ? h("pre", { class: "json" }, JSON.stringify(r.result, null, 2)) : null;
  return [
    h("p", { class: "crumbs" }, h("a", { href: "#/requests" }, "Requests"), " / ", h("span", { class: "mono" }, r.id)),
    h("h1", {}, "Request ", h("span", { class: "mono" }, short(r.id)), " ", badge(r.status)),
    h("div", { class: "cols" },
      card("Status", kv([["Stage", `${r.stage} · ${r.percent}%`], ["Source", r.source], ["Policy", r.policy],
        ["Identity", r.identity + (r.clock_paused ? " (clock paused)" : "")], ["Received", when(r.received_at)],
        ["Due", h("span", { class: isOverdue(r) ? "late" : "" }, when(r.due_at), isOverdue(r) ? " · overdue" : "")],
        ["Extended", r.extended ? `yes — ${r.extension_reason}` : "no"],
        // Scheduled erasures (issue 16): step 1 the interim forget (not yet erased), step 2 the exact version.
        r.exact_due_at ? ["Interim forget", r.forgotten_at ? `served everywhere ${when(r.forgotten_at)} (not yet erased)`
          : "nothing published (interim: none)"] : null,
        r.exact_due_at ? ["Exact version due", when(r.exact_due_at)] : null,
        ["Completed", when(r.completed_at)],
        r.error ? ["Error", h("span", { class: "late" }, r.error)] : null,
        ...fidesRows(r)])),
      actions(r)),
    card("Models", models),
    res ? card("Result", res) : null,
    await timeline(r.id),
  ];
}
