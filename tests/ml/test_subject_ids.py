"""Stored samples name the subject whose per-subject parameters erasure must reset."""

from __future__ import annotations

from app.ml.specs import get_spec


def test_movielens_samples_carry_the_user_id() -> None:
    spec = get_spec("movielens")
    assert spec.subject_id_of({"user_id": 15, "movie_id": 1}) == "15"


def test_specs_without_per_subject_parameters_name_no_subject() -> None:
    assert get_spec("digits").subject_id_of({"pixels": [0.0] * 64}) is None
    assert get_spec("toy").subject_id_of({"x": [0.0] * 16}) is None
