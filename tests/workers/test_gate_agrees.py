"""Gates that bring the quick gate closer to the competition metric (issue 10 section 5): the audit
admission (``AUDITED_F_SHARE``: methods the metric measured below half the retrain floor are
refused) and the "moved like a retrain" shift test."""

import pytest

from app.ml import policy
from app.ml.train import evaluate
from workers.unlearning import get_method
from workers.unlearning.base import UnlearnContext
from workers.verify.calibrate import conf
from workers.verify.report import Gates, verify_candidate

from tests.workers.conftest import FORGET_SUBJECTS


def test_audited_share_uses_the_nearest_measurement_at_or_above_the_forget_share(monkeypatch):
    monkeypatch.setitem(policy.AUDITED_F_SHARE, "toy", {"finetune": ((0.5, 0.3), (0.05, 0.9))})
    assert policy.audited_share("toy", "finetune", 0.01) == 0.9
    assert policy.audited_share("toy", "finetune", 0.2) == 0.3
    assert policy.audited_share("toy", "finetune", 0.9) == 0.3  # above every measurement: the largest
    assert policy.audited_share("toy", "ssd", 0.01) is None and policy.audited_share("x", "finetune", 0.1) is None


@pytest.fixture(scope="module")
def candidate(toy, toy_trained, toy_sets):
    model, meta = toy_trained
    ctx = UnlearnContext(spec=toy, model=model, meta=meta, forget=toy_sets["forget"], retain=toy_sets["retain"],
                         forget_subject_ids=FORGET_SUBJECTS, recipe=toy.recipe, device="cpu", seed=0,
                         config={"lr_scale": 10.0}, calibration=toy_sets["test"])
    return get_method("finetune")(ctx)


def verify(toy, toy_trained, toy_sets, result, *, exact=False, gates=Gates(), reference=None):
    model, meta = toy_trained
    baseline = {"retain_acc": evaluate(toy, model, meta, toy_sets["retain"], device="cpu"),
                "test_acc": evaluate(toy, model, meta, toy_sets["test"], device="cpu")}
    return verify_candidate(
        spec=toy, candidate=result.model, meta=result.meta, forget=toy_sets["forget"], retain=toy_sets["retain"],
        test=toy_sets["test"], holdout=toy_sets["holdout"], forget_subject_ids=FORGET_SUBJECTS, baseline=baseline,
        reference=reference, gates=gates, device="cpu", exact=exact, method="finetune",
        served_conf=conf(toy, model, meta, toy_sets["forget"], "cpu"),
    )


def test_a_method_audited_below_half_the_floor_is_refused(toy, toy_trained, toy_sets, candidate, monkeypatch):
    assert verify(toy, toy_trained, toy_sets, candidate).passed  # the quick tests alone pass it
    monkeypatch.setitem(policy.AUDITED_F_SHARE, "toy", {"finetune": ((1.0, 0.4),)})
    report = verify(toy, toy_trained, toy_sets, candidate)
    assert not report.passed and not report.gates["audited_f"]["passed"] and "0.40" in report.gates["audited_f"]["reason"]
    monkeypatch.setitem(policy.AUDITED_F_SHARE, "toy", {"finetune": ((1.0, 0.6),)})
    assert verify(toy, toy_trained, toy_sets, candidate).gates["audited_f"]["passed"]


def test_a_candidate_that_barely_moved_fails_the_shift_gate(toy, toy_trained, toy_sets, candidate):
    report = verify(toy, toy_trained, toy_sets, candidate)
    assert report.shift > 0 and "shift" not in report.gates  # no reference shift: not checked
    gates = Gates(min_shift_ratio=0.5)
    assert verify(toy, toy_trained, toy_sets, candidate, gates=gates,
                  reference={"retrain_shift": report.shift}).gates["shift"]["passed"]
    far = verify(toy, toy_trained, toy_sets, candidate, gates=gates, reference={"retrain_shift": 4 * report.shift})
    assert not far.passed and not far.gates["shift"]["passed"]
