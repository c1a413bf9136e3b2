"""Epsilon mode's summary: per method F, floor, share, final score, speed-up and accuracies against
the retrains of the same forget set, and the gate's false-pass rate (issue 10 section 5)."""

from __future__ import annotations

from typing import Any

import numpy as np

from bench.unlearning_parts.epsilon import Sample
from workers.verify.epsilon import final_score


def summarise(label: str, n_forget: int, samples: dict[str, Sample], n_scored: int) -> list[dict[str, Any]]:
    """One row per method: F, final score, floor, share of the floor, speed-up, accuracies, gate passes."""
    ret = samples.get("retrain")
    if ret is None:
        return []
    floor_sample = samples.get("retrain_floor")
    floor = floor_sample.quality_against(ret)["F"] if floor_sample else float("nan")
    retrain_s = float(np.mean(ret.seconds))
    rows = []
    for name, s in samples.items():
        if name == "retrain":
            continue
        q = s.quality_against(ret)
        gates = [g for g in s.gate if g is not None]
        served = ({m: s.served.count(m) for m in dict.fromkeys(s.served)}
                  if name == "auto" or name.startswith("interim") else {})
        rows.append({
            "forget_set": label, "n_forget": n_forget, "n_scored": n_scored, "n_models": len(s.outputs),
            "method": "retrain (2nd set: floor)" if name == "retrain_floor" else name,
            "F": q["F"], "floor": floor, "share_of_floor": q["F"] / floor if floor else float("nan"),
            "final_score": final_score(q["F"], s.retain_acc, ret.retain_acc, s.test_acc, ret.test_acc),
            "seconds": float(np.mean(s.seconds)), "retrain_seconds": retrain_s,
            "speedup": retrain_s / float(np.mean(s.seconds)),
            "cpu_speedup": float(np.mean(ret.cpu_seconds) / np.mean(s.cpu_seconds)) if s.cpu_seconds else None,
            "cpu_seconds": float(np.mean(s.cpu_seconds)) if s.cpu_seconds else None,
            "retain_acc": float(np.mean(s.retain_acc)), "test_acc": float(np.mean(s.test_acc)),
            "forget_acc": float(np.mean(s.forget_acc)), "retrain_forget_acc": float(np.mean(ret.forget_acc)),
            "d_forget_acc": float(np.mean(s.forget_acc) - np.mean(ret.forget_acc)),
            "d_retain_acc": float(np.mean(s.retain_acc) - np.mean(ret.retain_acc)),
            "d_test_acc": float(np.mean(s.test_acc) - np.mean(ret.test_acc)),
            "gate_passed": sum(gates), "gate_runs": len(gates), "peaky": q["counts"]["peaky"],
            "quick_passed": sum(s.gate_quick) if s.gate_quick else None,
            "shift": float(np.mean(shifts)) if (shifts := [x for x in s.shift if x is not None]) else None,
            "cleared": sum(s.cleared) if s.cleared else None,
            "stranger_gap": max(s.stranger_gap) if s.stranger_gap else None,
            "served": ", ".join(f"{m} {c}" for m, c in served.items()),
            "decisions": sorted(set(s.decisions) - {""})[:4],
        })
    return rows


def false_pass(rows: list[dict[str, Any]], key: str = "gate_passed") -> dict[str, Any]:
    """Among gate-passed approximate candidates: the share whose method's F is below half the floor.

    ``key``: ``gate_passed`` (every gate) or ``quick_passed`` (every gate but the audit admission,
    i.e. what the quick tests alone would pass)."""
    passed = bad = 0
    for r in rows:
        # auto and the interims are not gated candidates of one method (an interim publishes either way)
        if (r["method"] in ("auto", "retrain (2nd set: floor)") or r["method"].startswith("interim")
                or not r["gate_runs"] or r.get(key) is None):
            continue
        passed += r[key]
        if r["F"] < 0.5 * r["floor"]:
            bad += r[key]
    return {"passed": passed, "false_pass": bad, "rate": bad / passed if passed else float("nan")}
