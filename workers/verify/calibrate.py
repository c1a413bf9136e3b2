"""Reference MIA figures from exact retrains, measured once at model registration.

DESIGN.md section 4: "AUC_reference comes from an exactly retrained model measured at
registration on comparable random forget sets". For ``n_sets`` random sets of
``subjects_per_set`` training subjects, a model is trained from scratch without them (the
``retrain`` recipe; for a SISA model, a whole SISA ensemble with its shards, slices and recipe, as
its exact erasures serve) and the loss-threshold AUC of their samples against held-out subjects
(Yeom et al., CSF 2018; the same signal and class-mix matching as the gate) and their accuracy
are measured. Given the served model, the same sets are measured on it too: the "remembered"
level a candidate must clearly fall below. The result is the ``reference`` dict that
``verify_candidate`` reads (``mia_auc``, ``forget_acc``, and the utility a model without the
subjects reaches: ``retain_acc`` / ``test_acc`` with their seed-to-seed spread), stored in
``Model.config["reference"]``.

Utility is re-calibrated as erasures accumulate (``absorb_exact``): every exact candidate that
serves is one more draw of "a model trained without these people" on today's data, so the
utility bar approximate candidates face follows the data instead of the serving version.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from app.ml.sisa import is_sisa, retrain_sisa
from app.ml.spec import Example, ModelSpec
from app.ml.train import evaluate, per_example_loss, predict_logits, train_from_scratch
from workers.verify.mia import logit_confidence, loss_auc
from workers.verify.report import match_class_mix

# Caps per measurement, as in the gate (``Gates.max_holdout`` / ``max_retain`` / ``max_test``).
MAX_HOLDOUT = 5000
MAX_RETAIN = 3000
MAX_TEST = 5000
# Exact runs kept for the utility reference: enough for a spread, recent enough to follow the data.
UTILITY_RUNS = 8


def _measure(
    spec: ModelSpec, model: nn.Module, meta: dict[str, Any], forget: list[Example], holdout: list[Example], device
) -> tuple[float, float]:
    auc, _ = loss_auc(
        per_example_loss(spec, model, meta, forget, device=device),
        per_example_loss(spec, model, meta, holdout, device=device),
        n_boot=0,
    )
    return auc, evaluate(spec, model, meta, forget, device=device)


def conf(spec: ModelSpec, model: nn.Module, meta: dict[str, Any], examples: list[Example], device) -> np.ndarray:
    """Logit-scaled confidence of the true label (the competition metric's signal) per example."""
    logits = predict_logits(spec, model, meta, [e.features for e in examples], device=device)
    return logit_confidence(logits, torch.tensor([e.label for e in examples], dtype=torch.long))


def _summary(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def calibrate_reference(
    spec: ModelSpec,
    examples: list[Example],
    *,
    device: torch.device | str,
    n_sets: int = 3,
    subjects_per_set: int = 1,
    seed: int = 0,
    model: nn.Module | None = None,
    meta: dict[str, Any] | None = None,
    progress: Callable[[float], None] | None = None,
) -> dict[str, Any]:
    """Mean (and spread) of retrained models' forget-set AUC and accuracy on random subject sets.

    Retrains use the spec's recipe and ``seed`` (the seed ``retrain`` uses), so only the forget
    set varies. JSON-able; ``remembered_auc`` / ``remembered_forget_acc`` only when ``model``
    and ``meta`` (the served model) are given.
    """
    if n_sets < 1 or subjects_per_set < 1:
        raise ValueError("n_sets and subjects_per_set must be >= 1")
    start = time.perf_counter()
    train_subjects = sorted({e.subject_id for e in examples if e.split == "train"})
    if len(train_subjects) <= subjects_per_set:
        raise ValueError(f"{len(train_subjects)} training subjects: too few for sets of {subjects_per_set}")
    holdout_all = [e for e in examples if e.split == "holdout"]
    if not holdout_all:
        raise ValueError("no held-out subjects to measure against")
    rng = np.random.default_rng(seed)
    test_all = [e for e in examples if e.split == "test"]
    test = [test_all[i] for i in sorted(rng.choice(len(test_all), min(MAX_TEST, len(test_all)), replace=False))]
    aucs, accs, remembered, remembered_acc, runs, seconds, shifts = [], [], [], [], [], [], []
    for i in range(n_sets):
        chosen = set(rng.choice(train_subjects, subjects_per_set, replace=False).tolist())
        forget = [e for e in examples if e.split == "train" and e.subject_id in chosen]
        kept = [e for e in examples if not (e.split == "train" and e.subject_id in chosen)]
        holdout = match_class_mix(forget, holdout_all, MAX_HOLDOUT, rng)
        trained_at = time.perf_counter()
        retrained, retrained_meta = _exact_retrain(spec, kept, meta, device=device, seed=seed)
        seconds.append(time.perf_counter() - trained_at)
        auc, acc = _measure(spec, retrained, retrained_meta, forget, holdout, device)
        aucs.append(auc)
        accs.append(acc)
        retain = [e for e in kept if e.split == "train"]
        retain = [retain[j] for j in sorted(rng.choice(len(retain), min(MAX_RETAIN, len(retain)), replace=False))]
        runs.append({"retain_acc": evaluate(spec, retrained, retrained_meta, retain, device=device),
                     "test_acc": evaluate(spec, retrained, retrained_meta, test, device=device) if test else None})
        if model is not None and meta is not None:
            shifts.append(float(np.mean(np.abs(conf(spec, retrained, retrained_meta, forget, device)
                                               - conf(spec, model, meta, forget, device)))))
            auc, acc = _measure(spec, model, meta, forget, holdout, device)
            remembered.append(auc)
            remembered_acc.append(acc)
        if progress is not None:
            progress((i + 1) / n_sets)
    mia_auc, mia_sd = _summary(aucs)
    forget_acc, forget_sd = _summary(accs)
    out: dict[str, Any] = {
        "mia_auc": mia_auc, "mia_auc_sd": mia_sd, "forget_acc": forget_acc, "forget_acc_sd": forget_sd,
        "n_sets": n_sets, "subjects_per_set": subjects_per_set, "utility_runs": runs,
        # What an exact retrain costs on this device: ``engine.forget`` weighs approximate attempts
        # against it (an ``auto`` erasure must never cost more than its exact fallback).
        "retrain_seconds": float(np.mean(seconds)),
        # Each retrain's own seconds: the scheduler's lead plans a model's first exact jobs from
        # these measurements (``schedule.planning_history_s``) instead of a blind 2x guess.
        "retrain_seconds_runs": [round(float(s), 3) for s in seconds],
    }
    out.update(_utility(runs))
    if shifts:
        # Mean |change| of the forget samples' logit-scaled confidence from the served model to a
        # retrain: the gate's "moved like a retrain" bar (``Gates.min_shift_ratio``).
        out["retrain_shift"] = float(np.mean(shifts))
    if remembered:
        out["remembered_auc"], out["remembered_auc_sd"] = _summary(remembered)
        out["remembered_forget_acc"] = _summary(remembered_acc)[0]
    out["seconds"] = time.perf_counter() - start
    return out


def _exact_retrain(spec: ModelSpec, kept: list[Example], meta: dict[str, Any] | None, *, device, seed: int):
    """What this model's exact path trains: a SISA ensemble with the served layout's shards, slices
    and recipe for a SISA model (its erasures serve ensembles, whose accuracy differs from one
    network's: a single-model reference would flag every SISA erasure as a utility regression), else
    one network with the spec's recipe."""
    if meta is not None and is_sisa(meta):
        with tempfile.TemporaryDirectory(prefix="lethe-calibrate-sisa-") as tmp:
            return retrain_sisa(spec, meta, kept, device=device, out_dir=tmp)  # weights stay in memory
    return train_from_scratch(spec, kept, device=device, seed=seed)


def _utility(runs: list[dict[str, Any]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name in ("retain_acc", "test_acc"):
        values = [r[name] for r in runs if r.get(name) is not None]
        if values:
            out[name], out[f"{name}_sd"] = _summary(values)
    return out


def absorb_exact(reference: dict[str, Any] | None, *, retain_acc: float | None, test_acc: float | None,
                 seconds: float | None = None) -> dict[str, Any]:
    """The reference after an exact candidate served: its utility joins the last ``UTILITY_RUNS``
    exact runs (calibration retrains first), and the utility mean and spread are re-computed.
    ``seconds`` (the exact method's run time) becomes the expected retrain time ``auto`` budgets
    against, so the budget follows the data and the device."""
    ref = dict(reference or {})
    runs = [*ref.get("utility_runs", []), {"retain_acc": retain_acc, "test_acc": test_acc}][-UTILITY_RUNS:]
    ref["utility_runs"] = runs
    ref.update(_utility(runs))
    if seconds is not None and seconds > 0:
        ref["retrain_seconds"] = float(seconds)
    return ref
