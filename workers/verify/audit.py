"""Audit-mode membership inference: per-example attacks with reference (shadow) models.

The quick gate (``report.py``) is a regression test: one global loss threshold. An audit asks
the stronger question of DESIGN.md section 4, "can anyone tell, example by example, that these
samples were trained on?", and answers it the way the membership-inference literature scores
attacks: true-positive rate at a low false-positive rate, not only AUC (Carlini et al.,
"Membership Inference Attacks From First Principles", S&P 2022). It is slower (it trains
``n_shadow`` models) and runs in benchmarks or on demand. Still an estimate against known attacks,
not a proof of privacy.

Reference models ("online" setting): the forget subjects and the held-out subjects are the
audited targets. For each pair of reference models the target subjects are split at random into
two halves; one model trains on the retain part of the training set plus the first half, the
other on the retain part plus the second half. Every target example is therefore IN for exactly
``n_shadow / 2`` reference models and OUT for the others, and the reference models see the same
retain data as the audited model.

Attacks, each scoring forget examples (positives) against held-out examples (negatives), with
the signal phi = log p(y) - log(1 - p(y)) (``mia.logit_confidence``):
  - ``lira``: LiRA online with a fixed (pooled) variance, which Carlini et al. recommend below
    ~64 reference models: log N(phi; mu_in, s_in) - log N(phi; mu_out, s_out) per example;
  - ``rmia``: RMIA (Zarifzadeh et al., "Low-Cost High-Power Membership Inference Attacks",
    ICML 2024) with gamma = 1: p(y|x, target) / mean_k p(y|x, reference_k); ranking the
    pairwise likelihood ratios against a population at gamma = 1 orders examples exactly as
    this ratio does, so the ROC is the same;
  - ``loss``: the global loss threshold of the quick gate, for comparison.
For an exactly retrained model the forget set is not a member: every attack should sit at
chance (AUC ~0.5, TPR at x % FPR ~x %). The competition's per-example epsilon (many unlearned
vs many retrained runs) is not computed here: it needs hundreds of runs per method.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from app.ml.spec import Example, ModelSpec, TrainRecipe
from app.ml.train import predict_logits, train_from_scratch
from workers.verify.mia import auc_lower_is_member, logit_confidence

DISCLAIMER = (
    "Audit: per-example membership inference with reference models (LiRA / RMIA), an estimate "
    "against known attacks, not a proof of privacy."
)
FPRS = (0.01, 0.05)
# Scoring caps: enough examples for a 1 % FPR to mean tens of negatives, few enough for seconds.
MAX_TARGETS = 5000
# Floor for pooled standard deviations (logit units), so identical reference outputs cannot divide by 0.
MIN_SD = 1e-3


@dataclass
class ReferenceModels:
    """Reference models trained on retain + a random half of the target subjects, and their signals."""

    targets: list[Example]  # forget examples first, then held-out examples
    n_forget: int
    inside: np.ndarray  # bool [K, N]: target j was in reference model k's training set
    conf: np.ndarray  # [K, N] logit-scaled confidence of each reference model on each target
    prob: np.ndarray  # [K, N] p(y | x) of each reference model
    seconds: float = 0.0


def _cap(examples: list[Example], n: int, rng: np.random.Generator) -> list[Example]:
    if len(examples) <= n:
        return list(examples)
    return [examples[i] for i in sorted(rng.choice(len(examples), n, replace=False))]


def _signals(spec: ModelSpec, model: nn.Module, meta: dict[str, Any], examples: list[Example], device) -> dict[str, np.ndarray]:
    logits = predict_logits(spec, model, meta, [e.features for e in examples], device=device)
    labels = torch.tensor([e.label for e in examples], dtype=torch.long)
    loss = spec.loss(logits, labels, reduction="none").double()
    return {"conf": logit_confidence(logits, labels), "prob": torch.exp(-loss).numpy(), "loss": loss.numpy()}


def train_reference_models(
    spec: ModelSpec,
    *,
    forget: list[Example],
    holdout: list[Example],
    train_examples: list[Example],
    device: torch.device | str,
    n_shadow: int = 4,
    seed: int = 0,
    recipe: TrainRecipe | None = None,
    progress: Callable[[float], None] | None = None,
) -> ReferenceModels:
    """Train ``n_shadow`` (even, >= 2) reference models in pairs; see the module docstring."""
    if n_shadow < 2 or n_shadow % 2:
        raise ValueError(f"n_shadow must be even and >= 2, got {n_shadow}")
    if not forget or not holdout:
        raise ValueError("an audit needs forget and held-out examples")
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    forget_s = _cap(forget, MAX_TARGETS, rng)
    holdout_s = _cap(holdout, MAX_TARGETS, rng)
    targets = forget_s + holdout_s
    forget_subjects = {e.subject_id for e in forget}
    holdout_subjects = {e.subject_id for e in holdout}
    retain = [e for e in train_examples if e.split == "train" and e.subject_id not in forget_subjects]
    # Every example of a target subject (not only the scored ones) goes in with its subject.
    pool = [dataclasses.replace(e, split="train") for e in list(forget) + list(holdout)]
    subjects = np.array(sorted(forget_subjects | holdout_subjects))
    target_subject = np.array([e.subject_id for e in targets])
    inside, conf, prob = [], [], []
    for pair in range(n_shadow // 2):
        half = set(rng.permutation(subjects)[: len(subjects) // 2].tolist())
        for k, chosen in enumerate((half, set(subjects.tolist()) - half)):
            data = retain + [e for e in pool if e.subject_id in chosen]
            model, meta = train_from_scratch(spec, data, device=device, seed=seed * 1000 + 2 * pair + k + 1, recipe=recipe)
            sig = _signals(spec, model, meta, targets, device)
            inside.append(np.isin(target_subject, list(chosen)))
            conf.append(sig["conf"])
            prob.append(sig["prob"])
            if progress is not None:
                progress(len(inside) / n_shadow)
    return ReferenceModels(
        targets=targets, n_forget=len(forget_s), inside=np.array(inside), conf=np.array(conf), prob=np.array(prob),
        seconds=time.perf_counter() - start,
    )


def tpr_at_fpr(pos: np.ndarray, neg: np.ndarray, fpr: float) -> float:
    """Highest TPR of a threshold "member if score >= t" whose FPR on ``neg`` is at most ``fpr``."""
    thresholds = np.unique(np.concatenate([pos, neg]))
    fp = len(neg) - np.searchsorted(np.sort(neg), thresholds, side="left")
    tp = len(pos) - np.searchsorted(np.sort(pos), thresholds, side="left")
    ok = fp <= fpr * len(neg)
    return float(tp[ok].max() / len(pos)) if ok.any() else 0.0


def attack_metrics(scores: np.ndarray, n_pos: int) -> dict[str, float]:
    """AUC and TPR at each of ``FPRS``; the first ``n_pos`` scores are positives, higher = member."""
    pos, neg = scores[:n_pos], scores[n_pos:]
    out = {"auc": auc_lower_is_member(-pos, -neg)}
    for f in FPRS:
        out[f"tpr_at_{round(f * 100)}fpr"] = tpr_at_fpr(pos, neg, f)
    return out


def lira_scores(target_conf: np.ndarray, refs: ReferenceModels) -> np.ndarray:
    """Online LiRA with pooled variances: log-likelihood ratio of IN vs OUT Gaussians per example."""
    inside = refs.inside
    n_in = inside.sum(0)
    n_out = (~inside).sum(0)
    mu_in = np.where(inside, refs.conf, 0.0).sum(0) / np.maximum(n_in, 1)
    mu_out = np.where(~inside, refs.conf, 0.0).sum(0) / np.maximum(n_out, 1)
    sd_in = max(float(np.sqrt(np.mean((refs.conf - mu_in)[inside] ** 2))), MIN_SD)
    sd_out = max(float(np.sqrt(np.mean((refs.conf - mu_out)[~inside] ** 2))), MIN_SD)
    log_in = -0.5 * ((target_conf - mu_in) / sd_in) ** 2 - np.log(sd_in)
    log_out = -0.5 * ((target_conf - mu_out) / sd_out) ** 2 - np.log(sd_out)
    return log_in - log_out


def score_target(
    spec: ModelSpec, refs: ReferenceModels, *, target_model: nn.Module, meta: dict[str, Any], device: torch.device | str
) -> dict[str, Any]:
    """Run every attack against ``target_model`` with already trained reference models."""
    sig = _signals(spec, target_model, meta, refs.targets, device)
    rmia = sig["prob"] / np.maximum(refs.prob.mean(0), 1e-12)
    attacks = {
        "lira": attack_metrics(lira_scores(sig["conf"], refs), refs.n_forget),
        "rmia": attack_metrics(rmia, refs.n_forget),
        "loss": attack_metrics(-sig["loss"], refs.n_forget),
    }
    return {
        "attack": "lira", **attacks["lira"], "attacks": attacks,
        "n_shadow": int(refs.inside.shape[0]), "n_forget": refs.n_forget, "n_holdout": len(refs.targets) - refs.n_forget,
        "reference_seconds": refs.seconds, "disclaimer": DISCLAIMER,
    }


def audit_mia(
    spec: ModelSpec,
    *,
    target_model: nn.Module,
    meta: dict[str, Any],
    forget: list[Example],
    holdout: list[Example],
    train_examples: list[Example],
    device: torch.device | str,
    n_shadow: int = 4,
    seed: int = 0,
    recipe: TrainRecipe | None = None,
    references: ReferenceModels | None = None,
) -> dict[str, Any]:
    """Audit ``target_model``: per-example MIA of ``forget`` (positives) vs ``holdout`` (negatives).

    ``train_examples`` is the original training set (forget included); the reference models
    train on its retain part with ``recipe`` (default: the spec's). Pass ``references`` from
    ``train_reference_models`` to audit several candidates against the same reference models.
    Returns the LiRA figures at top level (``auc``, ``tpr_at_1fpr``, ``tpr_at_5fpr``) and every
    attack under ``attacks``.
    """
    refs = references or train_reference_models(
        spec, forget=forget, holdout=holdout, train_examples=train_examples, device=device,
        n_shadow=n_shadow, seed=seed, recipe=recipe,
    )
    return score_target(spec, refs, target_model=target_model, meta=meta, device=device)
