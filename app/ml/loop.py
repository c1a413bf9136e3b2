"""The plain training loop every trainer shares (one network, SISA shards and slices).

AdamW (Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019) or SGD with momentum,
constant or cosine schedule, minimising ``spec.loss``. Parameters with ``requires_grad=False`` (a
spec's frozen public parameters, ``app.ml.public``) never reach the optimiser. Below ``train`` and
``sisa``, which both call it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from app.ml.spec import ModelSpec

Progress = Callable[[float], None]


def train_epochs(
    spec: ModelSpec,
    model: nn.Module,
    meta: dict[str, Any],
    loader: DataLoader,
    *,
    epochs: int,
    lr: float,
    weight_decay: float,
    device: torch.device | str,
    progress: Progress | None = None,
    optimizer: str = "adamw",
    schedule: str = "constant",
) -> nn.Module:
    """``epochs`` passes over ``loader`` with the recipe's optimiser (default AdamW) and schedule,
    minimising ``spec.loss``, in place; returns ``model`` in train mode."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]  # frozen public parameters stay out
    if optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    elif optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    else:
        raise ValueError(f"unknown optimizer {optimizer!r} in the recipe (adamw, sgd)")
    total = max(1, epochs * len(loader))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total) if schedule == "cosine" else None
    for epoch in range(epochs):
        for batch, labels in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            loss = spec.loss(model(**batch), labels.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
        if progress is not None:
            progress((epoch + 1) / epochs)
    return model
