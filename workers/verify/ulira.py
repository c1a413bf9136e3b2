"""U-LiRA-style per-example likelihood-ratio attack on an unlearning method (audit mode).

Reference: Hayes, Shumailov, Triantafillou, Khalifa, Papernot, "Inexact unlearning needs more
careful evaluations to avoid a false sense of privacy" (2024), section 4 (U-LiRA), which adapts
LiRA (Carlini et al., S&P 2022) to unlearning; DESIGN.md section 4, audit mode.

Input as for ``workers.verify.epsilon``: ``[N models, n examples]`` outputs (logit-scaled
confidence) of N unlearned and N retrained runs. The models of each kind are split at random into
shadow and target halves. Per forget example, a Gaussian is fitted to the shadow unlearned outputs
and one to the shadow retrained outputs; each target output is scored by the log likelihood ratio
log N(x; unlearned) - log N(x; retrained). A method that forgot leaves the two Gaussians equal and
the attack at chance (AUC 0.5). Scores are pooled over all examples and targets for the AUC and
the TPR at low FPR, so the test is per example (each example has its own pair of Gaussians) but
the statistic is set-level. Unlike the competition's eps this attack never abstains, so it does
not need hundreds of models to say something, and a global threshold's blindness to per-example
offsets (the paper's point) does not apply.

Deviations: the paper trains shadow models on random splits and unlearns each; here the caller
supplies the runs and the split is over them. Standard deviations use ddof = 1 and a floor
(``MIN_STD``) so that a deterministic method gives a finite, maximal, ratio.
"""

from __future__ import annotations

import numpy as np

from workers.verify.mia import auc_lower_is_member

MIN_STD = 1e-6  # keeps log N(x) finite for a deterministic method; far below any seed spread
FPR_LEVELS = (0.01, 0.05)  # the low-FPR operating points DESIGN.md section 4 reports


def _log_normal(x: np.ndarray, mu: np.ndarray, sd: np.ndarray) -> np.ndarray:
    return -0.5 * ((x - mu) / sd) ** 2 - np.log(sd)


def tpr_at_fpr(pos: np.ndarray, neg: np.ndarray, fpr: float) -> float:
    """Share of ``pos`` strictly above the threshold that at most ``fpr`` of ``neg`` exceed."""
    neg = np.sort(np.ravel(neg))[::-1]
    allowed = int(np.floor(fpr * len(neg)))
    threshold = neg[allowed] if allowed < len(neg) else -np.inf
    return float(np.mean(np.ravel(pos) > threshold))


def ulira(
    unlearned: np.ndarray,
    retrained: np.ndarray,
    *,
    seed: int = 0,
    fpr_levels: tuple[float, ...] = FPR_LEVELS,
) -> dict:
    """``auc``, ``tpr_at_fpr`` {level: tpr}, ``balanced_accuracy`` (LR > 0), per-example ``auc``."""
    u = np.asarray(unlearned, dtype=np.float64)
    r = np.asarray(retrained, dtype=np.float64)
    if u.ndim != 2 or u.shape != r.shape or u.shape[0] < 4:
        raise ValueError(f"need two [N >= 4, n_examples] arrays of one shape: {u.shape}, {r.shape}")
    rng = np.random.default_rng(seed)
    half = u.shape[0] // 2
    u, r = u[rng.permutation(len(u))], r[rng.permutation(len(r))]
    shadow_u, target_u, shadow_r, target_r = u[:half], u[half:], r[:half], r[half:]

    def score(x: np.ndarray) -> np.ndarray:
        return _log_normal(
            x, shadow_u.mean(0), np.maximum(shadow_u.std(0, ddof=1), MIN_STD)
        ) - _log_normal(x, shadow_r.mean(0), np.maximum(shadow_r.std(0, ddof=1), MIN_STD))

    pos, neg = score(target_u), score(target_r)  # [N - half, n]; "positive" = unlearned
    per_example = np.array(
        [auc_lower_is_member(-pos[:, i], -neg[:, i]) for i in range(pos.shape[1])]
    )
    return {
        "auc": auc_lower_is_member(-pos.ravel(), -neg.ravel()),
        "tpr_at_fpr": {level: tpr_at_fpr(pos, neg, level) for level in fpr_levels},
        "balanced_accuracy": float((np.mean(pos > 0) + np.mean(neg <= 0)) / 2),
        "per_example_auc": per_example,
        "n_shadow": half,
        "n_target": u.shape[0] - half,
    }
