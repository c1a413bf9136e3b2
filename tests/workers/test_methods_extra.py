"""SCRUB, SSD, SalUn and reinit+repair on the memorising toy model (tests/workers/conftest.py)."""

import copy

import pytest
import torch

from app.ml.train import evaluate, per_example_loss
from workers.unlearning import METHODS, get_method
from workers.unlearning.base import UnlearnContext, matched_loss_targets, working_copy
from workers.unlearning.reinit_repair import ReinitRepairConfig, head_prefix, reinitialise
from workers.unlearning.ssd import fisher_importance
from workers.verify.mia import loss_auc

from tests.workers.conftest import FORGET_SUBJECTS

NEW = ["scrub", "ssd", "salun", "reinit_repair"]
# Toy settings the module docstrings recommend. SSD's paper threshold (alpha 10) barely moves the
# toy (its retain set is memorised by the same weights); 3 shows the mechanism works.
TOY = {"scrub": {"lr_scale": 10.0, "forget_steps": 2}, "ssd": {"alpha": 3.0}}
# Settings that run "forever" unless the time budget stops them.
ENDLESS = {"scrub": {"cycles": 10**6}, "ssd": {"full_samples": None}, "salun": {"steps": 10**6},
           "reinit_repair": {"cycles": 10**6}}


def forget_auc(spec, model, meta, sets):
    f = per_example_loss(spec, model, meta, sets["forget"], device="cpu")
    h = per_example_loss(spec, model, meta, sets["holdout"], device="cpu")
    return loss_auc(f, h, n_boot=0)[0]


def make_ctx(spec, model, meta, sets, config, **kw):
    return UnlearnContext(
        spec=spec, model=model, meta=meta, forget=sets["forget"], retain=sets["retain"],
        forget_subject_ids=FORGET_SUBJECTS, recipe=spec.recipe, device="cpu", seed=0,
        config=config, calibration=sets["test"], **kw,
    )


def test_registered_as_approximate():
    for name in NEW:
        assert name in METHODS and not get_method(name).exact


@pytest.mark.parametrize("name", NEW)
def test_forgets_memorised_set_and_keeps_utility(name, toy, toy_trained, toy_sets):
    model, meta = toy_trained
    served = copy.deepcopy(model.state_dict())
    progress = []
    ctx = make_ctx(toy, model, meta, toy_sets, dict(TOY.get(name, {})), progress=progress.append)
    result = get_method(name)(ctx)
    assert all(torch.equal(served[k], v) for k, v in model.state_dict().items()), "served model mutated"
    assert any(not torch.equal(served[k], v) for k, v in result.model.state_dict().items())
    assert progress and progress[-1] == 1.0 and not result.model.training
    before, after = forget_auc(toy, model, meta, toy_sets), forget_auc(toy, result.model, result.meta, toy_sets)
    # Lower, but not over-forgotten: far below 0.5 is as detectable as far above (DESIGN.md 3).
    assert before > 0.62 and after < before - 0.05 and after > 0.4, (before, after)
    test_before = evaluate(toy, model, meta, toy_sets["test"], device="cpu")
    assert evaluate(toy, result.model, result.meta, toy_sets["test"], device="cpu") > test_before - 0.1


class CountingDeadline:
    """A deadline that expires after its 5th check, on a count instead of the wall clock (a loaded CI
    machine makes any seconds threshold flaky; how close to the budget the real cut lands is measured
    by ``bench/budget.py``), and fails the test if the method keeps checking long after that."""

    made: list["CountingDeadline"] = []

    def __init__(self, budget_s: float | None) -> None:
        assert budget_s is not None
        self.checks = 0
        CountingDeadline.made.append(self)

    def expired(self) -> bool:
        self.checks += 1
        assert self.checks < 500, "kept working long after its time budget ran out"
        return self.checks > 5


@pytest.mark.parametrize("name", NEW)
def test_respects_time_budget(name, toy, toy_trained, toy_sets, monkeypatch):
    import sys

    model, meta = toy_trained
    monkeypatch.setattr(sys.modules[f"workers.unlearning.{name}"], "Deadline", CountingDeadline)
    CountingDeadline.made.clear()
    ctx = make_ctx(toy, model, meta, toy_sets, ENDLESS[name], time_budget_s=0.2)
    result = get_method(name)(ctx)  # endless configs: only the budget can end them
    assert CountingDeadline.made and max(d.checks for d in CountingDeadline.made) > 5  # it ran into the budget
    assert all(torch.isfinite(p).all() for p in result.model.parameters())


@pytest.mark.parametrize("name", NEW)
def test_unknown_config_field_rejected(name, toy, toy_trained, toy_sets):
    model, meta = toy_trained
    with pytest.raises(ValueError, match="lr_sclae"):
        get_method(name)(make_ctx(toy, model, meta, toy_sets, {"lr_sclae": 2.0}))


def test_salun_moves_only_salient_weights(toy, toy_trained, toy_sets):
    model, meta = toy_trained
    result = get_method("salun")(make_ctx(toy, model, meta, toy_sets, {"quantile": 0.9}))
    before = dict(model.named_parameters())
    changed = sum(int((p != before[n]).sum()) for n, p in result.model.named_parameters())
    total = sum(p.numel() for p in model.parameters())
    assert 0 < changed <= 0.1 * total + 1, (changed, total)


def test_ssd_only_dampens_and_accepts_cached_importance(toy, toy_trained, toy_sets):
    # The dampening step alone (no noise, no repair: those make it stochastic, test_method_seeds.py).
    model, meta = toy_trained
    plain = {"alpha": 3.0, "noise_scale": 0.0, "repair_steps": 0}
    computed = get_method("ssd")(make_ctx(toy, model, meta, toy_sets, plain))
    params = dict(model.named_parameters())
    for n, p in computed.model.named_parameters():
        assert (p.abs() <= params[n].abs() + 1e-7).all() and (p * params[n] >= 0).all()
    # An importance cached at training time over the same batches (the train split is retain +
    # forget) gives the same model: the cached path is wired like the computed one.
    r_sum, n_r = fisher_importance(toy, model, meta, toy_sets["retain"], device="cpu")
    f_sum, n_f = fisher_importance(toy, model, meta, toy_sets["forget"], device="cpu")
    full = {n: (r_sum[n] + f_sum[n]) / (n_r + n_f) for n in r_sum}
    cached = get_method("ssd")(make_ctx(toy, model, meta, toy_sets, {**plain, "full_importance": full}))
    for (n, a), b in zip(computed.model.named_parameters(), cached.model.parameters()):
        assert torch.allclose(a, b, atol=1e-6), n


def test_reinit_keeps_zero_entries_and_replaces_head(toy, toy_trained, toy_sets):
    model, meta = toy_trained
    ctx = make_ctx(toy, model, meta, toy_sets, {})
    copy_, meta2 = working_copy(ctx)
    with torch.no_grad():
        copy_.net[0].weight[:5] = 0.0  # stands for an erased subject's embedding rows
    old = {n: p.detach().clone() for n, p in copy_.named_parameters()}
    reinitialise(ctx, copy_, meta2, ReinitRepairConfig(reinit_share=0.5))
    assert (copy_.net[0].weight[:5] == 0).all()
    head = head_prefix(copy_)
    for n, p in copy_.named_parameters():
        share = float((p != old[n]).float().mean())
        if n.startswith(head + "."):
            assert share == 1.0
        else:
            assert 0.3 < share < 0.7, (n, share)


def test_matched_targets_follow_calibration_quantiles(toy, toy_trained, toy_sets):
    model, meta = toy_trained
    ctx = make_ctx(toy, model, meta, toy_sets, {})
    targets = matched_loss_targets(ctx).numpy()
    forget = per_example_loss(toy, model, meta, toy_sets["forget"], device="cpu")
    calib = per_example_loss(toy, model, meta, toy_sets["test"], device="cpu")
    order = forget.argsort(kind="stable")
    assert (targets[order][1:] >= targets[order][:-1]).all()  # same ranking as the forget losses
    assert calib.min() <= targets.min() and targets.max() <= calib.max()
    # A memorising model is confident on most unseen samples: the median target is far below the mean.
    assert float(torch.tensor(targets).median()) < calib.mean() / 2
