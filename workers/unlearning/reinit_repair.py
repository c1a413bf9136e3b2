"""``reinit_repair``: re-initialise part of the network, then repair it on the retain set.

The pattern most top entries of the NeurIPS 2023 Machine Unlearning competition shared
(Triantafillou et al., "Are we making progress in unlearning? Findings from the first NeurIPS
unlearning competition", 2024): destroy what the forget set could have left behind by
re-initialising the output head plus a random share of the other weights, then restore utility
by distilling to the original model's outputs on the retain set (KL at temperature T, as in
Hinton et al. 2015) plus cross-entropy, in a few short cycles whose learning rate restarts and
decays by cosine within each cycle (SGDR, Loshchilov & Hutter, ICLR 2017).

Entries that are exactly zero are never re-initialised: they are the "unknown" row of an
embedding and the rows of subjects erased earlier (``spec.subject_params_cleared`` requires
them to stay zero); everything else has measure-zero chance of being exactly zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from workers.unlearning import register
from workers.unlearning.base import (
    Deadline, UnlearnContext, UnlearnResult, distill_kl, finish, indexed_batches, resolve_config,
    teacher_logits, working_copy,
)


@dataclass(frozen=True)
class ReinitRepairConfig:
    # Share of the non-head parameter entries re-initialised at random: enough to break the
    # memorised forget set (toy at 0.1: rank z 2.3, fail; 0.3: 1.8), little enough that
    # distillation repairs utility in a few cycles. MovieLens wants 0.1: at 0.3 the embeddings
    # repair too slowly (retain accuracy 0.765 vs 0.783 served, at the gate's edge).
    # Competition metric (bench/unlearning.py --epsilon 16, movielens, 16 seeds; F as a share of
    # the retrain floor, 10 random users / heaviest user): these defaults 0.66 / 0.45 (test -0.3 /
    # -0.2 points vs retrain), the best approximate method there. Tried, none near 0.8 x floor:
    # share 0.5 0.67 / 0.46; share 1.0 0.41 (heavy); kl_weight 0.3 0.69 (test -0.6); 5 cycles
    # 0.68 (retain +2.4 points above retrain: remembers it too well); share 0.5 + kl 0.3 + 5 cycles
    # 0.71 (test -0.6); share 1.0 / 0.5 with kl 0 (a short retrain) 0.57 / 0.66 (test -0.8).
    reinit_share: float = 0.3
    # Re-initialise the whole output layer (the last nn.Linear): it holds the sharpest
    # per-sample decision boundaries.
    reinit_head: bool = True
    cycles: int = 3
    steps_per_cycle: int = 40
    # Peak rate of each cycle, as a multiple of the recipe's learning rate: at 1x toy and digits
    # end 3-5 points below the served retain accuracy (fail); 3x repairs them.
    lr_scale: float = 3.0
    temperature: float = 2.0
    # Weight of retain cross-entropy next to the KL to the original outputs.
    ce_weight: float = 1.0
    # Weight of the KL to the original outputs. Distillation pulls every seed back onto the served
    # model's function, so the candidates have less seed-to-seed spread than retrains do (the
    # competition metric's signal); 0 repairs with cross-entropy only, like a short retrain.
    kl_weight: float = 1.0
    batch_size: int | None = None


def head_prefix(model: nn.Module) -> str | None:
    """Qualified name of the last ``nn.Linear`` (the output layer of every spec here)."""
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = name
    return last


def reinitialise(ctx: UnlearnContext, model: nn.Module, meta: dict, cfg: ReinitRepairConfig) -> None:
    torch.manual_seed(ctx.seed + 7919)  # a fresh init, not the original one
    fresh = dict(ctx.spec.build(meta).to(ctx.device).named_parameters())
    head = head_prefix(model)
    gen = torch.Generator().manual_seed(ctx.seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not p.requires_grad:  # declared public parameters (app/ml/public.py) are never re-drawn
                continue
            if cfg.reinit_head and head is not None and name.startswith(head + "."):
                chosen = torch.ones_like(p, dtype=torch.bool)
            else:
                chosen = (torch.rand(p.shape, generator=gen) < cfg.reinit_share).to(p.device)
            chosen &= p != 0
            p[chosen] = fresh[name][chosen]


@register("reinit_repair", exact=False)
def unlearn(ctx: UnlearnContext) -> UnlearnResult:
    cfg = resolve_config(ReinitRepairConfig, ctx.config)
    model, meta = working_copy(ctx)
    if not ctx.retain:
        return finish(ctx, model, meta)
    targets = teacher_logits(ctx, ctx.retain) if cfg.kl_weight else None
    reinitialise(ctx, model, meta, cfg)
    retain = indexed_batches(ctx, meta, ctx.retain, cfg.batch_size or ctx.recipe.batch_size)
    peak = ctx.recipe.lr * cfg.lr_scale
    opt = torch.optim.AdamW(model.parameters(), lr=peak, weight_decay=ctx.recipe.weight_decay)
    deadline = Deadline(ctx.time_budget_s)
    total = cfg.cycles * cfg.steps_per_cycle
    model.train()
    for step in range(total):
        if deadline.expired():
            break
        t = (step % cfg.steps_per_cycle) / cfg.steps_per_cycle
        for group in opt.param_groups:
            group["lr"] = peak * 0.5 * (1 + math.cos(math.pi * t))
        batch, labels, idx = next(retain)
        logits = model(**batch)
        loss = cfg.ce_weight * ctx.spec.loss(logits, labels)
        if cfg.kl_weight:
            loss = loss + cfg.kl_weight * distill_kl(logits, targets[idx], cfg.temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ctx.progress((step + 1) / total)
    return finish(ctx, model, meta)
