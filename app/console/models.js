// Models: versions (method, metrics, sha256, erasures each is free of), replicas, rollback.
import { api } from "./api.js";
import { badge, card, h, kv, num, problemBox, short, toast, when } from "./ui.js";

export async function modelsPage() {
  const page = await api.get("/v1/models");
  return [h("h1", {}, "Models"), card(null, h("table", { class: "grid-table", id: "models" },
    h("thead", {}, h("tr", {}, ["Model", "Description", "Serving version"].map((t) => h("th", {}, t)))),
    h("tbody", {}, page.items.length ? page.items.map((m) => h("tr", {},
      h("td", {}, h("a", { href: `#/models/${m.name}` }, m.name)), h("td", {}, m.description || ""),
      h("td", {}, m.serving_version ? `v${m.serving_version}` : "—")))
      : h("tr", {}, h("td", { colspan: 3, class: "muted" }, "No models registered.")))))];
}

function metrics(m) {
  const parts = ["test_acc", "retain_acc", "forget_acc", "mia_auc"].filter((k) => m && m[k] !== undefined && m[k] !== null)
    .map((k) => `${k.replace("_acc", "").replace("mia_auc", "MIA AUC")} ${num(m[k])}`);
  return parts.join(" · ") || "—";
}

function rollbackButton(name, v) {
  return h("button", { type: "button", class: "ghost small", "data-rollback": v.version, onclick: async (e) => {
    const out = e.target.closest("td").querySelector(".result");
    try {
      const body = await api.post(`/v1/models/${name}/rollback`, { version: v.version });
      toast(`${name} now serves v${body.serving_version}`);
      setTimeout(() => document.dispatchEvent(new CustomEvent("lethe:rerender")), 900);
    } catch (err) {
      out.replaceChildren(problemBox(err));
      toast(err.text || String(err), false);
    }
  } }, "Roll back to this");
}

function exactNowButton(name) {
  return h("button", { type: "button", class: "ghost small", id: "exact-now", onclick: async (e) => {
    try {
      const body = await api.post(`/v1/models/${name}/exact-now`, {});
      toast(`exact job requested for ${body.owed} owed erasure${body.owed === 1 ? "" : "s"}`);
    } catch (err) {
      e.target.parentElement.append(problemBox(err));
    }
  } }, "Run the exact job now");
}

// Issue 16: when erasures get their exact version, and what they cost.
function scheduleCard(name, policy, compute) {
  const s = policy.schedule;
  return card("Erasure schedule", kv([
    ["Exact within", s.exact_within_s ? `${s.exact_within_s} s` : "at once (0)"],
    ["Max owed", s.max_owed ?? "—"], ["Interim", s.interim], ["Source", policy.schedule_source],
    ["Compute per erasure", compute.compute_per_erasure_s === null ? "—"
      : `${num(compute.compute_per_erasure_s)} s (${compute.erasures_completed} erasures, ${compute.window_days} d)`],
    ["By phase", Object.entries(compute.by_phase).map(([p, v]) => `${p}: ${v.jobs} jobs, ${num(v.compute_s)} s`)
      .join(" · ") || "—"],
  ]), s.exact_within_s ? exactNowButton(name) : null);
}

export async function modelPage(name) {
  const m = await api.get(`/v1/models/${name}`);
  const policy = await api.get(`/v1/models/${name}/policy`);
  const replicas = m.replicas.length ? h("table", { class: "grid-table" },
    h("thead", {}, h("tr", {}, ["Replica", "Serves", "Loaded", "Last seen"].map((t) => h("th", {}, t)))),
    h("tbody", {}, m.replicas.map((r) => h("tr", {}, h("td", { class: "mono" }, r.replica_id), h("td", {}, `v${r.version}`),
      h("td", {}, when(r.loaded_at)), h("td", {}, when(r.last_seen))))))
    : h("p", { class: "muted" }, "No live replica has reported a heartbeat.");
  const serving = new Set(m.replicas.map((r) => r.version));
  const versions = h("table", { class: "grid-table", id: "versions" },
    h("thead", {}, h("tr", {}, ["Version", "State", "Method", "Metrics", "sha256", "Free of", "Carries", "Replicas", ""]
      .map((t) => h("th", {}, t)))),
    h("tbody", {}, [...m.versions].reverse().map((v) => h("tr", { class: v.version === m.serving_version ? "current" : "" },
      h("td", {}, `v${v.version}`, v.parent ? h("span", { class: "muted" }, ` ← v${v.parent}`) : ""),
      h("td", {}, badge(v.state)), h("td", {}, v.method), h("td", { class: "small" }, metrics(v.metrics)),
      h("td", { class: "mono", title: v.sha256 }, short(v.sha256, 12)),
      h("td", {}, `${v.free_of_requests} erasure${v.free_of_requests === 1 ? "" : "s"}`),
      h("td", { class: v.tainted_by_requests ? "late" : "" }, v.tainted_by_requests
        ? `${v.tainted_by_requests} completed erasure${v.tainted_by_requests === 1 ? "" : "s"} (tainted)` : "none"),
      h("td", {}, serving.has(v.version) ? m.replicas.filter((r) => r.version === v.version).length : "—"),
      // Offered for every other version: the API decides and its refusal (tainted, purged) is shown.
      h("td", {}, v.version !== m.serving_version ? rollbackButton(name, v) : null,
        h("div", { class: "result" }))))));
  return [
    h("p", { class: "crumbs" }, h("a", { href: "#/models" }, "Models"), " / ", name),
    h("h1", {}, name, " ", h("span", { class: "muted" }, `serving v${m.serving_version}`)),
    h("div", { class: "cols" },
      card("Model", kv([["Spec", m.spec], ["Description", m.description || "—"],
                        ["Art. 19 recipients", m.recipients.map((r) => r.name).join(", ") || "none"]])),
      card("Replicas", replicas)),
    scheduleCard(name, policy, m.compute),
    card("Versions", versions, h("p", { class: "muted small" },
      "Rollback is refused for a version that still carries a completed erasure; the API's reason is shown.")),
  ];
}
