"""``ssd``: Selective Synaptic Dampening, retrain-free (no training loop).

Foster, Schoepf & Brintrup, "Fast Machine Unlearning Without Retraining Through Selective
Synaptic Dampening" (AAAI 2024). Diagonal Fisher importances are measured on the forget set
(``I_forget``) and on the full training data (``I_full``); every parameter entry with
``I_forget > alpha * I_full`` is multiplied by ``beta = min(lambda * I_full / I_forget, 1)``.

Importance estimator: the squared gradient of the *summed* loss of a batch, summed over
batches and divided by the number of samples. For sparse parameters (a movie's embedding row,
touched by at most one sample per batch) this is exactly the per-sample Fisher; for dense ones
it is too when the per-sample gradients are uncorrelated. The paper's squared gradient of the
*mean* batch loss would instead scale with 1 / batch size and make a 5-sample forget set look
5-10x more important than it is next to full-data batches of 64.

``I_full`` should be cached at training time (DESIGN.md section 3): ``fisher_importance`` over
the train split, passed as ``config["full_importance"]`` ({parameter name: tensor}). Without it
the method estimates it from the retain set (all of it by default: a subsample leaves rare
parameters, e.g. embedding rows of rarely rated movies, with ``I_full = 0`` and so zeroes
them) plus the forget set, which costs about one training epoch of backward passes.

Measured: passes MovieLens and digits in 0.3-2 s; fails toy, whose retain set is memorised by
the same weights as the forget set (a memorised subject stays at rank z 2.2-2.6, or retain
accuracy falls below 0.9 at stronger settings). Not for models that memorise their retain set.

Plain SSD is a deterministic function of the served model: every seed gives the same weights, so
the competition metric (``workers/verify/epsilon.py``) scores it 0 on every example (its peaky
guard: the unlearned outputs have no spread where retrains have plenty). After dampening, this
module therefore adds seeded Gaussian noise (``base.perturb``) and repairs utility with a few
seeded retain steps (seeded data order), as the competition's top entries paired pruning with
noise and retain training (Triantafillou et al. 2024).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from app.ml.data import make_loader
from app.ml.spec import Example, ModelSpec
from workers.unlearning import register
from workers.unlearning.base import (
    Deadline, UnlearnContext, UnlearnResult, batches, finish, perturb, resolve_config, retain_descent, working_copy,
)


@dataclass(frozen=True)
class SSDConfig:
    # Selection threshold: dampen where the forget set is this many times more important than
    # the full data. Paper default 10 (ResNet/ViT on CIFAR); kept: on toy 3 (and below) costs
    # 10-25 points of retain accuracy, 30 leaves MovieLens users at the original's forget accuracy.
    alpha: float = 10.0
    # Dampening strength: beta = min(lambda * I_full / I_forget, 1). Paper default 1.
    lam: float = 1.0
    # Batch for importance passes: smaller batches keep cross-sample gradient terms (the bias of
    # the summed-loss estimator) small. On toy 256 (the whole retain set in one batch) dampened
    # retain accuracy to 0.78; MovieLens at 256 is 2x faster (1.9 s vs 4.4 s) at the same AUC.
    batch_size: int = 64
    # Cap on retain samples for the full-data estimate (None: all; see the module docstring).
    # MovieLens at 20,000: 1.7 s, AUC like all, but the forget accuracy fell to 0.57 (retrain 0.81).
    full_samples: int | None = None
    # Precomputed {parameter name: I_full} (``fisher_importance`` on the train split), or None.
    full_importance: dict[str, Any] | None = None
    # Seeded noise after dampening, x each tensor's std (``base.perturb``), then retain steps at
    # ``repair_lr_scale`` x the recipe rate with a seeded order: without them the method is
    # bit-identical across seeds and the competition metric scores it 0 (issue 10: F 0 on every
    # movielens set). Measured on movielens' heaviest user (N=16 seeds): plain SSD F 0 (every
    # example peaky); 0.05 / 30 steps F 0.059 = 0.36 x the retrain floor, test -0.14 points, 3 s;
    # 0.2 / 60 steps F 0.066 (0.40 x) at 11.5 s, dearer than a retrain. Kept the cheap one.
    noise_scale: float = 0.05
    repair_steps: int = 30
    repair_lr_scale: float = 1.0


def fisher_importance(
    spec: ModelSpec, model: nn.Module, meta: dict[str, Any], examples: list[Example], *,
    device: torch.device | str, batch_size: int = 64, deadline: Deadline | None = None,
) -> tuple[dict[str, torch.Tensor], int]:
    """``({name: summed squared batch-sum gradients}, samples seen)``; divide by samples for I.

    Eval mode (no dropout-like noise, e.g. MovieLens user dropout); ``model`` is not changed.
    Stops early when ``deadline`` expires, returning what it has.
    """
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    seen = 0
    was_training = model.training
    model.eval()
    loader = make_loader(spec, meta, examples, batch_size=batch_size, shuffle=False)
    for batch, labels in loader:
        if deadline is not None and deadline.expired():
            break
        batch = {k: v.to(device) for k, v in batch.items()}
        loss = spec.loss(model(**batch), labels.to(device), reduction="sum")
        grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        for (n, _), g in zip(params.items(), grads):
            if g is not None:
                total[n] += g.detach() ** 2
        seen += len(labels)
    model.train(was_training)
    return total, seen


def dampen(model: nn.Module, forget_imp: dict[str, torch.Tensor], full_imp: dict[str, torch.Tensor], alpha: float, lam: float) -> float:
    """Apply SSD in place; returns the share of parameter entries that were dampened."""
    touched = count = 0
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name not in forget_imp or name not in full_imp:
                continue
            i_f, i_d = forget_imp[name], full_imp[name].to(p.device)
            mask = i_f > alpha * i_d
            beta = (lam * i_d / i_f.clamp_min(1e-30)).clamp(max=1.0)
            p[mask] *= beta[mask]
            touched += int(mask.sum())
            count += p.numel()
    return touched / max(count, 1)


@register("ssd", exact=False)
def unlearn(ctx: UnlearnContext) -> UnlearnResult:
    cfg = resolve_config(SSDConfig, ctx.config)
    model, meta = working_copy(ctx)
    if not ctx.forget:
        return finish(ctx, model, meta)
    deadline = Deadline(ctx.time_budget_s)
    f_sum, n_f = fisher_importance(ctx.spec, model, meta, ctx.forget, device=ctx.device, batch_size=cfg.batch_size)
    forget_imp = {n: s / max(n_f, 1) for n, s in f_sum.items()}
    ctx.progress(0.1)
    if cfg.full_importance is not None:
        full_imp = {n: torch.as_tensor(v, dtype=torch.float32) for n, v in cfg.full_importance.items()}
    else:
        retain = ctx.retain
        if cfg.full_samples is not None and len(retain) > cfg.full_samples:
            rng = np.random.default_rng(ctx.seed)
            retain = [retain[i] for i in sorted(rng.choice(len(retain), cfg.full_samples, replace=False))]
        r_sum, n_r = fisher_importance(
            ctx.spec, model, meta, retain, device=ctx.device, batch_size=cfg.batch_size, deadline=deadline
        )
        if n_r == 0:  # out of time before any retain batch: dampening blind would be a guess
            return finish(ctx, model, meta)
        # The retain estimate stands for all retain samples, the forget set is added exactly.
        n_all = len(ctx.retain) + n_f
        full_imp = {n: (r_sum[n] * (len(ctx.retain) / n_r) + f_sum[n]) / n_all for n in r_sum}
    ctx.progress(0.8)
    dampen(model, forget_imp, full_imp, cfg.alpha, cfg.lam)
    perturb(model, ctx.seed, cfg.noise_scale)
    if cfg.repair_steps and ctx.retain:
        opt = torch.optim.AdamW(model.parameters(), lr=ctx.recipe.lr * cfg.repair_lr_scale,
                                weight_decay=ctx.recipe.weight_decay)
        retain = batches(ctx, meta, ctx.retain, ctx.recipe.batch_size, seed_offset=2)
        retain_descent(ctx, model, opt, retain, cfg.repair_steps, deadline)
    return finish(ctx, model, meta)
