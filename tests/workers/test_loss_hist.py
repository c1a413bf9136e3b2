"""The verification report carries the loss distributions the console plots (before / after)."""

from __future__ import annotations

import json

import numpy as np

from workers.unlearning import get_method
from workers.unlearning.base import UnlearnContext
from workers.verify.distributions import BINS, loss_histograms
from workers.verify.report import Gates, verify_candidate

from tests.workers.conftest import FORGET_SUBJECTS


def test_report_carries_loss_histograms_before_and_after_an_exact_retrain(toy, toy_trained, toy_sets) -> None:
    model, meta = toy_trained
    ctx = UnlearnContext(spec=toy, model=model, meta=meta, forget=toy_sets["forget"], retain=toy_sets["retain"],
                         forget_subject_ids=FORGET_SUBJECTS, recipe=toy.recipe, device="cpu")
    result = get_method("retrain")(ctx)
    report = verify_candidate(
        spec=toy, candidate=result.model, meta=result.meta, forget=toy_sets["forget"], retain=toy_sets["retain"],
        test=toy_sets["test"], holdout=toy_sets["holdout"], forget_subject_ids=FORGET_SUBJECTS,
        baseline={}, reference=None, gates=Gates(), device="cpu", exact=True, method="retrain",
        original=(model, meta))
    hist = json.loads(json.dumps(report.to_dict(), allow_nan=False))["loss_hist"]
    assert hist["scale"] == "log10_loss" and len(hist["edges"]) == BINS + 1
    assert hist["edges"] == sorted(hist["edges"])
    for side in ("before", "after"):
        assert sum(hist[side]["forget"]) == report.n_forget == 40
        assert sum(hist[side]["holdout"]) == report.n_holdout
        assert "forget_unseen" not in hist[side]  # toy subjects have no never-trained samples
    # The served model memorised the forget set (toy: AUC ~0.7); the retrained one treats it
    # like held-out subjects, and its AUC is the report's own.
    assert hist["before"]["auc"] > 0.6
    assert abs(hist["after"]["auc"] - 0.5) < report.mia_margin
    assert hist["after"]["auc"] == round(report.mia_auc, 4)
    # Reference accuracies shown beside the candidate's: here the first version's bar is absent,
    # so forget is judged against held-out subjects.
    assert report.reference_acc["forget_source"] == "held-out subjects"
    assert report.reference_acc["forget"] == report.holdout_acc


def test_histograms_share_edges_and_count_outliers_in_the_end_bins() -> None:
    rng = np.random.default_rng(0)
    before = {"forget": np.full(10, 1e-9), "holdout": rng.exponential(1.0, 200)}
    after = {"forget": rng.exponential(1.0, 10), "holdout": rng.exponential(1.0, 200),
             "forget_unseen": rng.exponential(1.0, 30)}
    hist = loss_histograms(before, after, bins=8)
    assert len(hist["edges"]) == 9
    assert hist["before"]["forget"][0] == 10  # below the 1st percentile: counted in the first bin
    assert [sum(hist["after"][k]) for k in ("forget", "holdout", "forget_unseen")] == [10, 200, 30]
    assert hist["before"]["auc"] == 1.0 and "within_auc" in hist["after"]
    assert loss_histograms({}, {}) == {}
