"""Lethe's public plugin API: what a model package imports to plug its model in.

    from lethe import ModelSpec, Example, TrainRecipe

is the same as ``from app.ml.spec import ...`` (which stays importable). Publish the subclass
under the entry-point group ``lethe.models`` (see README, "Bring your own model").
"""

from app.ml.spec import Example, ModelSpec, TrainRecipe

__all__ = ["Example", "ModelSpec", "TrainRecipe"]
