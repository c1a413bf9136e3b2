"""Loss-threshold membership inference signals (numpy only).

The set-level test is the AUC of the threshold attack of Yeom et al., "Privacy Risk in Machine
Learning: Analyzing the Connection to Overfitting" (CSF 2018): forget-set losses against the
losses of held-out subjects. AUC is computed from ranks (Mann-Whitney U, ties counted half) and
oriented so that "members have LOWER loss" gives AUC > 0.5; its spread comes from a bootstrap.
The per-sample signal for small sets is the logit-scaled confidence log p(y) - log(1 - p(y)) of
Carlini et al., "Membership Inference Attacks From First Principles" (S&P 2022), ranked among
same-class held-out samples (DESIGN.md section 4).
"""

from __future__ import annotations

import math

import numpy as np
import torch


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    # Start/end of each run of equal values.
    boundaries = np.flatnonzero(np.diff(xs)) + 1
    starts = np.r_[0, boundaries]
    ends = np.r_[boundaries, len(xs)]
    run_rank = (starts + ends + 1) / 2.0
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.repeat(run_rank, ends - starts)
    return ranks


def auc_lower_is_member(member: np.ndarray, nonmember: np.ndarray) -> float:
    """P(loss_nonmember > loss_member) + P(tie) / 2, by Mann-Whitney U."""
    n1, n0 = len(member), len(nonmember)
    ranks = average_ranks(np.concatenate([-member, -nonmember]))
    u = ranks[:n1].sum() - n1 * (n1 + 1) / 2.0
    return float(u / (n1 * n0))


def loss_auc(
    forget_losses: np.ndarray, holdout_losses: np.ndarray, *, n_boot: int = 200, seed: int = 0
) -> tuple[float, float]:
    """``(auc, sigma)`` of the loss-threshold attack; 0.5 = indistinguishable from held-out."""
    f = np.asarray(forget_losses, dtype=np.float64)
    h = np.asarray(holdout_losses, dtype=np.float64)
    if len(f) == 0 or len(h) == 0:
        return float("nan"), float("nan")
    auc = auc_lower_is_member(f, h)
    rng = np.random.default_rng(seed)
    boots = [
        auc_lower_is_member(f[rng.integers(0, len(f), len(f))], h[rng.integers(0, len(h), len(h))])
        for _ in range(n_boot)
    ]
    return auc, float(np.std(boots, ddof=1)) if n_boot > 1 else float("nan")


def logit_confidence(logits: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """Per sample ``log p(y) - log(1 - p(y))`` = ``z_y - logsumexp(z_others)``, computed stably."""
    logits = logits.double()
    z_y = logits.gather(1, labels.view(-1, 1)).squeeze(1)
    others = logits.scatter(1, labels.view(-1, 1), float("-inf"))
    return (z_y - torch.logsumexp(others, dim=1)).numpy()


def per_sample_rank_test(
    forget_conf: np.ndarray, forget_labels: np.ndarray, holdout_conf: np.ndarray, holdout_labels: np.ndarray
) -> tuple[float, float]:
    """``(z, mean_percentile)``: where forget samples' confidences fall among same-class held-out ones.

    Each forget sample gets its mid-percentile among held-out samples of its class (all held-out
    samples if its class has none). If the forget set looks held-out, percentiles are uniform:
    mean 0.5, standard error sqrt(1 / (12 n)); ``z`` > 0 means more confident than held-out
    (still remembered), ``z`` < 0 less (over-forgotten).
    """
    pct = []
    for c, lab in zip(np.asarray(forget_conf, dtype=np.float64), np.asarray(forget_labels)):
        pool = holdout_conf[holdout_labels == lab]
        if len(pool) == 0:
            pool = holdout_conf
        pct.append(((pool < c).sum() + 0.5 * (pool == c).sum()) / len(pool))
    n = len(pct)
    if n == 0:
        return float("nan"), float("nan")
    mean = float(np.mean(pct))
    return (mean - 0.5) / math.sqrt(1.0 / (12.0 * n)), mean
