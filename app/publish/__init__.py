"""Publish targets: where clean model versions go besides Lethe's own replicas (issue 19).

One module per kind behind one small interface (``RegistryTarget``), registered by name like the
data stores of ``app/data/registry.py``; ``app/services/integrations/publishing.py`` decides *what* a target must
hold (every clean version Lethe serves, nothing that carries an erased person) and calls only this
interface, so a second kind of registry is one more module, not a branch in the pipeline.

A target's config lives in ``Model.config["publish"]`` (a list); credentials never do: they come
from settings / the environment when a target is opened, and are never logged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


class RegistryError(Exception):
    """A registry operation failed; ``retry`` says whether the outbox should try again later
    (an outage, a refused credential an operator can fix) or the request itself is wrong."""

    def __init__(self, message: str, *, retry: bool = True, code: str = "registry_error") -> None:
        super().__init__(message)
        self.retry, self.code = retry, code


@dataclass(frozen=True)
class RegistryVersion:
    """One version in a model registry, as Lethe sees it."""

    number: str
    tags: dict[str, str] = field(default_factory=dict)
    source: str | None = None
    run_id: str | None = None

    @property
    def lethe_version(self) -> int | None:
        value = self.tags.get("lethe.version")
        return int(value) if value and value.isdigit() else None


class RegistryTarget(Protocol):
    """What ``publishing.sync`` needs from a registry; every method is idempotent or safe to repeat."""

    key: str  # stable name of the target (for the outbox and results), free of credentials

    def versions(self) -> list[RegistryVersion]: ...

    def publish(self, *, files: dict[str, Path | bytes], tags: dict[str, str], folder: str) -> RegistryVersion: ...

    def alias_version(self) -> str | None: ...

    def move_alias(self, number: str | None) -> None: ...

    def purge(self, version: RegistryVersion, *, archive_tags: dict[str, str] | None) -> list[str]: ...

    def sweep(self) -> list[str]: ...  # files of Lethe's uploads that no version points at, deleted

    def close(self) -> None: ...


Opener = Callable[[dict[str, Any], Any], RegistryTarget]
Validator = Callable[[dict[str, Any]], list[str]]
KINDS: dict[str, tuple[Opener, Validator]] = {}


def register(kind: str, *, validate: Validator) -> Callable[[Opener], Opener]:
    def deco(opener: Opener) -> Opener:
        KINDS[kind] = (opener, validate)
        return opener
    return deco


def _load_kinds() -> None:
    from app.publish import mlflow  # noqa: F401 - registers "mlflow"


def validate(targets: Any) -> list[str]:
    """Problems with a model's ``publish`` list (empty: valid)."""
    _load_kinds()
    if not isinstance(targets, list):
        return ["publish must be a list of targets"]
    problems, keys = [], set()
    for i, t in enumerate(targets):
        if not isinstance(t, dict) or t.get("kind") not in KINDS:
            problems.append(f"publish[{i}].kind must be one of {sorted(KINDS)}")
            continue
        problems += [f"publish[{i}]: {p}" for p in KINDS[t["kind"]][1](t)]
        key = target_key(t)
        if key in keys:
            problems.append(f"publish[{i}] repeats target {key}")
        keys.add(key)
    return problems


def target_key(config: dict[str, Any]) -> str:
    return f"{config.get('kind')}:{config.get('registered_model')}@{config.get('tracking_uri')}"


def open_target(config: dict[str, Any], settings: Any) -> RegistryTarget:
    _load_kinds()
    return KINDS[config["kind"]][0](config, settings)
