"""Loss distributions for the verification report: what the console's job page plots.

A membership-inference gate reduces two loss distributions (forget set vs held-out subjects, or
the subjects' trained vs never-trained samples) to one AUC. The operator is better served by the
distributions themselves, before and after unlearning: a remembered forget set sits left of the
held-out curve, an unlearned one on top of it, an over-forgotten one to its right. Kept compact:
one fixed-bin histogram per population and model on shared log10-loss edges (a few dozen numbers).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from workers.verify.mia import auc_lower_is_member

BINS = 24
# Losses of memorised samples reach 1e-6 and below; clipping there keeps them in the first bin
# instead of stretching the axis over empty decades.
FLOOR = 1e-6


def _log_loss(loss: np.ndarray) -> np.ndarray:
    return np.log10(np.maximum(np.asarray(loss, dtype=float), FLOOR))


def loss_histograms(before: dict[str, np.ndarray], after: dict[str, np.ndarray], bins: int = BINS) -> dict[str, Any]:
    """Histograms of per-sample loss per population (``forget``, ``holdout``, ``forget_unseen``)
    for the model before and after unlearning, on one set of edges (log10 loss, 1st to 99th
    percentile of everything, outliers counted in the end bins), plus each model's forget vs
    held-out AUC (and forget vs never-trained, ``within_auc``). Empty populations are left out."""
    pools = [_log_loss(v) for side in (before, after) for v in side.values() if len(v)]
    if not pools:
        return {}
    pooled = np.concatenate(pools)
    lo, hi = float(np.percentile(pooled, 1)), float(np.percentile(pooled, 99))
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)

    def counts(loss: np.ndarray) -> list[int]:
        return np.histogram(np.clip(_log_loss(loss), lo, hi), bins=edges)[0].astype(int).tolist()

    def side(values: dict[str, np.ndarray]) -> dict[str, Any]:
        out: dict[str, Any] = {name: counts(v) for name, v in values.items() if len(v)}
        if len(values.get("forget", ())) and len(values.get("holdout", ())):
            out["auc"] = round(float(auc_lower_is_member(values["forget"], values["holdout"])), 4)
        if len(values.get("forget", ())) and len(values.get("forget_unseen", ())):
            out["within_auc"] = round(float(auc_lower_is_member(values["forget"], values["forget_unseen"])), 4)
        return out

    return {"scale": "log10_loss", "edges": [round(float(e), 4) for e in edges],
            "before": side(before), "after": side(after)}
