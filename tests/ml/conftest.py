"""Fixtures for the ML core: the toy spec and one trained toy model, shared per session."""

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
