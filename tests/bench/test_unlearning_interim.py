"""Epsilon mode's interim rows (``--interim``, issue 16): the benchmark scores the scheduler's interim
forget by running the worker's own code (``workers/interim.py``), on a MovieLens model small enough
to train in well under a second (the first 30 users of the demo data)."""

from __future__ import annotations

import csv
import dataclasses
import json
import math

import pytest
import torch

from app.ml import policy
from app.ml.specs.movielens import MovieLensSpec
from app.ml.train import evaluate, predict_logits, train_from_scratch
from bench.unlearning_parts import interim
from bench.unlearning_parts.cli import main
from bench.unlearning_parts.configs import CONFIGS, BenchConfig
from bench.unlearning_parts.epsilon import stage_for
from workers import interim as product

CPU = torch.device("cpu")


class TinyMovieLens(MovieLensSpec):
    """The demo MovieLens spec on its first 30 users (same name: the movielens chain applies)."""

    def load_examples(self):
        return [e for e in super().load_examples() if int(e.subject_id) <= 30]


@pytest.fixture(scope="module")
def tiny():
    spec = TinyMovieLens()
    examples = spec.load_examples()
    model, meta = train_from_scratch(spec, examples, device=CPU, seed=0)
    return spec, examples, model, meta


@pytest.fixture
def any_forget_share(monkeypatch):
    """The tiny data set has 30 users, so any one of them is above movielens' 2 % heavy-forget
    share, where ``auto`` (and the interim) skip the approximate methods: lift it to see the chain."""
    rule = policy.DEFAULT_ESCALATION["movielens"]
    monkeypatch.setitem(policy.DEFAULT_ESCALATION, "movielens", dataclasses.replace(rule, max_forget_share=1.0))


@pytest.fixture
def worker_calls(monkeypatch):
    """Counts the calls of the worker's interim functions (and still runs them)."""
    calls = {"_clear_params": 0, "_cheapest_passing": 0}
    for name in calls:
        real = getattr(product, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(product, name, spy)
    return calls


def test_params_interim_is_the_workers_and_scores_the_user_like_a_stranger(tiny, worker_calls):
    spec, examples, model, meta = tiny
    st = stage_for("movielens", spec, examples, "1 heavy user", CPU, None)
    (sid,) = st.fs.subject_ids
    row = meta["user_rows"][sid]
    assert model.user_emb.weight[row].abs().sum() > 0  # the original holds the user's own row
    features = [e.features for e in st.fs.forget]
    assert interim.stranger_gap(spec, model, meta, features, CPU) > 0  # ... and scores them unlike a stranger
    baseline = {"retain_acc": evaluate(spec, model, meta, st.fs.retain, device=CPU),
                "test_acc": evaluate(spec, model, meta, st.test, device=CPU)}

    r = interim.run("params", st, model, meta, baseline, None, seed=3001, noises=(0.01,))

    assert worker_calls == {"_clear_params": 1, "_cheapest_passing": 0}
    assert r["served"] == "params" and r["cleared"] is True and r["decision"].startswith("params")
    assert sid not in r["meta"]["user_rows"]
    assert r["model"].user_emb.weight[row].abs().sum() == 0 and r["model"].user_bias.weight[row].abs().sum() == 0
    stranger = [{**f, "user_id": 10**9} for f in features]  # an id no model has seen
    assert torch.equal(predict_logits(spec, r["model"], r["meta"], features, device=CPU),
                       predict_logits(spec, r["model"], r["meta"], stranger, device=CPU))
    assert r["stranger_gap"] == 0.0
    assert model.user_emb.weight[row].abs().sum() > 0  # the served model itself was not touched
    noised = r["noised"][0.01]
    assert noised.user_emb.weight[row].abs().sum() == 0  # noise keeps cleared rows cleared
    assert not torch.equal(noised.movie_emb.weight, r["model"].movie_emb.weight)


def test_auto_interim_skips_the_approximate_methods_for_a_heavy_forget_set(tiny, worker_calls):
    spec, examples, model, meta = tiny
    st = stage_for("movielens", spec, examples, "1 heavy user", CPU, None)  # above 2 % of the samples
    r = interim.run("auto", st, model, meta, {"retain_acc": 1.0, "test_acc": 1.0}, None, seed=3001, noises=())
    assert worker_calls == {"_clear_params": 1, "_cheapest_passing": 0}  # as the ordinary auto: no attempt
    assert r["served"] == "params" and r["decision"].startswith("params") and r["cleared"] is True


def test_auto_interim_tries_the_chain_within_budget_then_falls_back(tiny, worker_calls, any_forget_share):
    spec, examples, model, meta = tiny
    st = stage_for("movielens", spec, examples, "1 heavy user", CPU, None)
    baseline = {"retain_acc": 1.0, "test_acc": 1.0}  # an unreachable bar: every approximate candidate fails
    r = interim.run("auto", st, model, meta, baseline, None, seed=3001, noises=())  # no reference: no budget
    assert worker_calls == {"_clear_params": 1, "_cheapest_passing": 1}
    assert r["served"] == "params" and r["cleared"] is True
    tried = r["decision"].split(">")
    assert tried[0] == "reinit_repair(fail)" and tried[-1].startswith("params")  # the movielens chain, in order
    assert interim.budget_s("movielens", {"retrain_seconds": 2.0}) == pytest.approx(1.0)  # 0.5 x the retrain


def test_epsilon_mode_reports_the_interims(tmp_path, monkeypatch, worker_calls, any_forget_share):
    monkeypatch.setitem(CONFIGS, "movielens-tiny", BenchConfig("movielens-tiny", TinyMovieLens, "demo net, 30 users"))
    out = tmp_path / "eps"
    assert main(["--epsilon", "3", "--configs", "movielens-tiny", "--epsilon-sets", "1 heavy user", "--methods",
                 "finetune", "--interim", "params,auto", "--interim-noise", "0.01", "--epsilon-examples", "100",
                 "--out", str(out)]) == 0
    assert worker_calls["_clear_params"] >= 3 and worker_calls["_cheapest_passing"] == 3
    by = {r["method"]: r for r in csv.DictReader((out / "unlearning-epsilon-movielens-tiny.csv").open())}
    assert {"interim params", "interim params +noise 0.01", "interim auto", "interim auto +noise 0.01"} <= set(by)
    params = by["interim params"]
    assert int(params["n_models"]) == 3 and int(params["cleared"]) == 3 and float(params["stranger_gap"]) == 0.0
    assert params["served"] == "params 3"
    # three identical models: the metric's peaky guard scores every forget example 0
    assert float(params["F"]) == 0.0 and int(params["peaky"]) == int(params["n_scored"])
    for name in ("interim params", "interim params +noise 0.01", "interim auto", "finetune"):
        for col in ("F", "floor", "forget_acc", "retrain_forget_acc", "test_acc", "cpu_seconds"):
            assert math.isfinite(float(by[name][col])), (name, col)
    assert int(by["interim params +noise 0.01"]["peaky"]) < int(params["peaky"])  # the noise makes it scorable
    data = json.loads((out / "unlearning-epsilon-movielens-tiny.json").read_text())
    assert data["info"]["interim"]["kinds"] == ["params", "auto"] and data["info"]["interim"]["noise"] == [0.01]
    assert data["false_pass"]["passed"] == int(by["finetune"]["gate_passed"])  # interims are no gated candidates
    assert "Interim forget of a scheduled model" in (out / "unlearning-epsilon-movielens-tiny.md").read_text()


def test_interim_options_are_checked():
    with pytest.raises(SystemExit):
        main(["--epsilon", "3", "--configs", "toy", "--interim", "exact"])
    with pytest.raises(SystemExit):
        main(["--epsilon", "3", "--configs", "toy", "--interim", "params", "--interim-noise", "2"])
    with pytest.raises(SystemExit):
        main(["--configs", "toy", "--interim", "params"])
