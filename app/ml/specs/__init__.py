"""Model specs are plugins: ``ModelSpec`` subclasses published under the entry-point group
``lethe.models`` (DESIGN.md 4c). Lethe's own demo specs are published the same way, in its
``pyproject.toml``, so nothing is special-cased: a spec is found by its entry-point name.

A plugin that fails to import, or whose object is not a ``ModelSpec`` subclass, raises
:class:`SpecUnavailable` (a clear 503 at the API, a failed registration in a worker), never
an arbitrary exception from inside the plugin.
"""

from __future__ import annotations

import functools
import logging
from importlib.metadata import EntryPoint, entry_points

from app.core.errors import Unavailable, Unprocessable
from app.ml.spec import ModelSpec

GROUP = "lethe.models"
log = logging.getLogger("lethe.specs")


class UnknownSpec(Unprocessable, KeyError):
    def __init__(self, name: str) -> None:
        known = ", ".join(spec_names()) or "none"
        Unprocessable.__init__(self, f"Unknown model spec {name!r}; installed specs: {known}.", code="unknown_spec")

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.detail


class SpecUnavailable(Unavailable):
    def __init__(self, name: str, why: str) -> None:
        super().__init__(f"Model spec {name!r} could not be loaded: {why}", code="spec_unavailable")


def _entry_points() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def spec_names() -> tuple[str, ...]:
    """Installed spec names, sorted."""
    return tuple(sorted(_entry_points()))


@functools.lru_cache(maxsize=None)
def spec_class(name: str) -> type[ModelSpec]:
    ep = _entry_points().get(name)
    if ep is None:
        raise UnknownSpec(name)
    try:
        cls = ep.load()
    except Exception as exc:  # noqa: BLE001 - a broken plugin must not take Lethe down
        log.error("model spec %s (%s) failed to import: %s", name, ep.value, type(exc).__name__)
        raise SpecUnavailable(name, f"importing {ep.value} raised {type(exc).__name__}: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, ModelSpec)):
        raise SpecUnavailable(name, f"{ep.value} is not a subclass of app.ml.spec.ModelSpec")
    return cls


def get_spec(name: str) -> ModelSpec:
    """A new instance of the spec published as ``name``; ``UnknownSpec`` (a ``KeyError``) for
    an unknown name, ``SpecUnavailable`` for a plugin that cannot be loaded."""
    cls = spec_class(name)
    try:
        return cls()
    except Exception as exc:  # noqa: BLE001
        raise SpecUnavailable(name, f"{cls.__name__}() raised {type(exc).__name__}: {exc}") from exc
