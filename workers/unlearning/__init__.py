"""Registry of unlearning methods, one module each (STYLE.md 7; DESIGN.md section 3).

A method is ``unlearn(ctx: UnlearnContext) -> UnlearnResult``, registered with
``@register(name, exact=...)``. ``exact`` methods carry a guarantee (the forget set was never
trained on) that the verification gate honours.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from workers.unlearning.base import UnlearnContext, UnlearnResult


@dataclass(frozen=True)
class Method:
    name: str
    fn: Callable[["UnlearnContext"], "UnlearnResult"]
    exact: bool

    def __call__(self, ctx: "UnlearnContext") -> "UnlearnResult":
        return self.fn(ctx)


METHODS: dict[str, Method] = {}


def register(name: str, *, exact: bool = False) -> Callable:
    def decorator(fn: Callable) -> Callable:
        if name in METHODS:
            raise ValueError(f"unlearning method {name!r} registered twice")
        METHODS[name] = Method(name, fn, exact)
        return fn

    return decorator


def get_method(name: str) -> Method:
    """The registered method ``name``; ``KeyError`` listing the known ones otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        raise KeyError(f"unknown unlearning method {name!r}; known: {', '.join(sorted(METHODS))}") from None


def _register_all() -> None:
    """Import every method module of this package: each registers itself (one file per method)."""
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        if info.name not in ("base", "engine"):
            importlib.import_module(f"{__name__}.{info.name}")


_register_all()
