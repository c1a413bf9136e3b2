"""Audit-mode MIA on the toy spec: a memorising model is caught at low FPR, an exact retrain is not.

Bounds are loose on purpose (40 forget vs 80 held-out samples, 4 reference models): the test
guards the direction and the scale, not the third decimal.
"""

import numpy as np
import pytest

from app.ml.train import train_from_scratch
from workers.verify.audit import attack_metrics, audit_mia, score_target, tpr_at_fpr, train_reference_models


@pytest.fixture(scope="module")
def toy_train(toy_examples):
    return [e for e in toy_examples if e.split == "train"]


@pytest.fixture(scope="module")
def references(toy, toy_sets, toy_train):
    return train_reference_models(toy, forget=toy_sets["forget"], holdout=toy_sets["holdout"],
                                  train_examples=toy_train, device="cpu", n_shadow=4, seed=0)


def test_tpr_at_fpr_edges():
    pos, neg = np.array([3.0, 2.0, 0.0]), np.array([1.0, 0.5, 0.0, -1.0])
    assert tpr_at_fpr(pos, neg, 0.0) == pytest.approx(2 / 3)  # threshold 2: no negative above it
    assert tpr_at_fpr(pos, neg, 0.25) == pytest.approx(2 / 3)  # threshold 1: still 2 positives
    assert tpr_at_fpr(pos, neg, 0.75) == 1.0
    m = attack_metrics(np.r_[pos, neg], 3)
    assert set(m) == {"auc", "tpr_at_1fpr", "tpr_at_5fpr"} and 0.5 < m["auc"] <= 1.0


def test_reference_models_are_paired(references, toy_sets):
    # Every target example is IN for exactly half of the reference models.
    assert references.inside.shape == (4, len(toy_sets["forget"]) + len(toy_sets["holdout"]))
    assert (references.inside.sum(0) == 2).all()


def test_memorising_model_is_caught_at_low_fpr(toy, toy_trained, toy_sets, toy_train):
    model, meta = toy_trained
    result = audit_mia(toy, target_model=model, meta=meta, forget=toy_sets["forget"], holdout=toy_sets["holdout"],
                       train_examples=toy_train, device="cpu", n_shadow=4, seed=0)
    assert result["tpr_at_5fpr"] > 0.15 and result["tpr_at_1fpr"] > 0.05
    assert result["auc"] > 0.65
    assert {"lira", "rmia", "loss"} <= set(result["attacks"]) and result["n_shadow"] == 4
    assert "not a proof" in result["disclaimer"]


def test_exact_retrain_is_near_chance(toy, toy_sets, references):
    model, meta = train_from_scratch(toy, toy_sets["retain"], device="cpu", seed=3)
    result = score_target(toy, references, target_model=model, meta=meta, device="cpu")
    assert 0.35 < result["auc"] < 0.65
    assert result["tpr_at_5fpr"] < 0.2 and result["tpr_at_1fpr"] < 0.15


def test_rejects_odd_reference_count(toy, toy_sets, toy_train):
    with pytest.raises(ValueError, match="even"):
        train_reference_models(toy, forget=toy_sets["forget"], holdout=toy_sets["holdout"],
                               train_examples=toy_train, device="cpu", n_shadow=3)
