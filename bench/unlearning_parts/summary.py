"""Summaries of the rows: means over seeds, DESIGN.md section 8 targets, chains the runs support.

``replay`` answers what the engine would have spent on a chain for one measured case, from the
per-method rows alone; ``suggest_chains`` searches chains of at most two approximate methods with
it, and ``passing_chain`` is the stricter rule ``--record-chain`` writes to a registered model.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

from bench.unlearning_parts.configs import TARGETS
from workers.unlearning import METHODS

# Approximate methods in a suggested or recorded chain: each that fails costs a run and a
# verification before the exact fallback, so more than two rarely pays for itself.
MAX_APPROXIMATE = 2


def _num(v) -> float:
    return float(v) if isinstance(v, (int, float)) and v is not None and not isinstance(v, bool) else float("nan")


def _mean(rows, key) -> float:
    vals = [_num(r.get(key)) for r in rows]
    vals = [v for v in vals if not math.isnan(v)]
    return float(np.mean(vals)) if vals else float("nan")


def fmt(v, digits=3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.{digits}f}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def _notes(rs: list[dict]) -> str:
    counts: dict[str, int] = {}
    for r in rs:
        if r.get("note"):
            counts[r["note"]] = counts.get(r["note"], 0) + 1
    return "; ".join(n if c == len(rs) else f"{n} ({c}/{len(rs)} runs)" for n, c in sorted(counts.items()))


def summarise(rows: list[dict]) -> list[dict]:
    """Mean over seeds per (config, forget set, method), in run order."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["config"], r["forget_set"], r["method"]), []).append(r)
    out = []
    for (config, label, method), rs in groups.items():
        ok = [r for r in rs if r["status"] in ("ok", "failed")]
        s = {"config": config, "forget_set": label, "method": method, "runs": len(rs),
             "status": "ok" if ok else rs[0]["status"], "n_forget": round(_mean(rs, "n_forget")),
             "passed": f"{sum(bool(r.get('gate_passed')) for r in ok)}/{len(ok)}" if ok else "",
             "note": _notes(rs)}
        if method == "auto":
            s["note"] = "; ".join(sorted({r.get("note", "").split(";")[0] for r in rs}))
        for k in ("seconds", "cpu_seconds", "speedup", "cpu_speedup", "forget_acc", "retain_acc", "test_acc", "mia_auc", "d_forget_acc",
                  "d_test_acc", "d_mia_auc", "audit_auc", "audit_tpr1", "audit_tpr5"):
            s[k] = _mean(ok, k)
        out.append(s)
    return out


def judge_targets(rows: list[dict], config: str) -> list[dict]:
    """DESIGN.md section 8 targets on ``config``'s auto rows: worst case over seeds and forget sets."""
    auto = [r for r in rows if r["config"] == config and r["method"] == "auto"]
    if not auto:
        return []
    worst = {
        "speedup": min(_num(r.get("speedup")) for r in auto),
        "cpu_speedup": min(_num(r.get("cpu_speedup")) for r in auto),
        "mia_auc": max(abs(_num(r.get("d_mia_auc"))) for r in auto),
        "test_acc": max(abs(_num(r.get("d_test_acc"))) for r in auto),
        "forget_acc": max(abs(_num(r.get("d_forget_acc"))) for r in auto),
    }
    mean = {"speedup": _mean(auto, "speedup"), "cpu_speedup": _mean(auto, "cpu_speedup")} | {
        k: float(np.mean([abs(_num(r.get(f"d_{k}"))) for r in auto])) for k in ("mia_auc", "test_acc", "forget_acc")}
    text = {
        "speedup": "time-to-forget (auto, incl. verification + escalations) <= 1/20 of retrain (wall)",
        "cpu_speedup": "same, by process CPU time (robust to other load on shared cores)",
        "mia_auc": "|MIA AUC - retrain's| <= 0.03",
        "test_acc": "|test acc - retrain's| <= 1 point",
        "forget_acc": "|forget acc - retrain's| <= 2 points",
    }
    out = []
    for k, goal in [*TARGETS.items(), ("cpu_speedup", TARGETS["speedup"])]:
        met = worst[k] >= goal if k.endswith("speedup") else worst[k] <= goal
        out.append({"config": config, "target": text[k], "goal": goal, "worst": worst[k], "mean": mean[k],
                    "runs": len(auto), "met": bool(met) and not math.isnan(worst[k])})
    return out


def _cases(rows: list[dict], spec: str) -> dict[tuple, dict[str, dict]]:
    """(config, forget set, seed) -> {method: row} for the methods run on the spec's regular original."""
    cases: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        if r["spec"] == spec and r["method"] in METHODS and not str(r.get("note") or "").startswith("on a model"):
            cases.setdefault((r["config"], r["forget_set"], r["seed"]), {})[r["method"]] = r
    return cases


def replay(case: dict[str, dict], chain: list[str]) -> tuple[float, str]:
    """What the engine would spend on ``chain`` for one case, from the measured runs: (seconds incl.
    verification, method served). A method that left the model unchanged never counts as passing."""
    total = 0.0
    for name in chain:
        r = case.get(name)
        if r is None or r["status"] != "ok":
            continue
        total += _num(r["seconds"]) + _num(r.get("verify_seconds"))
        if r.get("gate_passed") and r.get("param_change") != 0:
            return total, name
    return total, chain[-1]


def suggest_chains(rows: list[dict]) -> dict[str, list[str]]:
    """Per spec: the chain (at most ``MAX_APPROXIMATE`` approximate methods, then ``retrain``) with the least total
    replayed time-to-forget over all of the spec's runs (every config, forget set and seed)."""
    out = {}
    for spec in dict.fromkeys(r["spec"] for r in rows):
        cases = _cases(rows, spec)
        if not cases or not any("retrain" in c for c in cases.values()):
            continue
        approx = sorted({m for c in cases.values() for m, r in c.items() if not METHODS[m].exact and r["status"] == "ok"})
        if not approx:  # only exact methods ran per method (--methods retrain): nothing to choose from
            continue
        chains = [[*combo, "retrain"] for k in range(MAX_APPROXIMATE + 1) for combo in itertools.permutations(approx, k)]
        out[spec] = min(chains, key=lambda ch: (sum(replay(c, ch)[0] for c in cases.values()), len(ch)))
    return out


def replay_table(rows: list[dict], chains: dict[str, list[str]]) -> list[list[Any]]:
    """Per (config, forget set): the suggested chain replayed, mean over seeds, against retrain."""
    out = []
    for spec, chain in chains.items():
        groups: dict[tuple, list[dict]] = {}
        for (config, label, _), case in _cases(rows, spec).items():
            groups.setdefault((config, label), []).append(case)
        for (config, label), cases in groups.items():
            played = [replay(c, chain) for c in cases]
            t = float(np.mean([p[0] for p in played]))
            r = float(np.mean([_num(c["retrain"]["seconds"]) for c in cases if "retrain" in c]))
            out.append([config, label, " > ".join(chain), t, r, r / t if t else float("nan"),
                        ", ".join(sorted({p[1] for p in played}))])
    return out


def passing_chain(rows: list[dict], config: str, *, last: str = "retrain") -> list[str]:
    """The chain ``--record-chain`` writes: the approximate methods that passed the gate in every
    run of ``config`` (each forget set and seed), cheapest first by mean time-to-forget (method
    plus verification), at most ``MAX_APPROXIMATE``, then the exact ``last`` (``sisa`` for a SISA
    ensemble). A method that left the model unchanged never counts as passing; none passing
    leaves ``[last]``."""
    mine = [r for r in rows if r["config"] == config and r["method"] in METHODS]
    cases = {(r["forget_set"], r["seed"]) for r in mine}
    by_method: dict[str, list[dict]] = {}
    for r in mine:
        if not METHODS[r["method"]].exact:
            by_method.setdefault(r["method"], []).append(r)

    def passed(r: dict) -> bool:
        return r["status"] == "ok" and bool(r.get("gate_passed")) and r.get("param_change") != 0

    always = [m for m, rs in by_method.items()
              if {(r["forget_set"], r["seed"]) for r in rs if passed(r)} == cases and cases]
    cost = {m: _mean([{"t": _num(r["seconds"]) + _num(r.get("verify_seconds"))} for r in by_method[m]], "t")
            for m in always}
    return [*sorted(always, key=lambda m: (cost[m], m))[:MAX_APPROXIMATE], last]
