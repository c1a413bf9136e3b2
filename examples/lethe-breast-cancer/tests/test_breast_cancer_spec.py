"""Unit checks of the plugin with Lethe's own helpers: data, splits, training, input checks.

Run: ``pytest examples/lethe-breast-cancer/tests`` (the plugin installed, or from a Lethe checkout).
"""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from app.ml.spec import SPLITS, ModelSpec
from app.ml.train import evaluate, predict, train_from_scratch
from lethe_breast_cancer.spec import FEATURES, BreastCancerSpec


@pytest.fixture(scope="module")
def spec() -> BreastCancerSpec:
    return BreastCancerSpec()


@pytest.fixture(scope="module")
def examples(spec):
    return spec.load_examples()


@pytest.fixture(scope="module")
def trained(spec, examples):
    torch.set_num_threads(1)  # a few hundred rows: threads only add contention
    return train_from_scratch(spec, examples, device="cpu", seed=0)


def test_is_a_model_spec_with_the_declared_attributes(spec):
    assert isinstance(spec, ModelSpec)
    assert spec.name == "breast_cancer" and spec.num_classes == 2 and spec.description
    assert spec.input_schema["required"] == list(FEATURES) and len(FEATURES) == 30
    assert spec.validate_input(dict(spec.input_example)) == spec.input_example


def test_one_patient_per_subject_and_deterministic_subject_splits(spec, examples):
    assert len(examples) == 569 and examples == spec.load_examples()
    subjects = [e.subject_id for e in examples]
    assert len(set(subjects)) == 569 and subjects[0] == "patient-0001" and subjects[-1] == "patient-0569"
    counts = Counter(e.split for e in examples)
    assert set(counts) == set(SPLITS)
    # About 15 % held-out and 15 % test patients, as in the bundled specs.
    assert 0.10 < counts["holdout"] / 569 < 0.20 and 0.08 < counts["test"] / 569 < 0.20
    # Both classes in every split: the MIA gate matches the forget set's class mix from the holdout.
    for split in SPLITS:
        assert {e.label for e in examples if e.split == split} == {0, 1}
    # Row 0 of the data set is the input example (a malignant mass).
    assert examples[0].features == spec.input_example and examples[0].label == 0


def test_standardisation_comes_from_training_rows_only(spec, examples):
    train = [e.features for e in examples if e.split == "train"]
    meta = spec.make_meta(train)
    x = torch.tensor([[f[n] for n in FEATURES] for f in train], dtype=torch.float64)
    assert torch.allclose(torch.tensor(meta["mean"], dtype=torch.float64), x.mean(0))
    # The whole data set has other statistics: a held-out patient did not shape the scaler.
    everything = spec.make_meta([e.features for e in examples])
    assert everything["mean"] != meta["mean"]
    z = spec.collate(train, meta)["x"]
    assert z.shape == (len(train), 30)
    assert z.mean(0).abs().max() < 1e-4 and (z.std(0, unbiased=False) - 1).abs().max() < 1e-3


def test_trains_well_above_the_majority_class(spec, examples, trained):
    model, meta = trained
    test = [e for e in examples if e.split == "test"]
    holdout = [e for e in examples if e.split == "holdout"]
    majority = max(Counter(e.label for e in test).values()) / len(test)
    test_acc = evaluate(spec, model, meta, test, device="cpu")
    assert majority < 0.65
    assert test_acc >= 0.93 and test_acc > majority + 0.25, (test_acc, majority)
    assert evaluate(spec, model, meta, holdout, device="cpu") >= 0.93
    # The training rows are fitted (almost) perfectly: members are measurably remembered.
    assert evaluate(spec, model, meta, [e for e in examples if e.split == "train"], device="cpu") >= 0.99
    (label, probability), = predict(spec, model, meta, [spec.validate_input(spec.input_example)], device="cpu")
    assert label == 0 and probability > 0.9


def test_same_seed_same_model(spec, examples, trained):
    model, meta = trained
    again, meta_again = train_from_scratch(spec, examples, device="cpu", seed=0)
    assert meta_again == meta
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name


def bad_inputs():
    good = dict(BreastCancerSpec.input_example)
    without = {k: v for k, v in good.items() if k != "mean_radius"}
    return [
        ([17.99] * 30, "JSON object"),
        ({}, "missing"),
        (without, "missing key\\(s\\): mean_radius"),
        ({**good, "age": 50}, "unexpected key\\(s\\): age"),
        ({**good, "mean_radius": "17.99"}, "'mean_radius' must be a number"),
        ({**good, "mean_radius": True}, "'mean_radius' must be a number"),
        ({**good, "mean_radius": None}, "'mean_radius' must be a number"),
        ({**good, "worst_area": math.nan}, "'worst_area' must be finite"),
        ({**good, "worst_area": math.inf}, "'worst_area' must be finite"),
        ({**good, "mean_texture": -1.0}, "'mean_texture' must be >= 0"),
    ]


@pytest.mark.parametrize("item,message", bad_inputs())
def test_bad_input_is_a_clear_value_error(spec, item, message):
    with pytest.raises(ValueError, match=message):
        spec.validate_input(item)


def test_messages_never_echo_the_submitted_value(spec):
    with pytest.raises(ValueError) as info:
        spec.validate_input({**spec.input_example, "mean_texture": -12.345})
    assert "12.345" not in str(info.value)


def test_integers_are_accepted_as_numbers(spec):
    item = {**spec.input_example, "mean_area": 1001}
    assert spec.validate_input(item)["mean_area"] == 1001.0


def test_the_delta_table_variant_reads_back_as_the_same_examples(spec, examples, tmp_path) -> None:
    import deltalake  # the plugin's `delta` extra (Lethe's `dev` extra has it too)

    from lethe_breast_cancer.delta_table import write_table

    uri = str(tmp_path / "wdbc")
    assert write_table(uri) == len(examples) == 569
    rows = deltalake.DeltaTable(uri).to_pyarrow_table().to_pylist()
    by_patient = {e.subject_id: e for e in examples}
    for row in rows:
        e, want = spec.example_from_row(row), by_patient[row["patient"]]
        assert e.features == want.features and e.label == want.label and row["split"] == want.split
