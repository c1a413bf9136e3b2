"""Fixtures for the unlearning and verification tests (toy spec and model: tests/conftest.py)."""

from __future__ import annotations

import pytest

FORGET_SUBJECTS = ["toy-02", "toy-03", "toy-04", "toy-07"]  # 4 train subjects, 40 memorised samples


@pytest.fixture(scope="session")
def toy_sets(toy_examples):
    """train/forget/retain/test/holdout lists for unlearning the 4 subjects above."""
    train = [e for e in toy_examples if e.split == "train"]
    assert {e.subject_id for e in train} >= set(FORGET_SUBJECTS)
    return {
        "forget": [e for e in train if e.subject_id in FORGET_SUBJECTS],
        "retain": [e for e in train if e.subject_id not in FORGET_SUBJECTS],
        "test": [e for e in toy_examples if e.split == "test"],
        "holdout": [e for e in toy_examples if e.split == "holdout"],
    }
