"""``auto`` never costs much more than the exact method it falls back to (issue 10 section 3):
``app.ml.policy.plan`` (heavy forget sets go exact at once; a budget that is a fraction of the
recorded retrain time otherwise) and the engine's enforcement of that budget."""

import pytest

from app.ml.policy import Escalation, plan
from app.ml.train import evaluate
from workers.unlearning.engine import forget

from tests.workers.conftest import FORGET_SUBJECTS

EXACT = {"finetune": False, "neggrad_plus": False, "retrain": True}
CHAIN = ["finetune", "neggrad_plus", "retrain"]


def test_heavy_forget_set_goes_exact_directly():
    chain, budget, decision = plan(CHAIN, exact=EXACT, retrain_seconds=100.0, n_forget=300, n_train=10_000,
                                   rule=Escalation(max_forget_share=0.02))
    assert chain == ["retrain"] and budget is None
    assert decision["rule"] == "exact_direct" and "3.00 %" in decision["reason"]


def test_light_forget_set_tries_approximate_first_within_a_budget():
    chain, budget, decision = plan(CHAIN, exact=EXACT, retrain_seconds=100.0, n_forget=50, n_train=10_000,
                                   rule=Escalation(max_forget_share=0.02, approx_budget_share=0.25))
    assert chain == CHAIN and budget == pytest.approx(25.0)
    assert decision["rule"] == "approximate_first" and decision["expected_exact_s"] == 100.0


def test_without_a_recorded_retrain_time_the_chain_runs_unbudgeted():
    chain, budget, decision = plan(CHAIN, exact=EXACT, retrain_seconds=None, n_forget=50, n_train=10_000,
                                   rule=Escalation(max_forget_share=0.02))
    assert chain == CHAIN and budget is None and decision["rule"] == "no_cost_data"


def test_a_retrain_too_cheap_to_undercut_goes_exact():
    chain, _, decision = plan(CHAIN, exact=EXACT, retrain_seconds=2.0, n_forget=5, n_train=10_000,
                              rule=Escalation(min_exact_seconds=5.0))
    assert chain == ["retrain"] and decision["rule"] == "exact_direct"


def run(toy, toy_trained, toy_sets, **kwargs):
    model, meta = toy_trained
    baseline = {"retain_acc": evaluate(toy, model, meta, toy_sets["retain"], device="cpu"),
                "test_acc": evaluate(toy, model, meta, toy_sets["test"], device="cpu")}
    return forget(spec=toy, model=model, meta=meta, forget_subject_ids=FORGET_SUBJECTS, device="cpu",
                  baseline=baseline, **toy_sets, **kwargs)


def test_engine_heavy_set_never_tries_an_approximate_method(toy, toy_trained, toy_sets):
    outcome = run(toy, toy_trained, toy_sets, reference={"retrain_seconds": 1.0},
                  escalation=Escalation(max_forget_share=0.01))
    assert [a["method"] for a in outcome.attempts] == ["retrain"] and outcome.passed
    assert outcome.decision["rule"] == "exact_direct"


def test_engine_bounds_approximate_attempts_by_the_budget(toy, toy_trained, toy_sets):
    # A method that would run "forever" is cut at the budget (0.5 x a 0.4 s retrain), and the second
    # approximate method is skipped once the budget is spent: escalation goes straight to retrain.
    outcome = run(toy, toy_trained, toy_sets, reference={"retrain_seconds": 0.4},
                  chains={"toy": ("finetune", "neggrad_plus", "retrain")},
                  config={"finetune": {"steps": 10**7, "lr_scale": 1e-6}}, escalation=Escalation(approx_budget_share=0.5))
    first = outcome.attempts[0]
    assert first["method"] == "finetune" and first["seconds"] < 0.2 + 0.15
    methods = [a["method"] for a in outcome.attempts]
    approx_spent = sum(a["seconds"] + a["verify_seconds"] for a in outcome.attempts if not a["exact"])
    # Steps at 1e-6 x the recipe rate leave toy's memorised subjects memorised: the gate refuses,
    # and neggrad_plus finds no budget left.
    assert not first["passed"] and methods == ["finetune", "retrain"] and "escalated_early" in outcome.decision
    assert outcome.decision["rule"] == "approximate_first" and outcome.decision["budget_s"] == pytest.approx(0.2)
    assert approx_spent < 0.2 + first["verify_seconds"] + 0.15
