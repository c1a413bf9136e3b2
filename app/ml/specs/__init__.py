"""Registry of the bundled model specs (``app.ml.spec.ModelSpec`` subclasses), by name."""

from __future__ import annotations

from app.ml.spec import ModelSpec
from app.ml.specs.digits import DigitsSpec
from app.ml.specs.mnist import MnistSpec
from app.ml.specs.movielens import MovieLensSpec
from app.ml.specs.toy import ToySpec

_SPECS: dict[str, type[ModelSpec]] = {cls.name: cls for cls in (MovieLensSpec, DigitsSpec, ToySpec, MnistSpec)}
SPEC_NAMES: tuple[str, ...] = tuple(_SPECS)


def get_spec(name: str) -> ModelSpec:
    """A new instance of the spec called ``name``; ``KeyError`` for an unknown name."""
    try:
        return _SPECS[name]()
    except KeyError:
        raise KeyError(f"unknown model spec {name!r}; known: {', '.join(SPEC_NAMES)}") from None
