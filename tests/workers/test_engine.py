import pytest
import torch

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


def test_exact_candidate_is_never_rejected_for_utility(toy, toy_trained, toy_sets):
    # A utility bar above 100 % accuracy can never be matched (tolerance 0): the approximate
    # candidate fails it, the exact retrain is served anyway, with a warning.
    outcome = run(toy, toy_trained, toy_sets, baseline={"retain_acc": 1.01, "test_acc": 1.01},
                  gates=Gates(max_utility_drop=0.0, utility_sigmas=0.0))
    assert [(a["method"], a["passed"]) for a in outcome.attempts] == [("neggrad_plus", False), ("retrain", True)]
    assert not outcome.attempts[0]["report"]["gates"]["retain_acc"]["passed"]
    exact = outcome.attempts[1]["report"]
    assert "informational" in exact["gates"]["retain_acc"]["reason"]
    assert any("below the retrain band" in w for w in exact["warnings"])
    assert outcome.passed and outcome.method == "retrain"


def test_never_reports_a_failing_candidate_as_passed(toy, toy_trained, toy_sets, monkeypatch):
    # An exact candidate that fails its sanity check (non-finite weights) is retried with new
    # seeds, and never reported as passed.
    import workers.unlearning.engine as engine
    from workers.unlearning import get_method

    retrain = get_method("retrain")

    def broken(ctx):  # noqa: ANN001, ANN202
        result = retrain(ctx)
        with torch.no_grad():
            next(result.model.parameters()).fill_(float("nan"))
        return result

    broken.exact = True
    monkeypatch.setattr(engine, "get_method", lambda name: broken if name == "retrain" else get_method(name))
    outcome = run(toy, toy_trained, toy_sets, policy="retrain")
    assert not outcome.passed
    assert [(a["method"], a["seed"], a["passed"]) for a in outcome.attempts] == [
        ("retrain", s, False) for s in range(engine.EXACT_TRIES)]
    assert not outcome.attempts[0]["report"]["gates"]["finite_weights"]["passed"]
