import json

import numpy as np
import pytest

from app.ml.train import evaluate
from workers.verify.calibrate import calibrate_reference


@pytest.fixture(scope="module")
def reference(toy, toy_examples, toy_trained):
    model, meta = toy_trained
    return calibrate_reference(toy, toy_examples, device="cpu", n_sets=3, subjects_per_set=2, model=model, meta=meta)


def test_reference_keys_and_values(reference):
    assert {"mia_auc", "mia_auc_sd", "forget_acc", "remembered_auc", "n_sets", "subjects_per_set", "seconds"} <= set(reference)
    assert reference["n_sets"] == 3 and reference["subjects_per_set"] == 2
    # What auto's cost rule and the shift gate read: a retrain's time and how far it moves the
    # forget samples' outputs from the served model.
    assert reference["retrain_seconds"] > 0 and reference["retrain_shift"] > 0
    # each retrain's own time (the scheduler's first leads plan from them); their mean is the expected cost
    runs = reference["retrain_seconds_runs"]
    assert len(runs) == 3 and all(r > 0 for r in runs)
    assert abs(sum(runs) / 3 - reference["retrain_seconds"]) < 0.01
    assert 0.3 <= reference["mia_auc"] <= 0.7
    assert 0.0 <= reference["forget_acc"] <= 1.0 and reference["mia_auc_sd"] >= 0
    json.dumps(reference, allow_nan=False)


def test_memorising_model_sits_above_reference(reference):
    # The served toy model recalls every training sample; exact retrains do not.
    assert reference["remembered_auc"] > reference["mia_auc"] + 0.05
    assert reference["remembered_forget_acc"] > reference["forget_acc"]


@pytest.mark.slow
def test_deterministic_and_no_model_no_remembered(toy, toy_examples, reference):
    again = calibrate_reference(toy, toy_examples, device="cpu", n_sets=3, subjects_per_set=2)
    assert "remembered_auc" not in again
    assert again["mia_auc"] == pytest.approx(reference["mia_auc"])
    assert again["forget_acc"] == pytest.approx(reference["forget_acc"])


def test_rejects_impossible_sets(toy, toy_examples):
    with pytest.raises(ValueError):
        calibrate_reference(toy, toy_examples, device="cpu", n_sets=0)
    with pytest.raises(ValueError, match="too few"):
        calibrate_reference(toy, toy_examples, device="cpu", subjects_per_set=1000)


def test_a_sisa_model_is_calibrated_against_sisa_retrains(toy, toy_examples, monkeypatch, tmp_path) -> None:  # noqa: ANN001
    """A SISA model's exact erasures serve ensembles: its reference must be measured on SISA retrains
    (one network's accuracy would flag every SISA erasure as a utility regression)."""
    from app.ml import sisa
    from workers.verify import calibrate as cal

    model, meta = sisa.train_sisa(toy, toy_examples, out_dir=tmp_path / "served", device="cpu", seed=0,
                                  shards=2, slices=2)
    trained = []
    real = cal.retrain_sisa

    def spy(*args, **kwargs):  # the real SISA training, recorded
        out = real(*args, **kwargs)
        trained.append(out)
        return out

    monkeypatch.setattr(cal, "retrain_sisa", spy)
    ref = cal.calibrate_reference(toy, toy_examples, device="cpu", n_sets=2, model=model, meta=meta)
    assert len(trained) == 2
    assert all(isinstance(m, sisa.SISAEnsemble) and (m_meta["sisa"]["shards"], m_meta["sisa"]["slices"]) == (2, 2)
               for m, m_meta in trained)
    test = [e for e in toy_examples if e.split == "test"]
    last, last_meta = trained[-1]
    assert ref["utility_runs"][-1]["test_acc"] == pytest.approx(
        evaluate(toy, last, last_meta, [test[i] for i in sorted(
            np.random.default_rng(0).choice(len(test), min(cal.MAX_TEST, len(test)), replace=False))], device="cpu"))
    assert not list(tmp_path.glob("sisa-*"))  # calibration's checkpoints never land beside the served ones
