"""Epsilon mode's run and outputs: ``unlearning-epsilon[-CONFIG].{md,csv,json,png}`` under ``--out``.

The original model is trained once (``--epsilon-seed``, default 0); the exact-retrain reference the gate and ``auto``
read is calibrated as at registration (``calibrate_reference``, 3 single-subject sets, which also
records the retrain time ``auto``'s cost rule uses). Runs go to ``--jobs`` single-threaded workers
(``epsilon_tasks``); outputs are rewritten after every forget set, so a run stopped early keeps the
sets it finished. The plot is F against speed-up (log x) with the floor
as a line and 0.8 x floor dashed (issue 10's target).
"""

from __future__ import annotations

import csv
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from bench.unlearning_parts import epsilon_tasks as tasks
from bench.unlearning_parts import interim
from bench.unlearning_parts.configs import CONFIGS
from bench.unlearning_parts.epsilon import AUTO_SEED, FLOOR_SEED, Sample, evaluator, stage_for
from bench.unlearning_parts.epsilon_summary import false_pass, summarise
from bench.unlearning_parts.report import machine
from bench.unlearning_parts.summary import fmt
from workers.verify.epsilon import epsilon_ceiling

COLUMNS = ["config", "forget_set", "n_forget", "n_scored", "n_models", "method", "F", "floor", "share_of_floor",
           "final_score", "seconds", "cpu_seconds", "retrain_seconds", "speedup", "cpu_speedup", "retain_acc", "test_acc",
           "forget_acc", "retrain_forget_acc", "d_retain_acc", "d_test_acc", "d_forget_acc", "gate_passed", "quick_passed",
           "gate_runs", "peaky", "shift", "served", "cleared", "stranger_gap"]
INTERIM_COLS = ["forget_set", "method", "served", "F", "share_of_floor", "peaky", "forget_acc", "retrain_forget_acc",
                "test_acc", "d_test_acc", "cpu_seconds", "gate_passed", "gate_runs", "cleared", "stranger_gap"]
TARGET_SHARE = 0.8  # auto's F >= 0.8 x floor (issue 10)
TARGET_TEST_POINTS = 0.005  # test accuracy within 0.5 points of retrain's


def stem(config: str) -> str:
    return "unlearning-epsilon" if config == "movielens" else f"unlearning-epsilon-{config}"


def run(args, device, argv: list[str], log) -> str:
    """Every configuration of ``args.configs`` in epsilon mode; returns the last markdown."""
    md = ""
    for key in args.configs:
        md = run_config(key, args, device, argv, log)
    return md


def run_config(key: str, args, device, argv: list[str], log) -> str:
    """One configuration: the original and its reference, then per forget set 2 N retrains, N runs
    per method and N of ``auto``, on ``--jobs`` workers (``epsilon_tasks``). The outputs are rewritten
    as each forget set completes, so a run stopped early keeps the sets it finished."""
    cfg, n = CONFIGS[key], args.epsilon
    spec = cfg.make_spec()
    examples = spec.load_examples()
    started = time.perf_counter()
    stages = {label: stage_for(key, spec, examples, label, device, None, seed=args.epsilon_seed)
              for label in args.epsilon_sets}
    for label, st in stages.items():
        log(f"{key} {label}: {len(st.fs.subjects)} subjects, {len(st.fs.forget)} samples")
    tasks.prepare(spec, examples, stages, {label: evaluator(st, args.epsilon_examples) for label, st in stages.items()},
                  device)
    kinds, noises = tuple(getattr(args, "interim", None) or ()), tuple(getattr(args, "interim_noise", None) or ())
    rows_of = {kind: [interim.row_name(kind)] + [interim.row_name(kind, s) for s in noises] for kind in kinds}
    names = ["retrain", "retrain_floor", *args.methods_eps, "auto", *(r for k in kinds for r in rows_of[k])]
    samples = {label: {name: Sample(name) for name in names} for label in stages}
    pending: list[tuple[str, str, Any]] = []
    total = len(stages) * n * (len(names) - sum(len(r) - 1 for r in rows_of.values())) + 1
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="lethe-eps-") as tmp, tasks.executor(args.jobs, device) as pool, \
            tqdm(total=total, file=sys.stderr, unit="run", dynamic_ncols=True) as bar:
        original = pool.submit(tasks.original_task, args.epsilon_seed, f"{tmp}/original.pt", 3)

        def retrains(label: str) -> list[tuple[str, str, Any]]:
            return [(label, name, pool.submit(tasks.retrain_task, label, seed))
                    for name, offset in (("retrain", 0), ("retrain_floor", FLOOR_SEED))
                    for seed in range(1 + offset, n + 1 + offset)]

        # The first two sets' retrains need no original, so workers start on them while it trains;
        # later sets queue behind the earlier sets' methods, so sets finish (and are written) in turn.
        early = list(stages)[:2]
        for label in early:
            pending += retrains(label)
        orig = original.result()
        bar.update(1)
        reference = orig["reference"]
        log(f"{key}: original {orig['train_seconds']:.1f} s; reference AUC {reference['mia_auc']:.3f}, retrain "
            f"{reference.get('retrain_seconds', float('nan')):.1f} s")
        info = {"config": key, "model": cfg.model, "train_seconds": orig["train_seconds"], "n": n,
                "seed": args.epsilon_seed, "jobs": args.jobs,
                "auto_min_exact_seconds": getattr(args, "auto_min_exact_seconds", None),
                "floor_B": epsilon_ceiling(n), "reference": {k: v for k, v in reference.items()
                                                              if k != "utility_runs"}}
        if kinds:
            info["interim"] = {"kinds": list(kinds), "noise": list(noises),
                               "budget_s": interim.budget_s(spec.name, reference)}
        rule = escalation(spec.name, args)
        for label in stages:
            pending += [] if label in early else retrains(label)
            # auto first: with its exact fallbacks it holds the longest runs
            pending += [(label, "auto", pool.submit(tasks.auto_task, label, seed, orig, rule))
                        for seed in range(AUTO_SEED + 1, AUTO_SEED + n + 1)]
            pending += [(label, name, pool.submit(tasks.method_task, label, name, seed, orig))
                        for name in args.methods_eps for seed in range(1, n + 1)]
            pending += [(label, kind, pool.submit(tasks.interim_task, label, kind, seed, orig, noises))
                        for kind in kinds for seed in range(interim.INTERIM_SEED + 1, interim.INTERIM_SEED + n + 1)]
        left = {label: sum(p[0] == label for p in pending) for label in stages}
        # In submission order: each sample's runs keep their seed order, and sets complete in turn.
        for label, name, future in pending:
            result = future.result()
            for row, run in (result["rows"].items() if "rows" in result else ((name, result),)):
                samples[label][row].record(run)
            bar.update(1)
            left[label] -= 1
            if not left[label]:
                st = stages[label]
                n_scored = min(len(st.fs.forget), args.epsilon_examples)
                rows += [{"config": key, **r} for r in summarise(label, len(st.fs.forget), samples[label], n_scored)]
                for name_, s in samples[label].items():
                    log(f"  {label}: {name_} x{n} in {sum(s.seconds):.0f} s")
                md = write(args.out, key, rows, info, args, argv, time.perf_counter() - started)
    return md


def escalation(spec_name: str, args):
    """The engine's escalation rule for ``auto``, with ``--auto-min-exact-seconds`` applied (or None)."""
    if getattr(args, "auto_min_exact_seconds", None) is None:
        return None
    import dataclasses

    from app.ml.policy import DEFAULT_ESCALATION, FALLBACK_ESCALATION

    rule = DEFAULT_ESCALATION.get(spec_name, FALLBACK_ESCALATION)
    return dataclasses.replace(rule, min_exact_seconds=args.auto_min_exact_seconds)


def rate(fp: dict) -> str:
    return fmt(fp["rate"]) if fp["passed"] else "n/a: the gate passed none"


def table(rows: list[dict], cols: list[str]) -> str:
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    return "\n".join(lines + ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows])


def targets(rows: list[dict]) -> list[str]:
    out = []
    for r in rows:
        if r["method"] != "auto":
            continue
        share_ok = r["share_of_floor"] >= TARGET_SHARE
        test_ok = abs(r["d_test_acc"]) <= TARGET_TEST_POINTS
        retain_ok = r["d_retain_acc"] <= 0.01
        out.append(f"- {r['forget_set']}: F {r['F']:.3f} = {r['share_of_floor']:.2f} x floor "
                   f"({'MET' if share_ok else 'MISSED'} >= {TARGET_SHARE}); test acc {100 * r['d_test_acc']:+.2f} "
                   f"points vs retrain ({'MET' if test_ok else 'MISSED'} within 0.5); retain acc "
                   f"{100 * r['d_retain_acc']:+.2f} points ({'MET' if retain_ok else 'MISSED'} <= +1); speed-up "
                   f"{r['speedup']:.1f}x wall, {fmt(r.get('cpu_speedup'))}x CPU; served {r['served']}")
    return out


def write(out: Path, key: str, rows: list[dict], info: dict, args, argv: list[str], elapsed: float) -> str:
    out.mkdir(parents=True, exist_ok=True)
    base = out / stem(key)
    fp, fq = false_pass(rows), false_pass(rows, "quick_passed")
    cols = ["forget_set", "method", "F", "floor", "share_of_floor", "final_score", "speedup", "cpu_speedup", "seconds",
            "retain_acc", "d_retain_acc", "test_acc", "d_test_acc", "forget_acc", "gate_passed", "quick_passed", "gate_runs",
            "peaky", "shift"]
    md = [f"# Unlearning benchmark, competition metric (epsilon mode): `{key}`", "",
          f"Command: `python bench/unlearning.py {' '.join(argv)}`  ",
          f"Machine: {machine()}; device {args.device}; {info.get('jobs', 1)} worker process(es) of one torch "
          f"thread each. Wall time {elapsed / 60:.1f} min.", "",
          f"N = {args.epsilon} models per side (B = ceil(ln(N-1)) = {info['floor_B']:.0f}); forget examples scored "
          f"per set: at most {args.epsilon_examples}. F: mean points over forget examples (1 = indistinguishable "
          "from retraining at this N); floor: F of a second, independent set of N retrains against the first, the "
          "best any method can expect; share = F / floor; final score = F x retain-acc ratio x test-acc ratio; "
          "speed-up: mean retrain time / mean method time measured in this run (auto: incl. verification and "
          "escalations); cpu_speedup: the same by process CPU time, robust to other load on shared cores; gate: "
          "runs the gate passed.", "",
          f"Original (seed {info.get('seed', 0)}) trained in {info['train_seconds']:.1f} s; {info['model']}. "
          "Reference (calibrate_reference, "
          f"3 single-subject retrains): retrain {fmt(info['reference'].get('retrain_seconds'))} s, forget-set "
          f"shift of a retrain from the original {fmt(info['reference'].get('retrain_shift'))} (column `shift`: "
          "the candidate's, as the gate measures it).", "",
          "## Per method", "", table(rows, cols), "",
          "## Targets (auto)", "", *targets(rows), "",
          "## Gate false-pass rate (issue 10 section 5)", "",
          f"Approximate candidates the gate passed: {fp['passed']}; of them with their method's F below half "
          f"the floor: {fp['false_pass']} (false-pass rate {rate(fp)}); target < 0.05.  ",
          f"Without the audit admission (`audited_f`, app/ml/policy.py AUDITED_F_SHARE; column `quick_passed`): "
          f"{fq['passed']} passed, {fq['false_pass']} of them below half the floor (rate {rate(fq)}).", ""]
    served = [f"- {r['forget_set']}: {r['served']}; {'; '.join(r.get('decisions') or [])}" for r in rows
              if r["method"] == "auto"]
    md += ["## What auto served", "", *served, ""]
    md += interim_section(rows, info)
    text = "\n".join(md)
    base.with_suffix(".md").write_text(text)
    with base.with_suffix(".csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    base.with_suffix(".json").write_text(json.dumps(
        {"argv": argv, "info": info, "rows": rows, "false_pass": fp, "false_pass_quick_only": fq, "elapsed_s": elapsed, "machine": machine()},
        indent=1, default=lambda v: None if isinstance(v, float) and not math.isfinite(v) else str(v)))
    plot(rows, base.with_suffix(".png"), key)
    return text


def interim_section(rows: list[dict], info: dict) -> list[str]:
    """The interim rows beside retrain and the methods (``--interim``), or nothing."""
    if "interim" not in info:
        return []
    spec = info["interim"]
    return ["## Interim forget of a scheduled model (issue 16)", "",
            f"Interims {', '.join(spec['kinds'])}, run by the worker's own functions (`workers/interim.py`, see "
            f"`bench/unlearning_parts/interim.py`); auto's budget {fmt(spec['budget_s'])} s (approx_budget_share x the "
            "expected exact cost). Weight noise (relative, non-zero weights only, after the product's step and its "
            f"gate) for the `+noise` rows: {', '.join(f'{x:g}' for x in spec['noise']) or 'none'}. `forget_acc`: "
            "accuracy on every forget example, against the retrains' (`retrain_forget_acc`); `cleared`: runs whose "
            "subjects' own parameters were cleared (`ModelSpec.subject_params_cleared`); `stranger_gap`: largest "
            "|logit| difference, over the first 200 forget examples, between the example and the same item for a "
            "never-seen id (0: scored like a stranger); `cpu_seconds`: per run, the interim's verification included.", "",
            table(rows, INTERIM_COLS), "", "What the interims tried (`(fail)`: the product's gate refused it):", "",
            *(f"- {r['forget_set']}, {r['method']}: {'; '.join(r.get('decisions') or [])}" for r in rows
              if r["method"] in {f"interim {k}" for k in spec["kinds"]}), ""]


def plot(rows: list[dict], path: Path, key: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(dict.fromkeys(r["forget_set"] for r in rows))
    if not sets:
        return
    fig, axes = plt.subplots(1, len(sets), figsize=(5.2 * len(sets), 4.4), squeeze=False)
    methods = sorted({r["method"] for r in rows})
    colors = {m: plt.cm.tab10(i % 10) for i, m in enumerate(methods)}
    for ax, label in zip(axes[0], sets):
        sub = [r for r in rows if r["forget_set"] == label]
        floor = sub[0]["floor"]
        for r in sub:
            if r["method"].startswith("retrain"):
                continue
            ax.scatter(r["speedup"], r["F"], color=colors[r["method"]], s=60 if r["method"] == "auto" else 34,
                       marker="*" if r["method"] == "auto" else "o", label=r["method"])
            ax.annotate(r["method"], (r["speedup"], r["F"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.axhline(floor, color="black", linewidth=1, label="floor (retrain vs retrain)")
        ax.axhline(TARGET_SHARE * floor, color="black", linestyle="--", linewidth=0.8, label="0.8 x floor")
        ax.axvline(1.0, color="grey", linestyle=":", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("speed-up vs retrain (log)")
        ax.set_ylabel("F (competition forget quality)")
        ax.set_title(f"{key}: {label}", fontsize=9)
        ax.set_ylim(bottom=0)
    handles, labels = axes[0][0].get_legend_handles_labels()
    axes[0][-1].legend(dict(zip(labels, handles)).values(), dict(zip(labels, handles)).keys(), fontsize=7,
                       loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
