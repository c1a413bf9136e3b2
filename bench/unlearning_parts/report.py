"""The benchmark's outputs under ``--out``: ``unlearning.md`` (tables), ``unlearning.csv`` (one row
per run), ``unlearning.json`` (everything, re-renderable with ``--render``) and ``unlearning.png``
(each method's speed-up against its MIA and test-accuracy gaps to retrain)."""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from bench.unlearning_parts.configs import COLUMNS, NAME, SIZES, TARGETS, info_large, info_sizes
from bench.unlearning_parts.summary import fmt, judge_targets, replay_table, suggest_chains, summarise
from workers.unlearning import METHODS


def md_table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows])


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    return (f"{os.cpu_count()} CPU cores ({cpu}), torch {torch.__version__} with {torch.get_num_threads()} "
            f"thread(s), Python {platform.python_version()}, {platform.system()}")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = list(dict.fromkeys(r["config"] for r in rows))
    methods = sorted({r["method"] for r in rows if r.get("speedup") is not None and r["method"] != "retrain"})
    colors = {m: plt.cm.tab10(i % 10) for i, m in enumerate(methods)}
    markers = dict(zip(SIZES, "os^"))
    width = max(6.5, 4.2 * len(configs))
    fig, axes = plt.subplots(2, len(configs), figsize=(width, 8), squeeze=False)
    for j, config in enumerate(configs):
        for r in rows:
            if r["config"] != config or r["method"] not in colors or r.get("speedup") is None:
                continue
            for i, key in enumerate(("d_mia_auc", "d_test_acc")):
                if r.get(key) is not None:
                    axes[i][j].scatter(r["speedup"], r[key], color=colors[r["method"]],
                                       marker=markers.get(r["forget_set"], "o"), s=28, alpha=0.8)
        for i, (label, band) in enumerate((("MIA AUC - retrain's", TARGETS["mia_auc"]),
                                           ("test acc - retrain's", TARGETS["test_acc"]))):
            ax = axes[i][j]
            ax.set_xscale("log")
            ax.axhspan(-band, band, color="green", alpha=0.1)
            ax.axvline(TARGETS["speedup"], color="grey", linestyle="--", linewidth=0.8)
            ax.axhline(0, color="black", linewidth=0.5)
            ax.set_title(f"{config}" if i == 0 else "")
            ax.set_xlabel("speed-up over retrain (x)")
            ax.set_ylabel(label)
    handles = [plt.Line2D([], [], color=colors[m], marker="o", linestyle="", label=m) for m in methods]
    handles += [plt.Line2D([], [], color="black", marker=mk, linestyle="", label=s) for s, mk in markers.items()]
    fig.legend(handles=handles, loc="lower center", ncol=max(3, int(width // 1.6)), fontsize=8)
    fig.suptitle("Methods vs exact retrain (green band: DESIGN.md 8 target; dashed: 20x)", fontsize=10)
    fig.tight_layout(rect=(0, 0.1, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(out: Path, rows: list[dict], infos: list[dict], args, elapsed: float, *, argv: list[str],
                  host: str, chains_used: dict[str, list[str]], notes: list[str] = (),
                  recorded: dict[str, Any] | None = None) -> str:
    """Write the four files; returns the markdown. ``recorded``: the chain ``--record-chain`` set."""
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(rows)
    judged = next((i["config"] for i in infos if info_large(i)), None)
    targets = judge_targets(rows, judged) if judged else []
    informational = [t for i in infos if i["config"] != judged for t in judge_targets(rows, i["config"])]
    with open(out / f"{NAME}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({k: fmt(r.get(k), 4) for k in COLUMNS} for r in rows)
    plot(rows, out / f"{NAME}.png")
    lines = [
        "# Unlearning benchmark", "",
        f"Command: `python bench/unlearning.py {' '.join(argv)}`  ",
        f"Machine: {host}; device {args.device}.  ",
        f"Total wall time {elapsed / 60:.1f} min; seeds {args.seeds}; forget sets "
        f"{', '.join(args.sizes) if args.sizes else 'per config (see below)'}; "
        f"methods registered: {', '.join(sorted(METHODS))}.", "",
        "Every figure is measured in this run; gaps (d_*) and speed-ups are against the `retrain` of the same "
        "forget set and seed. Accuracies and the loss-MIA AUC are the quick gate's (forget set vs held-out "
        "subjects); `passed` counts runs whose candidate passed every gate. `audit` columns: LiRA with reference "
        "models (AUC, TPR at 1 % / 5 % FPR), forget set vs held-out subjects; exact retrain should sit near "
        "0.5 / 0.01 / 0.05. The quick gate is a regression test, not a privacy proof; the audit is an estimate "
        "against known attacks, not a proof either.", "",
        *[line for n in notes for line in (f"Note: {n}", "")],
        "## Configurations", "",
        md_table(["config", "model", "train samples", "train subjects", "full training (s)", "forget sets",
                  "reference AUC", "method overrides", "skipped"],
                 [[i["config"], i["model"], i["n_train"], i["n_train_subjects"], i["train_seconds"],
                   ", ".join(args.sizes or info_sizes(i)),
                   (i.get("reference") or {}).get("mia_auc"), json.dumps(i.get("method_config") or {}),
                   "; ".join(f"{k}: {v}" for k, v in i.get("skipped", {}).items())] for i in infos]), "",
    ]
    if targets:
        lines += [f"## DESIGN.md section 8 targets, judged on `{judged}` (auto policy, worst case over "
                  f"{targets[0]['runs']} runs)", "",
                  md_table(["target", "worst", "mean", "status"],
                           [[t["target"], t["worst"], t["mean"], "MET" if t["met"] else "MISSED"] for t in targets]), ""]
    else:
        lines += ["## DESIGN.md section 8 targets", "", "Not judged: no configuration with a >= 1-minute retrain "
                  "in this run (use the full run).", ""]
    if informational:
        lines += ["Same targets on the other configurations (informational: there retrain takes seconds, so "
                  "verification overhead dominates the speed-up):", "",
                  md_table(["config", "target", "worst", "mean", "status"],
                           [[t["config"], t["target"], t["worst"], t["mean"], "MET" if t["met"] else "MISSED"]
                            for t in informational]), ""]
    chains = suggest_chains(rows)
    if chains:
        lines += ["## Chains these results support", "",
                  "The chain (at most two approximate methods, then retrain) with the least total time-to-forget "
                  "over the spec's runs, replayed from the per-method measurements (a method that left the model "
                  "unchanged never counts as passing).", "",
                  md_table(["spec", "suggested chain", "chain auto used in this run"],
                           [[k, " > ".join(v), " > ".join(chains_used.get(k, []))] for k, v in chains.items()]), "",
                  md_table(["config", "forget set", "suggested chain", "replayed (s)", "retrain (s)", "speed-up", "served"],
                           replay_table(rows, chains)), ""]
    if recorded:
        lines += [f"## Chain recorded for model `{recorded['model']}`", "",
                  f"`{' > '.join(recorded['chain'])}` (before: `{' > '.join(recorded['previous'])}`; set "
                  f"{recorded['via']}): the approximate methods that passed the gate in every run above, cheapest first, then the exact "
                  "fallback.", ""]
    auto_rows = [s for s in summary if s["method"] == "auto"]
    lines += ["## Policy auto vs retrain (engine.forget, escalations included)", "",
              md_table(["config", "forget set", "auto (s)", "retrain (s)", "speed-up", "CPU speed-up", "passed",
                        "chosen"],
                       [[s["config"], s["forget_set"], s["seconds"],
                         next((x["seconds"] for x in summary if x["config"] == s["config"]
                               and x["forget_set"] == s["forget_set"] and x["method"] == "retrain"), None),
                         s["speedup"], s["cpu_speedup"], s["passed"], s["note"]] for s in auto_rows]), "",
              "## All methods (mean over seeds)", "",
              md_table(["config", "forget set", "samples", "method", "time (s)", "speed-up", "forget acc", "test acc",
                        "MIA AUC", "d forget", "d test", "d AUC", "gate", "audit AUC", "TPR@1%", "TPR@5%", "note"],
                       [[s["config"], s["forget_set"], s["n_forget"], s["method"], s["seconds"], s["speedup"],
                         s["forget_acc"], s["test_acc"], s["mia_auc"], s["d_forget_acc"], s["d_test_acc"],
                         s["d_mia_auc"], s["passed"], s["audit_auc"], s["audit_tpr1"], s["audit_tpr5"],
                         s["note"] if s["status"] == "ok" or s["method"] == "auto" else f"{s['status']}: {s['note']}"]
                        for s in summary]), "",
              f"Files: `{NAME}.csv` (one row per run), `{NAME}.json`, `{NAME}.png`.", ""]
    md = "\n".join(lines)
    (out / f"{NAME}.md").write_text(md)
    data = {"benchmark": NAME, "machine": host, "argv": argv, "elapsed_s": elapsed, "chains_used": chains_used, "notes": list(notes),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "methods": sorted(METHODS), "configs": infos,
            "targets": targets, "targets_informational": informational, "suggested_chains": chains, "summary": summary, "rows": rows,
            "columns": COLUMNS, "recorded_chain": recorded}
    (out / f"{NAME}.json").write_text(json.dumps(_json_safe(data), indent=1, default=str))
    return md


def _json_safe(v):
    if isinstance(v, float):
        return None if math.isnan(v) or math.isinf(v) else v
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    return v

