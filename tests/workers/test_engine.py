import pytest

from app.ml.train import evaluate
from workers.unlearning.engine import forget, method_chain
from workers.verify.report import Gates

from tests.workers.conftest import FORGET_SUBJECTS


def run(toy, toy_trained, toy_sets, baseline=None, **kwargs):
    model, meta = toy_trained
    baseline = baseline or {
        "retain_acc": evaluate(toy, model, meta, toy_sets["retain"], device="cpu"),
        "test_acc": evaluate(toy, model, meta, toy_sets["test"], device="cpu"),
    }
    return forget(spec=toy, model=model, meta=meta, forget_subject_ids=FORGET_SUBJECTS, device="cpu",
                  baseline=baseline, **toy_sets, **kwargs)


def test_chains():
    assert method_chain("toy", "auto") == ["neggrad_plus", "retrain"]
    assert method_chain("unknown-spec", "auto")[-1] == "retrain"
    assert method_chain("toy", "retrain") == ["retrain"]
    assert method_chain("toy", "finetune") == ["finetune", "retrain"]
    with pytest.raises(KeyError):
        method_chain("toy", "nope")


def test_auto_passes_with_cheapest_method(toy, toy_trained, toy_sets):
    stages = []
    outcome = run(toy, toy_trained, toy_sets, progress=lambda stage, f: stages.append(stage))
    assert outcome.passed and outcome.method == "neggrad_plus" and len(outcome.attempts) == 1
    assert {"unlearn:neggrad_plus", "verify:neggrad_plus"} <= set(stages)
    assert set(outcome.attempts[0]) >= {"method", "seconds", "passed", "report"}


def test_escalates_to_retrain_when_approximate_fails(toy, toy_trained, toy_sets):
    # One step at the recipe rate leaves the memorised set memorised: the gate must refuse it.
    outcome = run(toy, toy_trained, toy_sets, policy="finetune", config={"finetune": {"steps": 1, "lr_scale": 1.0}})
    assert [a["method"] for a in outcome.attempts] == ["finetune", "retrain"]
    assert not outcome.attempts[0]["passed"] and not outcome.attempts[0]["report"]["gates"]["mia"]["passed"]
    assert outcome.passed and outcome.method == "retrain"


def test_never_reports_a_failing_candidate_as_passed(toy, toy_trained, toy_sets):
    # A serving baseline above 100 % accuracy can never be matched (tolerance 0).
    outcome = run(toy, toy_trained, toy_sets, baseline={"retain_acc": 1.01, "test_acc": 1.01},
                  gates=Gates(max_utility_drop=0.0, utility_sigmas=0.0))
    assert not outcome.passed
    assert [a["passed"] for a in outcome.attempts] == [False, False]
