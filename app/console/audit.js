// Audit: the hash chain's verification status, the latest signed checkpoint, export downloads.
import { api } from "./api.js";
import { card, h, kv, toast } from "./ui.js";

const ORDER = ["ok", "events", "size", "head", "reason", "truncated", "checkpoint_valid"];

export async function auditPage() {
  const v = await api.get("/v1/audit/verify");
  const ok = v.ok !== false && !v.truncated && v.checkpoint_valid !== false;
  const rest = Object.entries(v).filter(([k, val]) => k !== "checkpoint" && (val === null || typeof val !== "object"))
    .sort(([a], [b]) => (ORDER.indexOf(a) + 99) % 99 - (ORDER.indexOf(b) + 99) % 99);
  const cp = v.checkpoint;
  const exportButton = (format) => h("button", { type: "button", id: `export-${format}`, onclick: async () => {
    try {
      await api.download(`/v1/audit/export?format=${format}`, `lethe-audit.${format}`);
      toast(`Exported the audit log as ${format.toUpperCase()}`);
    } catch (err) {
      toast(err.text || String(err), false);
    }
  } }, `Download ${format.toUpperCase()}`);
  return [
    h("h1", {}, "Audit log"),
    h("div", { class: `banner ${ok ? "good" : "bad"}`, id: "chain-status" },
      ok ? "✓ The hash chain verifies" : "✗ The hash chain does NOT verify",
      v.reason ? ` — ${v.reason}` : ""),
    h("div", { class: "cols" },
      card("Chain", kv(rest.map(([k, val]) => [k.replace(/_/g, " "), val === null ? "—" : String(val)]))),
      card("Latest signed checkpoint", cp ? kv([["Size", String(cp.size)], ["Root hash", h("span", { class: "mono wrap" }, cp.hash)],
        ["Signed at", cp.time], ["Key id", h("span", { class: "mono" }, cp.key_id)],
        ["Signature", v.checkpoint_valid ? "valid (Ed25519)" : "not verified"]])
        : h("p", { class: "muted" }, "No checkpoint has been signed yet."))),
    card("Export", h("p", {}, "The whole log in chain order, for a regulator or an offline check:"),
      h("div", { class: "row" }, exportButton("jsonl"), exportButton("csv"))),
  ];
}
