"""What every unlearning method receives and returns, and the loops they share (DESIGN.md 3).

Methods never mutate the served model: they work on a deep copy (``working_copy``), remove
per-subject parameters with ``spec.forget_subjects`` and return ``UnlearnResult(model, meta)``.
Each method has a frozen config dataclass whose defaults are tuned on the demo models;
``ctx.config`` overrides fields by name (``resolve_config``), unknown names are an error.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch import nn

from app.ml.data import make_loader
from app.ml.spec import Example, ModelSpec, TrainRecipe

C = TypeVar("C")


@dataclass
class UnlearnContext:
    spec: ModelSpec
    model: nn.Module  # the served model: read-only, methods copy it
    meta: dict[str, Any]
    forget: list[Example]
    retain: list[Example]
    forget_subject_ids: list[str]
    recipe: TrainRecipe
    device: torch.device | str
    seed: int = 0
    time_budget_s: float | None = None
    progress: Callable[[float], None] = lambda fraction: None
    config: dict[str, Any] = field(default_factory=dict)
    # Never-trained samples (the ``test`` split) some methods calibrate against; never holdout,
    # which the verification gate uses as its MIA population.
    calibration: list[Example] = field(default_factory=list)


@dataclass(frozen=True)
class UnlearnResult:
    model: nn.Module
    meta: dict[str, Any]


def resolve_config(cls: type[C], overrides: dict[str, Any]) -> C:
    """``cls()`` with ``overrides`` applied; ``ValueError`` on a field the config does not have."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}")
    return dataclasses.replace(cls(), **overrides)


def working_copy(ctx: UnlearnContext) -> tuple[nn.Module, dict[str, Any]]:
    """A deep copy of the served model on ``ctx.device`` with the subjects' own parameters removed."""
    model = copy.deepcopy(ctx.model).to(ctx.device)
    meta = ctx.spec.forget_subjects(model, copy.deepcopy(ctx.meta), ctx.forget_subject_ids)
    return model, meta


def batches(ctx: UnlearnContext, meta: dict[str, Any], examples: list[Example], batch_size: int, seed_offset: int = 0) -> Iterator:
    """Endless shuffled ``(batch_kwargs, labels)`` on ``ctx.device``, reshuffled every pass."""
    loader = make_loader(ctx.spec, meta, examples, batch_size=batch_size, shuffle=True, seed=ctx.seed + seed_offset)
    while True:
        for batch, labels in loader:
            yield {k: v.to(ctx.device) for k, v in batch.items()}, labels.to(ctx.device)


class Deadline:
    """``expired()`` once ``budget_s`` seconds have passed (never, for ``None``)."""

    def __init__(self, budget_s: float | None) -> None:
        self.end = None if budget_s is None else time.monotonic() + budget_s

    def expired(self) -> bool:
        return self.end is not None and time.monotonic() >= self.end


def finish(ctx: UnlearnContext, model: nn.Module, meta: dict[str, Any]) -> UnlearnResult:
    """Every method's exit: eval mode, and the subjects' per-subject parameters gone."""
    model.eval()
    meta = ctx.spec.forget_subjects(model, meta, ctx.forget_subject_ids)
    ctx.progress(1.0)
    return UnlearnResult(model, meta)
