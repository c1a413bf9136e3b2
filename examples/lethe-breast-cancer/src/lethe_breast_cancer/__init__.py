"""A Lethe model plugin: the Wisconsin breast-cancer data set and a small MLP (see ``spec.py``)."""

from lethe_breast_cancer.spec import BreastCancerSpec

__all__ = ["BreastCancerSpec"]
