"""A SISA ensemble's structure (Bourtoule et al., "Machine Unlearning", IEEE S&P 2021): the constituents'
aggregation and routing, and how to build, clear and check one from a checkpoint's ``meta``.

No training and no file format here: the SISA trainer (``app.ml.sisa``) and the checkpoint format
(``app.ml.checkpoint``) both stand on this module, so neither imports the other for it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from app.ml.spec import ModelSpec


class SISAEnsemble(nn.Module):
    """Constituents aggregated by mean softmax; ``forward`` returns log of the mean probability.

    With ``routes`` (row -> shard, a user-sharded ensemble) and ``route_key`` (the batch input
    carrying the row), an example whose row a shard owns gets that shard's log-probabilities
    instead; rows no shard owns (0: unknown or erased) keep the mean.
    """

    def __init__(self, members: list[nn.Module], routes: dict[str, int] | None = None,
                 route_key: str | None = None) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.route_key = route_key if routes is not None else None
        owner = torch.full((max((int(r) for r in routes or {}), default=0) + 1,), -1, dtype=torch.long)
        for row, shard in (routes or {}).items():
            owner[int(row)] = int(shard)
        # Derived from meta, not weights: not part of the state dict.
        self.register_buffer("owner", owner, persistent=False)

    def forward(self, **batch: torch.Tensor) -> torch.Tensor:
        logp = torch.stack([torch.log_softmax(m(**batch).float(), dim=-1) for m in self.members])
        mean = torch.logsumexp(logp, dim=0) - math.log(len(self.members))
        if self.route_key is None:
            return mean
        rows = batch[self.route_key]
        owner = torch.full_like(rows, -1)
        inside = rows < self.owner.numel()
        owner[inside] = self.owner[rows[inside]]
        own = logp[owner.clamp(min=0), torch.arange(rows.numel(), device=rows.device)]
        return torch.where((owner >= 0).unsqueeze(-1), own, mean)


def is_sisa(meta: dict[str, Any] | None) -> bool:
    return bool(meta) and isinstance(meta.get("sisa"), dict)


def base_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """The constituents' meta: the ensemble's without its ``sisa`` section."""
    return {k: v for k, v in meta.items() if k != "sisa"}


def build_network(spec: ModelSpec, meta: dict[str, Any]) -> nn.Module:
    """``spec.build(meta)``, or an ensemble of freshly built constituents for a SISA ``meta``."""
    if not is_sisa(meta):
        return spec.build(meta)
    inner = base_meta(meta)
    return SISAEnsemble([spec.build(inner) for _ in range(int(meta["sisa"]["shards"]))],
                        routes=meta["sisa"].get("routes"), route_key=spec.subject_input)


def forget_subjects(spec: ModelSpec, model: nn.Module, meta: dict[str, Any], subject_ids: list[str]) -> dict[str, Any]:
    """``spec.forget_subjects`` on one network, or on every constituent of an ensemble."""
    if not isinstance(model, SISAEnsemble):
        return spec.forget_subjects(model, meta, subject_ids)
    inner, new = base_meta(meta), base_meta(meta)
    for member in model.members:
        new = spec.forget_subjects(member, inner, subject_ids)
    return {**new, "sisa": meta["sisa"]} if is_sisa(meta) else new


def subject_params_cleared(spec: ModelSpec, model: nn.Module, meta: dict[str, Any], subject_ids: list[str]) -> bool:
    """``spec.subject_params_cleared`` of one network, or of every constituent of an ensemble
    against the ensemble's map: no constituent may hold a row for an id the ensemble no longer maps."""
    if not isinstance(model, SISAEnsemble):
        return spec.subject_params_cleared(model, meta, subject_ids)
    return all(spec.subject_params_cleared(m, base_meta(meta), subject_ids) for m in model.members)
