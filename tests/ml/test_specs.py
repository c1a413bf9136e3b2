import math

import pytest

from app.ml.specs import get_spec, spec_names

SPEC_NAMES = ("movielens", "digits", "toy", "mnist")


def test_registry_names_and_unknown():
    assert set(spec_names()) >= {"movielens", "digits", "toy", "mnist"}  # Lethe's own entry points
    assert get_spec("toy").name == "toy"
    with pytest.raises(KeyError, match="nope"):
        get_spec("nope")


@pytest.mark.parametrize("name", SPEC_NAMES)
def test_input_example_validates(name):
    spec = get_spec(name)
    features = spec.validate_input(dict(spec.input_example))
    assert set(features) == set(spec.input_schema["required"])


BAD_INPUTS = {
    "toy": [
        ([1.0] * 16, "JSON object"),
        ({}, "missing"),
        ({"x": [0.0] * 15}, "length 16"),
        ({"x": [0.0] * 15 + [math.nan]}, "finite"),
        ({"x": [0.0] * 15 + ["a"]}, "number"),
        ({"x": [0.0] * 16, "y": 1}, "unexpected"),
    ],
    "digits": [
        ({"pixels": [0.0] * 63}, "length 64"),
        ({"pixels": [0.0] * 63 + [17.0]}, r"\[0.0, 16.0\]"),
        ({"pixels": [0.0] * 63 + [math.inf]}, "finite"),
        ({"pixels": "0" * 64}, "list"),
    ],
    "movielens": [
        ({"user_id": 1}, "movie_id"),
        ({"user_id": "1", "movie_id": 31}, "integer"),
        ({"user_id": 1.5, "movie_id": 31}, "integer"),
        ({"user_id": True, "movie_id": 31}, "integer"),
    ],
}


@pytest.mark.parametrize("name,item,message", [(n, i, m) for n, cases in BAD_INPUTS.items() for i, m in cases])
def test_bad_inputs_raise_clear_value_error(name, item, message):
    with pytest.raises(ValueError, match=message):
        get_spec(name).validate_input(item)


@pytest.mark.parametrize("name", ["toy", "digits"])
def test_splits_are_by_subject_and_deterministic(name):
    spec = get_spec(name)
    a, b = spec.load_examples(), spec.load_examples()
    assert a == b
    split_of = {}
    for e in a:
        assert split_of.setdefault(e.subject_id, e.split) == e.split
    assert set(split_of.values()) == {"train", "test", "holdout"}
    share = sum(s == "holdout" for s in split_of.values()) / len(split_of)
    assert 0.1 <= share <= 0.25


def test_digits_subjects_have_five_samples_each():
    examples = get_spec("digits").load_examples()
    assert examples[0].subject_id == "digits-0000" and examples[5].subject_id == "digits-0001"
    assert len(examples[0].features["pixels"]) == 64
