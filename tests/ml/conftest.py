"""Fixtures shared by the model-training tests."""

import pytest
import torch


@pytest.fixture
def deterministic_torch():
    """Deterministic kernels for a test that compares weights bit for bit (SISA exactness)."""
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(False)
