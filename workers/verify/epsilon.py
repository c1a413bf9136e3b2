"""Audit-mode forgetting score of the NeurIPS 2023 Machine Unlearning competition (numpy only).

Reference: google-deepmind/unlearning_evaluation, commit ffae0ff ("Open-sourcing A: unlearning
competition evaluation code"), ``metric.py`` (the score) and ``main.py`` (the utility adjustment);
the write-up is Triantafillou et al., "Are we making progress in unlearning? Findings from the first
NeurIPS unlearning competition" (arXiv 2406.09073). DESIGN.md section 4, audit mode. This is a
re-implementation in numpy, not a copy; the logic and constants are theirs.

For each forget example, N unlearned and N retrained models (same original, different seeds) each
give one output (the competition used the logit-scaled confidence, ``logit_scaled_confidence``).
The two samples of N values are attacked:

* the class with the larger median is "positive" (``metric.py`` 314-321, strict ``>``, so ties make
  the unlearned sample positive);
* "peaky" guard (``metric.py`` 184-200): if (smaller range) / (larger range) < ``PEAKY_RATIO`` the
  example gets ``EPSILON_CAP`` at once. A deterministic unlearner (range 0) against randomised
  retrains therefore scores 0 for every example. When both ranges are 0, ``0/0`` is NaN in the
  original, the comparison is false and the attacks run; we keep that;
* single threshold (``metric.py`` 132-162): ``ceil(range(all) * 100)`` thresholds evenly over
  [min, max] of both samples pooled; predict positive when ``x >= t``;
* double threshold (``metric.py`` 64-129): the sample with the smaller range (ties: the
  median-negative one) is the "peaky" class, ``width`` = its range, ``BUFFER`` = 2. Right
  thresholds: ``ceil((max_ - min_) * 100)`` evenly over [min + width - 2, max + 2] of the peaky
  sample; for each, ``ceil(2 * 2 * 100)`` = 400 left thresholds over [r - width - 2, r - width + 2];
  predict peaky when ``l <= x <= r``;
* per threshold (``metric.py`` 223-269): FPR = FNR = 0 (perfect separation) gives eps = inf;
  otherwise a threshold with FPR = 0 or FNR = 0 is discarded ("insufficient samples"); the rest
  give ``max(log(1 - delta - FPR) - log(FNR), log(1 - delta - FNR) - log(FPR))`` with
  ``DELTA`` = 1e-5, a NaN term (log of a negative) ignored, clipped below at 0. The example's eps
  is the max over surviving thresholds of both rules, clipped to [0, ``EPSILON_CAP``]
  (``metric.py`` 287, 300);
* points (``metric.py`` 324-348): ceiling B = ``ceil(ln(N - 1))``; bins of width ``BIN_WIDTH`` =
  0.5 over [0, B), i.e. 2B bins; eps in bin k (``floor(eps / 0.5)``) scores ``2 ** -k``, eps >= B
  scores 0. Because rates are multiples of 1/N, the largest finite eps is
  ``ln(N - 1 - N * delta) < ln(N - 1) <= B``, so in practice only perfect separation and the peaky
  guard score 0;
* F = mean points over forget examples; final score (``main.py`` 292-337) =
  ``F * (mean RA_unlearned / mean RA_retrained) * (mean TA_unlearned / mean TA_retrained)``, means
  over the N models, ratios not clipped (an unlearner above the retrains gets a ratio > 1).

Deviations, all deliberate:

* the published ``metric.py`` line 285 asserts ``thr_eps`` on a numpy array, which raises
  ``ValueError`` whenever more than one threshold survives, i.e. almost always; the intent (some
  threshold survived) is what we implement. When none survives (both samples the same point mass)
  the original would stop; we give eps = 0 (indistinguishable) and count it in
  ``counts["no_threshold"]``;
* rates are computed from sorted samples and ``searchsorted`` (the same ``<=`` / ``>=`` rules)
  instead of an [N, thresholds] comparison on the GPU, and in float64 throughout. The original
  builds the single-threshold grid with ``torch.linspace`` in float32 and the rates in float32;
  that moves thresholds by about 1e-7 relative and eps by about 1e-6, which changes a score only if
  a sample sits on a threshold or an eps on a bin edge;
* both arrays must have the same shape (the original takes N from the unlearned array and relies on
  broadcasting), and N >= 2 (N = 2 gives B = 0, so F = 0 whatever the method).
"""

from __future__ import annotations

import math

import numpy as np

DELTA = 1e-5  # metric.py:24
EPSILON_CAP = 50.0  # metric.py:25; also the eps given by the peaky guard
NUM_THRESHOLDS_PER_UNIT = 100  # metric.py:26; threshold density per unit of output
BUFFER = 2.0  # metric.py:77; margin of the double-threshold search
PEAKY_RATIO = 0.01  # metric.py:188; range ratio below which the peaky guard fires
BIN_WIDTH = 0.5  # metric.py:331; points halve every half unit of eps


def logit_scaled_confidence(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """``log p(y) - log(1 - p(y))`` per row, as ``metric.py`` 29-61 (the 1e-45 guard included)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)  # the original subtracts in place, mutating its input
    probs = np.exp(z)
    probs /= probs.sum(axis=1, keepdims=True)
    rows = np.arange(len(z))
    correct = probs[rows, targets].copy()
    probs[rows, targets] = 0.0
    return np.log(correct + 1e-45) - np.log(probs.sum(axis=1) + 1e-45)


def epsilon_ceiling(n_models: int) -> float:
    """B = ``ceil(ln(N - 1))``: eps at or above it scores 0 (``metric.py`` 327)."""
    return float(math.ceil(math.log(n_models - 1))) if n_models > 1 else 0.0


def points(eps: np.ndarray, n_models: int) -> np.ndarray:
    """``2 ** -floor(eps / 0.5)`` below B, 0 at or above it."""
    e = np.asarray(eps, dtype=np.float64)
    below = e < epsilon_ceiling(n_models)
    k = np.floor(np.where(below, e, 0.0) / BIN_WIDTH)
    return np.where(below, 2.0**-k, 0.0)


def _in_band(sorted_x: np.ndarray, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """How many of ``sorted_x`` satisfy ``left <= x <= right``, per (left, right)."""
    count = np.searchsorted(sorted_x, right, "right") - np.searchsorted(sorted_x, left, "left")
    return np.maximum(count, 0)


def _single_threshold_rates(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, FNR) of "positive iff x >= t" over the original's grid."""
    pooled = np.concatenate([pos, neg])
    lo, hi = pooled.min(), pooled.max()
    grid = np.linspace(lo, hi, int(math.ceil((hi - lo) * NUM_THRESHOLDS_PER_UNIT)))
    n = len(pos)
    fnr = np.searchsorted(np.sort(pos), grid, "left") / n
    fpr = (n - np.searchsorted(np.sort(neg), grid, "left")) / n
    return fpr, fnr


def _double_threshold_rates(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, FNR) of "peaky class iff l <= x <= r" over the original's grid."""
    pos_range, neg_range = np.ptp(pos), np.ptp(neg)
    if pos_range >= neg_range:  # the original's "positive" here is the peakier sample
        pos, neg = neg, pos
    width = min(pos_range, neg_range)
    lo = pos.min() + width - BUFFER
    hi = pos.max() + BUFFER
    right = np.linspace(lo, hi, int(math.ceil((hi - lo) * NUM_THRESHOLDS_PER_UNIT)))
    n_left = int(math.ceil(2 * BUFFER * NUM_THRESHOLDS_PER_UNIT))
    left = np.linspace(right - width - BUFFER, right - width + BUFFER, n_left, axis=1)
    right = np.broadcast_to(right[:, None], left.shape)
    n = len(pos)
    fnr = 1.0 - _in_band(np.sort(pos), left, right).ravel() / n
    fpr = _in_band(np.sort(neg), left, right).ravel() / n
    return fpr, fnr


def _epsilon_from_rates(fpr: np.ndarray, fnr: np.ndarray, delta: float) -> float | None:
    """Max eps over thresholds (inf on perfect separation), or None if every one was discarded."""
    if np.any((fpr == 0) & (fnr == 0)):
        return math.inf
    keep = (fpr > 0) & (fnr > 0)
    fpr, fnr = fpr[keep], fnr[keep]
    with np.errstate(divide="ignore", invalid="ignore"):
        eps = np.fmax(np.log(1 - delta - fpr) - np.log(fnr), np.log(1 - delta - fnr) - np.log(fpr))
    eps = eps[~np.isnan(eps)]  # both terms NaN (FPR = FNR = 1): discarded as in the original
    return float(max(eps.max(), 0.0)) if len(eps) else None


def example_epsilon(pos: np.ndarray, neg: np.ndarray, *, delta: float = DELTA) -> tuple[float, str]:
    """``(eps, how)`` for one forget example; ``how`` is "attack", "peaky" or "no_threshold"."""
    pos_range, neg_range = np.ptp(pos), np.ptp(neg)
    largest, smallest = max(pos_range, neg_range), min(pos_range, neg_range)
    if largest > 0 and smallest / largest < PEAKY_RATIO:
        return EPSILON_CAP, "peaky"
    eps = [
        _epsilon_from_rates(*rule(pos, neg), delta)
        for rule in (_double_threshold_rates, _single_threshold_rates)
    ]
    valid = [e for e in eps if e is not None]
    if not valid:
        return 0.0, "no_threshold"
    return min(max(valid), EPSILON_CAP), "attack"


def forget_quality(unlearned: np.ndarray, retrained: np.ndarray) -> dict:
    """F of the competition: arrays ``[N models, n examples]`` of one output per model and example.

    Returns ``F``, per-example ``epsilon`` and ``points``, ``n_models``, ``n_examples``, the
    ceiling ``epsilon_ceiling`` (B), ``n_bins`` (2B) and ``counts``: examples per bin
    (``per_bin``), scored 0 (``zero``), stopped by the peaky guard (``peaky``), perfectly separated
    (``separated``, eps = cap from inf) and with no surviving threshold (``no_threshold``).
    """
    u = np.asarray(unlearned, dtype=np.float64)
    r = np.asarray(retrained, dtype=np.float64)
    if u.ndim != 2 or u.shape != r.shape:
        raise ValueError(f"need two [N, n_examples] arrays of one shape, got {u.shape}, {r.shape}")
    n_models, n_examples = u.shape
    if n_models < 2 or n_examples < 1:
        raise ValueError("need at least 2 models and 1 forget example")
    retrained_positive = np.median(r, axis=0) > np.median(u, axis=0)
    eps = np.empty(n_examples)
    how = []
    for i in range(n_examples):
        pos, neg = (r[:, i], u[:, i]) if retrained_positive[i] else (u[:, i], r[:, i])
        eps[i], kind = example_epsilon(pos, neg)
        how.append(kind)
    pts = points(eps, n_models)
    ceiling = epsilon_ceiling(n_models)
    n_bins = int(round(ceiling / BIN_WIDTH))
    in_range = eps < ceiling
    per_bin = np.bincount(np.floor(eps[in_range] / BIN_WIDTH).astype(int), minlength=n_bins)
    return {
        "F": float(pts.mean()),
        "epsilon": eps,
        "points": pts,
        "n_models": n_models,
        "n_examples": n_examples,
        "epsilon_ceiling": ceiling,
        "n_bins": n_bins,
        "counts": {
            "per_bin": per_bin.tolist(),
            "zero": int((pts == 0).sum()),
            "peaky": how.count("peaky"),
            "separated": int(sum(k == "attack" and e == EPSILON_CAP for k, e in zip(how, eps))),
            "no_threshold": how.count("no_threshold"),
        },
    }


def final_score(
    F: float,
    retain_acc_unlearned,
    retain_acc_retrained,
    test_acc_unlearned,
    test_acc_retrained,
) -> float:
    """``F * RA ratio * TA ratio`` as ``main.py`` 337; accuracies are per-model lists or means."""
    ra = np.mean(retain_acc_unlearned) / np.mean(retain_acc_retrained)
    ta = np.mean(test_acc_unlearned) / np.mean(test_acc_retrained)
    return float(F * ra * ta)


def noise_floor(retrained_a: np.ndarray, retrained_b: np.ndarray) -> float:
    """F of one set of N retrains against an independent second set: the best any method can
    expect at this N, since an exact unlearner is itself a retrain."""
    return forget_quality(retrained_a, retrained_b)["F"]
