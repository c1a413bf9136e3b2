"""``amnesiac`` and its update log (app/ml/update_log.py).

The exactness test uses plain SGD (no momentum, no weight decay): then each logged delta is
``-lr * grad(batch)`` and nothing of it enters later steps, so the final weights are the initial
ones plus the sum of the per-batch deltas, and removing a subject's batches is an identity on
that sum. Batches are packed by subject with ``batch_size`` = samples per subject, so every batch
holds exactly one subject.
"""

import hashlib
from collections import Counter
from pathlib import Path

import pytest
import torch

from app.ml.checkpoint import ChecksumMismatch
from app.ml.spec import TrainRecipe
from app.ml.train import evaluate, per_example_loss, train_for_registration
from app.ml.update_log import UpdateLog, epoch_batches, train_logged
from workers.unlearning import get_method
from workers.unlearning.base import UnlearnContext
from workers.verify.mia import loss_auc
from workers.verify.report import Gates, verify_candidate

from tests.workers.conftest import FORGET_SUBJECTS


@pytest.fixture(scope="module")
def sgd_logged(toy, toy_examples, tmp_path_factory):
    recipe = TrainRecipe(epochs=4, batch_size=10, lr=0.05)
    return train_logged(toy, toy_examples, out_dir=tmp_path_factory.mktemp("sgd") / "log", device="cpu",
                        recipe=recipe, optimizer="sgd")


@pytest.fixture(scope="module")
def logged(toy, toy_examples, tmp_path_factory):
    return train_logged(toy, toy_examples, out_dir=tmp_path_factory.mktemp("adam") / "log", device="cpu")


def ctx_for(spec, model, meta, sets, **kw):
    return UnlearnContext(spec=spec, model=model, meta=meta, forget=sets["forget"], retain=sets["retain"],
                          forget_subject_ids=[], recipe=spec.recipe, device="cpu", seed=0,
                          calibration=sets["test"], **kw)


def test_subject_batches_hold_one_subject_per_epoch():
    subjects = [f"s{i // 5}" for i in range(50)] + ["big"] * 23
    plan = epoch_batches(subjects, 10, torch.Generator().manual_seed(0), "subjects")
    assert sorted(i for b in plan for i in b) == list(range(len(subjects))) and max(map(len, plan)) <= 10
    touched = Counter(s for b in plan for s in {subjects[i] for i in b})
    assert touched["big"] == 3 and all(touched[f"s{i}"] == 1 for i in range(10))


def test_subtracting_logged_deltas_equals_the_trajectory_without_them(toy, toy_sets, sgd_logged):
    model, meta = sgd_logged
    log = UpdateLog.of(meta)
    owners = Counter(b for ids in log.index["subjects"].values() for b in ids)
    assert set(owners.values()) == {1}  # every batch belongs to exactly one subject
    removed = log.batches_of(FORGET_SUBJECTS)
    assert len(removed) == 4 * len(FORGET_SUBJECTS)  # one batch per subject per epoch
    replay = log.init()  # theta_0 + every kept delta, in training order
    full = {n: t.clone() for n, t in replay.items()}
    for bid in log.batch_ids():
        for n, d in log.delta(bid).items():
            full[n] += d
            if bid not in removed:
                replay[n] += d
    final = dict(model.named_parameters())
    assert all(torch.allclose(full[n], final[n], atol=1e-5) for n in final)  # the log is complete
    result = get_method("amnesiac")(ctx_for(toy, model, meta, toy_sets, config={"steps": 0}))
    got = dict(result.model.named_parameters())
    assert all(torch.allclose(got[n], replay[n], atol=1e-5) for n in got)
    assert any(not torch.allclose(got[n], final[n]) for n in got)


def test_amnesiac_forgets_keeps_utility_and_rewrites_the_log(toy, toy_sets, logged):
    model, meta = logged
    log_dir = Path(meta["update_log"]["dir"])
    before_files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in log_dir.iterdir()}
    progress = []
    result = get_method("amnesiac")(ctx_for(toy, model, meta, toy_sets, progress=progress.append))
    assert not get_method("amnesiac").exact and progress[-1] == 1.0
    # The served log is untouched; the candidate's has no batch or key of the erased subjects.
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in log_dir.iterdir()} == before_files
    new = UpdateLog.of(result.meta)
    assert new.dir != log_dir and not set(FORGET_SUBJECTS) & set(new.index["subjects"])
    old = UpdateLog.of(meta)
    assert not set(old.batches_of(FORGET_SUBJECTS)) & set(new.batch_ids())
    assert result.meta["update_log"]["batches"] == meta["update_log"]["batches"] - len(
        old.batches_of(FORGET_SUBJECTS)) + 100  # the repair steps are logged too
    baseline = {"retain_acc": evaluate(toy, model, meta, toy_sets["retain"], device="cpu"),
                "test_acc": evaluate(toy, model, meta, toy_sets["test"], device="cpu")}
    report = verify_candidate(spec=toy, candidate=result.model, meta=result.meta, forget=toy_sets["forget"],
                              retain=toy_sets["retain"], test=toy_sets["test"], holdout=toy_sets["holdout"],
                              forget_subject_ids=[], baseline=baseline, reference=None, gates=Gates(),
                              device="cpu", exact=False, method="amnesiac")
    assert report.passed, report.gates

    def auc(m, mt):
        f = per_example_loss(toy, m, mt, toy_sets["forget"], device="cpu")
        return loss_auc(f, per_example_loss(toy, m, mt, toy_sets["holdout"], device="cpu"))[0]

    assert auc(result.model, result.meta) < auc(model, meta) - 0.1


def test_amnesiac_needs_a_log_and_an_intact_one(toy, toy_trained, toy_sets, toy_examples, tmp_path):
    model, meta = toy_trained
    with pytest.raises(ValueError, match="update log"):
        get_method("amnesiac")(ctx_for(toy, model, meta, toy_sets))
    small = TrainRecipe(epochs=1, batch_size=32, lr=3e-3)
    model, meta = train_logged(toy, toy_examples, out_dir=tmp_path / "log", device="cpu", recipe=small)
    bid = UpdateLog.of(meta).batches_of(FORGET_SUBJECTS)[0]
    path = Path(meta["update_log"]["dir"]) / f"b{bid:06d}.safetensors"
    path.write_bytes(path.read_bytes()[:-1] + b"\x01")
    with pytest.raises(ChecksumMismatch):
        get_method("amnesiac")(ctx_for(toy, model, meta, toy_sets, config={"steps": 0}))


def test_registration_options_are_checked(toy, toy_examples, tmp_path):
    with pytest.raises(ValueError, match="not both"):
        train_for_registration(toy, toy_examples, training={"sisa": True, "update_log": True}, workdir=tmp_path,
                               device="cpu")
    with pytest.raises(ValueError, match="unknown"):
        train_for_registration(toy, toy_examples, training={"sharding": 3}, workdir=tmp_path, device="cpu")
