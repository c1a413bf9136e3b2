import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from app.ml.train import per_example_loss
from workers.verify.mia import average_ranks, logit_confidence, loss_auc, per_sample_rank_test


def test_auc_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    member, nonmember = rng.integers(0, 5, 60).astype(float), rng.integers(1, 6, 90).astype(float)
    auc, sigma = loss_auc(member, nonmember, n_boot=100)
    y = np.r_[np.ones(60), np.zeros(90)]
    assert abs(auc - roc_auc_score(y, -np.r_[member, nonmember])) < 1e-12
    assert 0.01 < sigma < 0.1
    assert average_ranks(np.array([3.0, 1.0, 3.0])).tolist() == [2.5, 1.0, 2.5]


def test_memorised_members_score_high_and_nonmembers_half(toy, toy_examples, toy_trained):
    model, meta = toy_trained
    train = [e for e in toy_examples if e.split == "train"]
    holdout = [e for e in toy_examples if e.split == "holdout"]
    loss_train = per_example_loss(toy, model, meta, train, device="cpu")
    loss_holdout = per_example_loss(toy, model, meta, holdout, device="cpu")
    auc, sigma = loss_auc(loss_train, loss_holdout)
    assert auc > 0.6 and auc - 3 * sigma > 0.5
    # Held-out vs held-out (disjoint subjects): no membership signal.
    a, b = np.array_split(np.random.default_rng(1).permutation(loss_holdout), 2)
    null_auc, null_sigma = loss_auc(a, b)
    assert abs(null_auc - 0.5) < max(0.1, 2 * null_sigma)


def test_logit_confidence():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    labels = torch.tensor([0, 2])
    p = logits.softmax(-1)[torch.arange(2), labels].double()
    assert np.allclose(logit_confidence(logits, labels), (p.log() - (1 - p).log()).numpy())


def test_rank_test_flags_extreme_confidence():
    rng = np.random.default_rng(0)
    hold, hold_labels = rng.normal(size=200), rng.integers(0, 2, 200)
    z_null, mean_null = per_sample_rank_test(rng.normal(size=10), rng.integers(0, 2, 10), hold, hold_labels)
    z_hot, mean_hot = per_sample_rank_test(np.full(10, 5.0), np.zeros(10, int), hold, hold_labels)
    z_cold, _ = per_sample_rank_test(np.full(10, -5.0), np.zeros(10, int), hold, hold_labels)
    assert abs(z_null) < 2.5 and mean_hot == 1.0 and z_hot > 5 and z_cold < -5
