"""Fixtures for the unlearning and verification tests: a memorising toy model per session."""

from __future__ import annotations

import pytest

from app.ml.device import set_cpu_threads
from app.ml.specs import get_spec
from app.ml.train import train_from_scratch


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: takes more than a few seconds")
    set_cpu_threads(1)  # tiny models on shared cores: see set_cpu_threads


@pytest.fixture(scope="session")
def toy():
    return get_spec("toy")


@pytest.fixture(scope="session")
def toy_examples(toy):
    return toy.load_examples()


@pytest.fixture(scope="session")
def toy_trained(toy, toy_examples):
    """(model, meta) trained on the toy train split; tests must not mutate it."""
    return train_from_scratch(toy, toy_examples, device="cpu", seed=0)


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
