// A job page that shows why its outcome can be trusted: per method tried, the loss distributions
// before / after with the MIA AUC and its band, accuracy next to the reference, the gates in words.
import { api } from "./api.js";
import { accuracyBars, aucBand, legend, lossChart, SERIES } from "./charts.js";
import { badge, card, h, kv, num, short, when } from "./ui.js";

const MIA_TESTS = {
  set_auc: "Set-level membership test: the loss-threshold attack's AUC, forget set vs held-out subjects matched " +
           "in class mix, must lie within the exact-retrain reference's band (two-sided: over-forgetting fails too).",
  within_subject_auc: "Within-subject membership test: the forgotten subjects' trained samples vs their own " +
                      "never-trained samples; a model without them scores 0.5, so the AUC must lie within 0.5 ± margin.",
  per_sample_rank: "Per-sample rank test (the forget set is too small for a set-level AUC): each forget sample's " +
                   "confidence is ranked among same-class held-out samples; the mean rank must not be extreme.",
  exact_guarantee: "Exact method: the forget set was never trained on, so membership gates pass by construction; " +
                   "the AUC is reported, and only sanity gates apply.",
  none: "No forget samples: nothing was trained on.",
};

const GATE_NAMES = { mia: "Membership inference", forget_acc: "Forget accuracy", retain_acc: "Retain accuracy",
                     test_acc: "Test accuracy", subject_params: "Per-subject parameters", finite_weights: "Finite weights",
                     sanity_test_acc: "Sanity: above majority class" };

function gates(report) {
  return h("ul", { class: "gates" }, Object.entries(report.gates || {}).map(([name, g]) =>
    h("li", { class: g.passed ? "pass" : "fail" }, h("span", { class: "mark" }, g.passed ? "✓" : "✗"),
      h("strong", {}, GATE_NAMES[name] || name), " — ", g.reason)));
}

function aucFigure(report) {
  const hist = report.loss_hist || {};
  if (report.mia_test === "within_subject_auc") {
    return aucBand({ auc: report.within_auc, reference: 0.5, margin: report.mia_margin,
                     before: hist.before && hist.before.within_auc });
  }
  if (report.mia_test === "per_sample_rank") return null;
  return aucBand({ auc: report.mia_auc, reference: report.reference_auc, margin: report.mia_margin,
                   before: hist.before && hist.before.auc });
}

function attemptCard(a, i) {
  const r = a.report || {};
  const ref = r.reference_acc || {};
  const hist = r.loss_hist || {};
  const shown = Object.keys(SERIES).filter((n) => (hist.after && hist.after[n]) || (hist.before && hist.before[n]));
  const verdict = a.passed ? "passed every gate" : "failed a gate — never served";
  const auc = r.mia_test === "within_subject_auc" ? r.within_auc : r.mia_auc;
  return h("section", { class: `card attempt ${a.passed ? "passed" : "failed"}`, "data-method": a.method },
    h("h2", {}, `${i + 1}. ${a.method}`, " ", h("span", { class: `badge ${a.passed ? "s-completed" : "s-failed"}` },
      a.passed ? "passed" : "failed"), h("span", { class: "muted small" },
      ` ${a.exact ? "exact" : "approximate"} · seed ${a.seed} · unlearn ${num(a.seconds, 2)} s · verify ${num(a.verify_seconds, 2)} s`)),
    h("p", { class: "lede" }, `The ${a.method} candidate ${verdict}. `, MIA_TESTS[r.mia_test] || ""),
    h("h3", {}, "Loss distributions"),
    hist.edges ? [lossChart(hist), legend(shown)] : h("p", { class: "muted" }, "This report predates stored loss histograms."),
    h("h3", {}, "Membership-inference AUC and its pass band"),
    aucFigure(r),
    kv([["AUC (after)", num(auc)], ["Reference", r.mia_test === "within_subject_auc" ? "0.500" : num(r.reference_auc)],
        ["Margin", `± ${num(r.mia_margin)} (bootstrap σ ${num(r.within_sigma ?? r.mia_sigma)}, subject-level σ ${num(r.mia_null_sd)})`],
        r.rank_z !== null && r.rank_z !== undefined ? ["Rank z", num(r.rank_z, 2)] : null,
        ["Samples", `forget ${r.n_forget} · held-out ${r.n_holdout} · retain ${r.n_retain} · test ${r.n_test}` +
                    (r.n_forget_unseen ? ` · never-trained ${r.n_forget_unseen}` : "")]]),
    h("h3", {}, "Accuracy next to the reference"),
    accuracyBars([{ label: "forget", value: r.forget_acc, reference: ref.forget },
                  { label: "retain", value: r.retain_acc, reference: ref.retain },
                  { label: "test", value: r.test_acc, reference: ref.test }]),
    h("ul", { class: "legend" }, h("li", {}, h("span", { class: "swatch cand" }), "candidate"),
      h("li", {}, h("span", { class: "swatch ref" }),
        `reference (forget: ${ref.forget_source || "—"}; retain/test: ${ref.retain_source || "—"})`)),
    h("h3", {}, "Gate decisions"),
    gates(r),
    (r.warnings || []).length ? h("ul", { class: "warnings" }, r.warnings.map((w) => h("li", {}, `⚠ ${w}`))) : null,
    h("p", { class: "muted small" }, r.disclaimer || ""));
}

export async function jobPage(id) {
  const job = await api.get(`/v1/jobs/${id}`);
  const t = job.timings || {};
  return [
    h("p", { class: "crumbs" }, h("a", { href: "#/requests" }, "Requests"), " / job ", h("span", { class: "mono" }, job.id)),
    h("h1", {}, "Unlearning job ", h("span", { class: "mono" }, short(job.id)), " ", badge(job.status)),
    card("Summary", kv([
      ["Model", h("a", { href: `#/models/${job.model_name}` }, job.model_name)],
      ["Versions", `v${job.version_before ?? "?"} → ${job.version_after ? `v${job.version_after}` : "none published"}`],
      ["Policy / method", `${job.policy} → ${job.method ?? "—"}`],
      ["Requests", h("span", {}, job.request_ids.map((r) => h("a", { href: `#/requests/${r}`, class: "mono chip" }, short(r))))],
      ["Device", job.device || "—"], ["Started", when(job.started_at)], ["Finished", when(job.finished_at)],
      ["Time", t.total_s ? `${num(t.total_s, 1)} s total` : t.unlearn_s ? `${num(t.unlearn_s, 1)} s unlearning` : "—"],
      job.error ? ["Error", h("span", { class: "late" }, job.error)] : null])),
    job.attempts.length ? job.attempts.map(attemptCard)
      : card("Methods tried", h("p", { class: "muted" }, "No candidate was verified in this job (it failed before verification).")),
    card("What this does and does not show", h("p", { class: "muted" },
      "Pass bands and references come from the model's exact-retrain calibration (or, without one, its first " +
      "version). Histograms, AUCs and accuracies are measured on the same samples the gates used. The quick gate " +
      "is a regression test against known attacks, not a proof of privacy.")),
  ];
}
