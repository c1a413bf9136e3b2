"""``neggrad_plus``: gradient ascent on the forget set plus descent on the retain set.

NegGrad+ of Kurmanji et al., "Towards Unbounded Machine Unlearning" (NeurIPS 2023): minimise
``alpha * L_retain - (1 - alpha) * L_forget``. Plain ascent on cross-entropy is unbounded and
over-forgets (an AUC far below 0.5 is detectable too, DESIGN.md section 3), so each forget
sample's loss is clamped at the mean loss of never-trained samples (``ctx.calibration``, the
test split): a sample that already looks unseen gets no further push.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from app.ml.train import per_example_loss
from workers.unlearning import register
from workers.unlearning.base import Deadline, UnlearnContext, UnlearnResult, batches, finish, resolve_config, working_copy


@dataclass(frozen=True)
class NegGradPlusConfig:
    steps: int = 100
    # Weight of the retain loss; the rest goes to ascent on the forget set. Kurmanji et al. use
    # ~0.99 with a forget set ~1 % of the data; the clamp makes a lower value safe here.
    alpha: float = 0.9
    lr_scale: float = 1.0
    batch_size: int | None = None
    forget_batch_size: int = 64
    # Clamp level as a multiple of the calibration loss (log(num_classes) if no calibration set).
    clamp_scale: float = 1.0


def clamp_level(ctx: UnlearnContext, cfg: NegGradPlusConfig) -> float:
    if ctx.calibration:
        loss = per_example_loss(ctx.spec, ctx.model, ctx.meta, ctx.calibration[:2000], device=ctx.device)
        return float(loss.mean()) * cfg.clamp_scale
    return math.log(ctx.spec.num_classes) * cfg.clamp_scale


@register("neggrad_plus", exact=False)
def unlearn(ctx: UnlearnContext) -> UnlearnResult:
    cfg = resolve_config(NegGradPlusConfig, ctx.config)
    model, meta = working_copy(ctx)
    if not ctx.retain:
        return finish(ctx, model, meta)
    tau = clamp_level(ctx, cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=ctx.recipe.lr * cfg.lr_scale, weight_decay=ctx.recipe.weight_decay)
    retain = batches(ctx, meta, ctx.retain, cfg.batch_size or ctx.recipe.batch_size)
    forget = batches(ctx, meta, ctx.forget, cfg.forget_batch_size, seed_offset=1) if ctx.forget else None
    deadline = Deadline(ctx.time_budget_s)
    model.train()
    for step in range(cfg.steps):
        if deadline.expired():
            break
        batch, labels = next(retain)
        loss = cfg.alpha * ctx.spec.loss(model(**batch), labels)
        if forget is not None:
            fbatch, flabels = next(forget)
            f_loss = ctx.spec.loss(model(**fbatch), flabels, reduction="none").clamp(max=tau)
            loss = loss - (1 - cfg.alpha) * f_loss.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ctx.progress((step + 1) / cfg.steps)
    return finish(ctx, model, meta)
